import * as tf from '@tensorflow/tfjs-core';
import type { WeightSource } from './linear.js';

/** RMSNorm weights: `y = weight ⊙ x / sqrt(mean(x²) + eps)` over the last axis, no bias (spec 3.1). */
export interface RMSNorm {
  readonly weight: tf.Tensor1D;
  readonly eps: number;
}

/**
 * Loads `${key}` (shape [dim]) as an RMSNorm.
 *
 * ```ts
 * const norm = loadRMSNorm(ckpt, 'thinker.model.norm.weight', 2048, 1e-6);
 * const y = rmsNorm(x, norm); // x [..., 2048]
 * ```
 */
export function loadRMSNorm(ckpt: WeightSource, key: string, dim: number, eps: number): RMSNorm {
  return { weight: tf.tensor1d(ckpt.get(key, [dim]).data as Float32Array), eps };
}

/**
 * RMSNorm over the last axis of `x` (any leading shape).
 *
 * ```ts
 * const y = rmsNorm(tf.tensor2d([[1, 2, 2]]), { weight: tf.ones([3]), eps: 1e-6 }); // [[0.577, 1.155, 1.155]]
 * ```
 */
export function rmsNorm(x: tf.Tensor, norm: RMSNorm): tf.Tensor {
  return tf.tidy(() => {
    const meanSquare = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, norm.eps))), norm.weight);
  });
}
