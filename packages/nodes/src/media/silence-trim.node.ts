import { z } from 'zod';
import { defineNode, ports, type AudioPacket } from '@omniflow/core';
import { transformOperator } from './packet-pipe.js';
import { SilenceTrimmer } from './vad.js';

export const silenceTrimParams = z.object({
  frameMs: z.number().positive().default(20),
  thresholdDb: z.number().max(0).default(-40),
  paddingMs: z.number().min(0).default(100),
});

/**
 * Silence-trim node: drops leading and trailing silence (keeping `paddingMs`), keeps the silence between speech.
 * Source pts are kept, so a trimmed stream still lines up with its video.
 *
 * ```ts
 * fileAudio$.pipe(silenceTrim({ thresholdDb: -45 })).subscribe(send);
 * ```
 */
export const silenceTrim = defineNode({
  type: 'silenceTrim',
  description: 'drops leading and trailing silence by frame energy',
  inputs: { audio: ports.audio() },
  outputs: { audio: ports.audio() },
  params: silenceTrimParams,
  operator: (p) =>
    transformOperator<AudioPacket, AudioPacket>(() => {
      const trim = new SilenceTrimmer(p);
      return { push: (a) => trim.push(a), flush: () => trim.flush() };
    }),
});
