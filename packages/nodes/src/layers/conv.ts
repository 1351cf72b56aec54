import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';

/**
 * A 2-D convolution with its filter stored as tfjs wants it, [kh, kw, in, out]: PyTorch stores
 * `Conv2d.weight` as [out, in, kh, kw], so it is transposed once at load.
 */
export interface Conv2d {
  readonly filter: tf.Tensor4D; // [kh, kw, in, out]
  readonly bias?: tf.Tensor1D; // [out]
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernel: readonly [number, number];
  readonly stride: readonly [number, number];
  readonly padding: number;
}

/**
 * Loads `${prefix}.weight` ([out, in, kh, kw]) and, when `bias` is true, `${prefix}.bias`.
 *
 * ```ts
 * const c = loadConv2d(ckpt, 'thinker.audio_tower.conv2d1', { inChannels: 1, outChannels: 480, kernel: 3, stride: 2, padding: 1 });
 * const y = conv2d(x, c); // x NHWC [N, 128, 100, 1] -> [N, 64, 50, 480]
 * ```
 */
export function loadConv2d(
  ckpt: Checkpoint,
  prefix: string,
  opts: { inChannels: number; outChannels: number; kernel: number; stride: number; padding: number; bias?: boolean },
): Conv2d {
  const { inChannels, outChannels, kernel: k, stride, padding } = opts;
  const w = ckpt.get(`${prefix}.weight`, [outChannels, inChannels, k, k]);
  const filter = tf.tidy(
    () => tf.transpose(tf.tensor4d(w.data as Float32Array, [outChannels, inChannels, k, k]), [2, 3, 1, 0]) as tf.Tensor4D,
  );
  const bias = (opts.bias ?? true) ? tf.tensor1d(ckpt.get(`${prefix}.bias`, [outChannels]).data as Float32Array) : undefined;
  return { filter, bias, inChannels, outChannels, kernel: [k, k], stride: [stride, stride], padding };
}

/**
 * Cross-correlation as PyTorch's `Conv2d` computes it, on NHWC input: symmetric zero padding of
 * `padding` on both spatial axes, so out = floor((in + 2·padding − k) / stride) + 1 per axis.
 */
export function conv2d(x: tf.Tensor4D, c: Conv2d): tf.Tensor4D {
  if (x.shape[3] !== c.inChannels) {
    throw new Error(`conv2d: input has ${x.shape[3]} channels (NHWC [${x.shape}]) but the filter expects ${c.inChannels}`);
  }
  return tf.tidy(() => {
    const y = tf.conv2d(x, c.filter, c.stride as [number, number], c.padding);
    return (c.bias ? tf.add(y, c.bias) : y) as tf.Tensor4D;
  });
}

export function disposeConv2d(c: Conv2d): void {
  c.filter.dispose();
  c.bias?.dispose();
}
