import { existsSync, statSync } from 'node:fs';
import { decodeAudio } from '../media/decode-audio.js';
import { MediaError } from '../media/ffmpeg-process.js';
import { Rechunker } from '../media/rechunk.js';
import { CAPTION_SAMPLE_RATE } from './caption-model.js';

/** Why a file could not be captioned; `reason` is stable for scripts, `message` is for people. */
export type AudioFileProblem = 'not-found' | 'corrupt' | 'no-audio' | 'too-long' | 'unreadable';

/** A file that cannot be captioned. Caption jobs record it as an error line and go on. */
export class AudioFileError extends Error {
  constructor(
    readonly path: string,
    readonly reason: AudioFileProblem,
    detail: string,
  ) {
    super(detail.includes(path) ? detail : `${path}: ${detail}`);
    this.name = 'AudioFileError';
  }
}

/** A stretch of one file, 16 kHz mono, with its place in the file in seconds. */
export interface AudioSegment {
  readonly index: number;
  readonly start: number;
  readonly end: number;
  readonly pcm: Float32Array;
}

export interface AudioFileSegmentsOptions {
  /** Length of each segment; the last one is shorter, or longer when a short tail is folded into it. */
  readonly segmentSeconds: number;
  /** Files longer than this are refused (`too-long`) as soon as decoding passes the limit. */
  readonly maxSeconds: number;
  /** ffmpeg binary; default: `resolveFfmpeg()` (FFMPEG_PATH, PATH, then the bundled one). */
  readonly ffmpegPath?: string;
}

/**
 * Decodes any file ffmpeg reads (wav, mp3, mp4, …) to 16 kHz mono and yields it in fixed-length segments
 * while it decodes, so a long file never sits in memory whole: ffmpeg's output is read only as fast as
 * the consumer pulls segments. A tail shorter than a second is folded into the segment before it, since
 * a caption of a sliver of audio says little.
 *
 * ```ts
 * for await (const seg of audioFileSegments('talk.mp3', { segmentSeconds: 30, maxSeconds: 3600 })) {
 *   console.log(seg.start, seg.end, seg.pcm.length);
 * }
 * ```
 */
export async function* audioFileSegments(path: string, options: AudioFileSegmentsOptions): AsyncGenerator<AudioSegment> {
  const { segmentSeconds, maxSeconds } = options;
  if (!(segmentSeconds > 0)) throw new Error(`audioFileSegments: segmentSeconds must be > 0, got ${segmentSeconds}`);
  if (!(maxSeconds > 0)) throw new Error(`audioFileSegments: maxSeconds must be > 0, got ${maxSeconds}`);
  if (!existsSync(path)) throw new AudioFileError(path, 'not-found', 'no such file');
  if (!statSync(path).isFile()) throw new AudioFileError(path, 'not-found', 'not a regular file');

  // Pull-based: ffmpeg is paused while the consumer is busy, so only a few chunks are ever buffered.
  const decode = decodeAudio(path, { sampleRate: CAPTION_SAMPLE_RATE, channels: 1, chunkMs: 1000, ffmpegPath: options.ffmpegPath });
  const segmentSamples = Math.round(segmentSeconds * CAPTION_SAMPLE_RATE);
  const maxSamples = Math.round(maxSeconds * CAPTION_SAMPLE_RATE);
  const minTailSamples = Math.min(CAPTION_SAMPLE_RATE, Math.floor(segmentSamples / 2));
  const segments = new Rechunker({ frames: segmentSamples }); // tail 'keep': flush() gives the short rest
  let total = 0;
  let cut = 0; // samples already in full segments
  let index = 0;
  let held: AudioSegment | undefined; // the last full segment, kept back until we know the tail is long enough
  const make = (pcm: Float32Array, startSample: number): AudioSegment => ({
    index: index++,
    start: startSample / CAPTION_SAMPLE_RATE,
    end: (startSample + pcm.length) / CAPTION_SAMPLE_RATE,
    pcm,
  });

  try {
    for await (const packet of decode) {
      if (total + packet.samples.length > maxSamples) {
        throw new AudioFileError(path, 'too-long', `longer than the ${maxSeconds} s limit (maxDurationSeconds)`);
      }
      total += packet.samples.length;
      for (const full of segments.push(packet)) {
        const seg = make(full.samples, cut);
        cut += full.samples.length;
        if (held) yield held;
        held = seg;
      }
    }
  } catch (err) {
    throw err instanceof MediaError ? fromMediaError(path, err) : err;
  } finally {
    decode.close();
  }
  if (total === 0) throw new AudioFileError(path, 'no-audio', 'the audio stream decodes to no samples');
  const tail = segments.flush()[0]?.samples ?? new Float32Array(0);
  const filled = tail.length;
  if (held && filled > 0 && filled < minTailSamples) {
    const merged = new Float32Array(held.pcm.length + filled);
    merged.set(held.pcm);
    merged.set(tail, held.pcm.length);
    index = held.index;
    yield make(merged, total - merged.length);
  } else {
    if (held) yield held;
    if (filled > 0) yield make(tail, total - filled);
  }
}

function fromMediaError(path: string, err: MediaError): AudioFileError {
  // For an existing local file, ffmpeg failing on its contents (whatever its words) means the file cannot be decoded.
  const reason: AudioFileProblem =
    err.code === 'not-found' ? 'not-found' : err.code === 'no-stream' ? 'no-audio' : err.code === 'io' || err.code === 'ffmpeg-missing' ? 'unreadable' : 'corrupt';
  const e = new AudioFileError(path, reason, err.message);
  e.cause = err;
  return e;
}
