import { z } from 'zod';
import { defineNode, ports, type AudioPacket } from '@omniflow/core';
import { transformOperator } from './packet-pipe.js';
import { Rechunker } from './rechunk.js';

export const rechunkParams = z.object({
  /** Output packet length in ms (converted with the stream's sample rate); or give `frames`. */
  ms: z.number().positive().optional(),
  frames: z.number().int().positive().optional(),
  tail: z.enum(['pad', 'keep', 'drop']).default('keep'),
}).refine((v) => (v.ms === undefined) !== (v.frames === undefined), { message: 'give exactly one of ms or frames' });

/**
 * Re-chunker node: packets of exactly `frames` (or `ms`) with continuous pts.
 *
 * ```ts
 * mic$.pipe(rechunk({ ms: 20 })).subscribe(send); // 320-sample packets at 16 kHz
 * ```
 */
export const rechunk = defineNode({
  type: 'rechunk',
  description: 'cuts audio into fixed-size packets',
  inputs: { audio: ports.audio() },
  outputs: { audio: ports.audio() },
  params: rechunkParams,
  operator: (p) =>
    transformOperator<AudioPacket, AudioPacket>(() => {
      let r: Rechunker | undefined;
      return {
        push: (a) => {
          r ??= new Rechunker({ frames: p.frames ?? Math.max(1, Math.round((a.sampleRate * p.ms!) / 1000)), tail: p.tail });
          return r.push(a);
        },
        flush: () => r?.flush() ?? [],
      };
    }),
});
