import type { Writable } from 'node:stream';
import type { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, type AudioPacket } from '@omniflow/core';
import { writePcm } from './encode-audio.js';
import { sinkObservable } from './packet-pipe.js';

export const pcmSinkParams = z.object({
  target: z.custom<Writable>((v) => typeof v === 'object' && v !== null && typeof (v as Writable).write === 'function', { message: 'expected a Node Writable' }),
  format: z.enum(['f32le', 's16le']).default('f32le'),
  end: z.boolean().default(false),
});

/**
 * Sink node: raw interleaved PCM into a Node Writable (a socket, a speaker process's stdin), waiting for 'drain'.
 *
 * ```ts
 * speech$.pipe(pcmSink({ target: aplay.stdin, format: 's16le' })).subscribe();
 * ```
 */
export const pcmSink = defineNode({
  type: 'pcmSink',
  description: 'writes raw PCM (f32le or s16le) to a Node Writable with backpressure',
  inputs: { audio: ports.audio() },
  params: pcmSinkParams,
  operator: (p, ctx) => (audio$: Observable<AudioPacket>) => sinkObservable(audio$, ctx, (packets) => writePcm(packets, p.target, { format: p.format, end: p.end })),
});
