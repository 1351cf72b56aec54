import { defer } from 'rxjs';
import { z } from 'zod';
import { defineNode, fromAsyncIterable, ports, type AudioPacket } from '@omniflow/core';
import { readWav, wavPackets } from './wav.js';

export const wavFileSourceParams = z.object({
  path: z.string().min(1),
  chunkMs: z.number().positive().default(100),
});

/**
 * Source node reading a WAV file with no ffmpeg (through `wavefile`): packets at the file's own rate and channels.
 *
 * ```ts
 * wavFileSource({ path: 'talk.wav', chunkMs: 20 }).pipe(resampleAudio({ sampleRate: 16_000 })).subscribe(send);
 * ```
 */
export const wavFileSource = defineNode({
  type: 'wavFileSource',
  description: 'reads a WAV file into audio packets (no ffmpeg)',
  outputs: { audio: ports.audio() },
  params: wavFileSourceParams,
  operator: (p, ctx) =>
    defer(() => {
      async function* packets(): AsyncGenerator<AudioPacket> {
        yield* wavPackets(await readWav(p.path), { chunkMs: p.chunkMs, session: ctx.session, turn: ctx.turn });
      }
      return fromAsyncIterable(packets(), { demand: ctx.demand });
    }),
});
