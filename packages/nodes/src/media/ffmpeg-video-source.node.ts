import { defer, finalize } from 'rxjs';
import { z } from 'zod';
import { defineNode, fromAsyncIterable, ports } from '@omniflow/core';
import { decodeVideo } from './decode-video.js';
import { mediaInputSchema } from './ffmpeg-audio-source.node.js';

export const ffmpegVideoSourceParams = z.object({
  input: mediaInputSchema,
  fps: z.number().positive().optional(),
  maxSize: z.number().int().min(2).optional(),
  size: z.object({ width: z.number().int().positive(), height: z.number().int().positive() }).optional(),
  scaler: z.enum(['bicubic', 'bilinear', 'area', 'lanczos', 'neighbor']).optional(),
  inputFormat: z.string().optional(),
  inputOptions: z.array(z.string()).optional(),
  ffmpegPath: z.string().optional(),
});

/**
 * Source node: the first video stream of a file, URL or Readable → rgb24 frames sampled at `fps`, scaled by
 * `maxSize`/`size`, pts = index / fps. Pausable and killed on unsubscribe like {@link ffmpegAudioSource}.
 *
 * ```ts
 * ffmpegVideoSource({ input: 'clip.mp4', fps: 2, maxSize: 448 }).subscribe((f) => console.log(f.index, f.width));
 * ```
 */
export const ffmpegVideoSource = defineNode({
  type: 'ffmpegVideoSource',
  description: 'decodes the first video stream of a file, URL or stream to rgb24 frames with ffmpeg',
  outputs: { video: ports.video() },
  params: ffmpegVideoSourceParams,
  operator: (p, ctx) =>
    defer(() => {
      const decode = decodeVideo(p.input, { ...p, session: ctx.session, turn: ctx.turn });
      // close() kills ffmpeg at once; the iterator's return() alone would wait for a pending read (a stalled URL).
      return fromAsyncIterable(decode, { demand: ctx.demand }).pipe(finalize(() => decode.close()));
    }),
});
