import type { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, type AudioPacket } from '@omniflow/core';
import { sinkObservable } from './packet-pipe.js';
import { writeWav } from './wav.js';

export const wavFileSinkParams = z.object({
  path: z.string().min(1),
  format: z.enum(['f32', 's16']).default('f32'),
});

/**
 * Sink node: writes the audio stream to a WAV file (rate and channels of the first packet), fixing the header when
 * the stream completes. Its output emits `{ frames, bytes }` once the file is final.
 *
 * ```ts
 * speech$.pipe(wavFileSink({ path: 'reply.wav', format: 's16' })).subscribe(({ frames }) => console.log(frames));
 * ```
 */
export const wavFileSink = defineNode({
  type: 'wavFileSink',
  description: 'streams audio packets into a WAV file (float32 or 16-bit), header fixed on completion',
  inputs: { audio: ports.audio() },
  params: wavFileSinkParams,
  operator: (p, ctx) => (audio$: Observable<AudioPacket>) => sinkObservable(audio$, ctx, (packets) => writeWav(packets, p.path, { format: p.format })),
});
