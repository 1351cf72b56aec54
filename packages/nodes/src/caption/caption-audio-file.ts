import { audioFileSegments } from './audio-file-segments.js';
import type { CaptionBatcher } from './caption-batcher.js';

/** One captioned stretch of a file; times in seconds from the start of the file. */
export interface CaptionSegment {
  readonly start: number;
  readonly end: number;
  readonly text: string;
}

/** What captioning one file produces. */
export interface FileCaption {
  /** Seconds of decoded audio (16 kHz samples / 16000). */
  readonly duration: number;
  readonly segments: CaptionSegment[];
  /** One caption for the whole file: the single segment's text, or a text-only pass over the timed segment captions. */
  readonly summary: string;
}

export interface CaptionAudioFileOptions {
  readonly prompt: string;
  readonly summaryPrompt: string;
  readonly segmentSeconds: number;
  readonly maxDurationSeconds: number;
  /** Segments of this file allowed in the batcher at once: bounds memory on long files, leaves room for others. */
  readonly segmentsInFlight?: number;
  readonly ffmpegPath?: string;
}

/**
 * Captions one audio or video file: decodes it to 16 kHz mono in segments, captions each segment through
 * the shared `batcher` (so segments of many files share model batches), then writes a whole-file summary.
 * Throws `AudioFileError` for files that cannot be decoded.
 *
 * ```ts
 * const batcher = new CaptionBatcher(model, { maxBatch: 8, maxWaitMs: 20, generation });
 * const { duration, segments, summary } = await captionAudioFile('talk.mp3', batcher, { prompt, summaryPrompt, segmentSeconds: 30, maxDurationSeconds: 3600 });
 * ```
 */
export async function captionAudioFile(path: string, batcher: CaptionBatcher, options: CaptionAudioFileOptions): Promise<FileCaption> {
  const inFlight = options.segmentsInFlight ?? 4;
  const parts: Promise<CaptionSegment>[] = [];
  let duration = 0;
  // A segment whose caption failed must not leave an unhandled rejection while decoding goes on.
  const settle = (p: Promise<CaptionSegment>) => p.catch(() => undefined);
  // Tells the batcher when this file is decoding (more requests may come) and when it only waits for captions.
  const producer = batcher.openProducer();
  try {
    for await (const seg of audioFileSegments(path, { segmentSeconds: options.segmentSeconds, maxSeconds: options.maxDurationSeconds, ffmpegPath: options.ffmpegPath })) {
      duration = seg.end;
      const part = batcher.caption({ prompt: options.prompt, audio: seg.pcm }).then((text) => ({ start: seg.start, end: seg.end, text }));
      void settle(part);
      parts.push(part);
      // Decoding is ~1000x faster than captioning: wait here so ffmpeg's pipe, not our memory, holds the rest.
      if (parts.length >= inFlight) await producer.waitFor(parts[parts.length - inFlight]);
    }
    const segments = await producer.waitFor(Promise.all(parts));
    const summary = segments.length === 1 ? segments[0].text : await producer.waitFor(batcher.caption({ prompt: summaryPromptFor(options.summaryPrompt, segments) }));
    return { duration, segments, summary };
  } finally {
    producer.close();
  }
}

/** The text the summary pass reads: the instruction, then one `[start-end] caption` line per segment. */
export function summaryPromptFor(instruction: string, segments: readonly CaptionSegment[]): string {
  const lines = segments.map((s) => `[${clock(s.start)}-${clock(s.end)}] ${s.text.trim()}`);
  return `${instruction}\n${lines.join('\n')}`;
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}
