import { audioPacket, type AudioPacket } from '@omniflow/core';

/**
 * Changes the channel count of interleaved samples: N → 1 averages the channels (or applies `weights`), 1 → N
 * copies, N → M (other) averages to mono and copies. Averaging (not summing) keeps full-scale input in [-1, 1].
 *
 * ```ts
 * const mono = mixChannels(stereo, 2, 1); // (L + R) / 2
 * ```
 */
export function mixChannels(samples: Float32Array, inChannels: number, outChannels: number, weights?: readonly number[]): Float32Array {
  if (!Number.isInteger(inChannels) || inChannels < 1) throw new RangeError(`mixChannels: inChannels must be a positive integer, got ${inChannels}`);
  if (!Number.isInteger(outChannels) || outChannels < 1) throw new RangeError(`mixChannels: outChannels must be a positive integer, got ${outChannels}`);
  if (samples.length % inChannels !== 0) throw new RangeError(`mixChannels: ${samples.length} samples is not a multiple of ${inChannels} channels`);
  if (weights && weights.length !== inChannels) throw new RangeError(`mixChannels: ${weights.length} weights for ${inChannels} channels`);
  if (inChannels === outChannels && !weights) return samples;
  const frames = samples.length / inChannels;
  const w = weights ?? new Array<number>(inChannels).fill(1 / inChannels);
  const out = new Float32Array(frames * outChannels);
  for (let f = 0; f < frames; f++) {
    let mono = 0;
    for (let c = 0; c < inChannels; c++) mono += w[c] * samples[f * inChannels + c];
    for (let c = 0; c < outChannels; c++) out[f * outChannels + c] = mono;
  }
  return out;
}

/**
 * A packet with its channels mixed to `channels` (pts, duration and everything else kept).
 *
 * ```ts
 * const mono = mixdownPacket(stereoPacket); // channels: 1
 * ```
 */
export function mixdownPacket(p: AudioPacket, channels = 1, weights?: readonly number[]): AudioPacket {
  if (p.channels === channels && !weights) return p;
  return audioPacket({ ...p, samples: mixChannels(p.samples, p.channels, channels, weights), channels });
}
