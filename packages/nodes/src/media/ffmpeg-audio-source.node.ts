import type { Readable } from 'node:stream';
import { defer, finalize } from 'rxjs';
import { z } from 'zod';
import { defineNode, fromAsyncIterable, ports } from '@omniflow/core';
import { decodeAudio } from './decode-audio.js';

/** A path or URL string, a URL, or a Node Readable. */
export const mediaInputSchema = z.union([
  z.string().min(1),
  z.instanceof(URL),
  z.custom<Readable>((v) => typeof v === 'object' && v !== null && typeof (v as Readable).pipe === 'function' && typeof (v as Readable).read === 'function', {
    message: 'expected a file path, an http(s) URL or a Node Readable',
  }),
]);

export const ffmpegAudioSourceParams = z.object({
  input: mediaInputSchema,
  sampleRate: z.number().int().positive().default(16_000),
  channels: z.number().int().positive().default(1),
  chunkMs: z.number().positive().default(100),
  inputFormat: z.string().optional(),
  inputOptions: z.array(z.string()).optional(),
  ffmpegPath: z.string().optional(),
});

/**
 * Source node: any file, http(s) URL or Readable ffmpeg can read → float32 audio packets. Pausable: inside a graph
 * ffmpeg is paused while the downstream `block` queue is full; unsubscribing kills ffmpeg.
 *
 * ```ts
 * ffmpegAudioSource({ input: 'talk.mp3', sampleRate: 16_000 }).pipe(melFeatures()).subscribe(console.log);
 * ```
 */
export const ffmpegAudioSource = defineNode({
  type: 'ffmpegAudioSource',
  description: 'decodes the first audio stream of a file, URL or stream with ffmpeg',
  outputs: { audio: ports.audio({ description: 'float32 PCM at the sampleRate/channels params' }) },
  params: ffmpegAudioSourceParams,
  operator: (p, ctx) =>
    defer(() => {
      const decode = decodeAudio(p.input, { ...p, session: ctx.session, turn: ctx.turn });
      // close() kills ffmpeg at once; the iterator's return() alone would wait for a pending read (a stalled URL).
      return fromAsyncIterable(decode, { demand: ctx.demand }).pipe(finalize(() => decode.close()));
    }),
});
