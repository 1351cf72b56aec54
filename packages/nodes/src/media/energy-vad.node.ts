import { z } from 'zod';
import { defineNode, ports, type AudioPacket, type ControlPacket } from '@omniflow/core';
import { transformOperator } from './packet-pipe.js';
import { EnergyVad } from './vad.js';

export const energyVadParams = z.object({
  frameMs: z.number().positive().default(20),
  thresholdDb: z.number().max(0).default(-40),
  adaptiveMarginDb: z.number().positive().optional(),
  minSpeechMs: z.number().min(0).default(60),
  hangoverMs: z.number().min(0).default(300),
});

/**
 * Energy VAD node: passes the audio through and inserts `speech-start` / `speech-end` control packets (attack
 * `minSpeechMs`, hangover `hangoverMs`); an open segment is closed when the stream completes.
 *
 * ```ts
 * mic$.pipe(energyVad({ hangoverMs: 400 })).subscribe((p) => p.kind === 'control' && console.log(p.signal, p.pts));
 * ```
 */
export const energyVad = defineNode({
  type: 'energyVad',
  description: 'energy voice-activity detection with hangover: audio through, speech-start/speech-end control packets',
  inputs: { audio: ports.audio() },
  outputs: { out: ports.of(['audio', 'control'], { description: 'the input audio plus speech-start / speech-end' }) },
  params: energyVadParams,
  operator: (p) =>
    transformOperator<AudioPacket, AudioPacket | ControlPacket>(() => {
      const vad = new EnergyVad(p);
      return { push: (a) => vad.push(a), flush: () => vad.flush() };
    }),
});
