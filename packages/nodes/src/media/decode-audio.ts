import { audioPacket, samplesToMicros, type AudioPacket } from '@omniflow/core';
import { fixedChunks } from './byte-chunks.js';
import type { MediaInput } from './ffmpeg-process.js';
import { mediaDecode, type DecodeInputOptions, type MediaDecode } from './media-decode.js';

export type { MediaDecode } from './media-decode.js';

export interface DecodeAudioOptions extends DecodeInputOptions {
  /** Output sample rate in Hz (ffmpeg resamples). Default 16 000. */
  readonly sampleRate?: number;
  /** Output channels (ffmpeg downmixes/upmixes). Default 1. */
  readonly channels?: number;
  /** Packet length in milliseconds; the last packet may be shorter. Default 100. */
  readonly chunkMs?: number;
}

const positive = (name: string, v: number | undefined, integer: boolean): void => {
  if (v === undefined) return;
  if (!(v > 0) || (integer && !Number.isInteger(v))) throw new RangeError(`decodeAudio: option ${name} must be a positive ${integer ? 'integer' : 'number'}, got ${v}`);
};

/**
 * Decodes the first audio stream of any input ffmpeg reads (file, http(s) URL, Node Readable) into float32
 * {@link AudioPacket}s. Pull-based: ffmpeg is paused while the consumer is busy, and killed when the loop ends early.
 * pts count samples from `startPts`, so they are exact and gap-free whatever the container says.
 *
 * ```ts
 * for await (const p of decodeAudio('talk.mp3', { sampleRate: 16_000, chunkMs: 100 })) {
 *   console.log(p.pts, p.samples.length); // 0 1600, 100000 1600, …
 * }
 * ```
 */
export function decodeAudio(input: MediaInput, options: DecodeAudioOptions = {}): MediaDecode<AudioPacket> {
  const sampleRate = options.sampleRate ?? 16_000;
  const channels = options.channels ?? 1;
  const chunkMs = options.chunkMs ?? 100;
  positive('sampleRate', sampleRate, true);
  positive('channels', channels, true);
  positive('chunkMs', chunkMs, false);
  positive('highWaterMark', options.highWaterMark, true);
  const chunkFrames = Math.max(1, Math.round((sampleRate * chunkMs) / 1000));
  return mediaDecode(
    'decodeAudio',
    input,
    options,
    'audio',
    // -flush_packets 1: write each packet at once instead of filling a 32 KB buffer first (half a second of
    // 16 kHz audio held back from a live source).
    ['-map', '0:a:0', '-vn', '-sn', '-dn', '-ac', String(channels), '-ar', String(sampleRate), '-acodec', 'pcm_f32le', '-flush_packets', '1', '-f', 'f32le'],
    async function* ({ proc, out, reportInfo }) {
      proc.stderr.onOutputStream(reportInfo);
      // Errors are raised by mediaDecode; here `done` only settles info when ffmpeg exits before any stream line.
      void proc.done.then(reportInfo, reportInfo);
      let frames = 0;
      for await (const bytes of fixedChunks(out, chunkFrames * channels * 4)) {
        const samples = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
        yield audioPacket({
          samples,
          sampleRate,
          channels,
          pts: (options.startPts ?? 0) + samplesToMicros(frames, sampleRate),
          session: options.session,
          turn: options.turn,
        });
        frames += samples.length / channels;
      }
    },
  );
}
