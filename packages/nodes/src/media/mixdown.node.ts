import { map } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, type AudioPacket } from '@omniflow/core';
import { mixdownPacket } from './mixdown.js';

export const mixdownParams = z.object({
  /** Output channels (1 = mono). */
  channels: z.number().int().positive().default(1),
  /** Per-input-channel weights for the mix (default: equal, averaging). */
  weights: z.array(z.number()).optional(),
});

/**
 * Channel mixdown node: averages the channels (or applies `weights`) to `channels` output channels.
 *
 * ```ts
 * stereo$.pipe(mixdown()).subscribe((p) => console.log(p.channels)); // 1
 * ```
 */
export const mixdown = defineNode({
  type: 'mixdown',
  description: 'mixes audio channels down (or up) to a channel count',
  inputs: { audio: ports.audio() },
  outputs: { audio: ports.audio() },
  params: mixdownParams,
  operator: (p) => map((a: AudioPacket) => mixdownPacket(a, p.channels, p.weights)),
});
