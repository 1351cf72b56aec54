import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';

/**
 * Where layer loaders read weights: a `Checkpoint`, or anything with the same `get(name, expectedShape)` (e.g.
 * random weights built in memory for a benchmark).
 */
export type WeightSource = Pick<Checkpoint, 'get'>;

/**
 * A Linear layer with its weight stored as [in, out]: PyTorch checkpoints store [out, in], and the
 * wasm backend's transposeB matmul is about 6x slower, so the weight is transposed once at load.
 */
export interface Linear {
  readonly weight: tf.Tensor2D; // [in, out]
  readonly bias?: tf.Tensor1D; // [out]
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/**
 * Loads `${prefix}.weight` (and `${prefix}.bias` when `bias` is true) from a checkpoint.
 *
 * ```ts
 * const q = loadLinear(ckpt, 'thinker.model.layers.0.self_attn.q_proj', 32, 64);
 * const y = linear(x, q); // x [..., 32] -> y [..., 64]
 * ```
 */
export function loadLinear(ckpt: WeightSource, prefix: string, inFeatures: number, outFeatures: number, bias = false): Linear {
  const w = ckpt.get(`${prefix}.weight`, [outFeatures, inFeatures]);
  const weight = tf.tidy(() => tf.transpose(tf.tensor2d(w.data as Float32Array, [outFeatures, inFeatures])) as tf.Tensor2D);
  const b = bias ? tf.tensor1d(ckpt.get(`${prefix}.bias`, [outFeatures]).data as Float32Array) : undefined;
  return { weight, bias: b, inFeatures, outFeatures };
}

/** y = x W (+ b) over the last axis of x; x may have any leading shape. */
export function linear(x: tf.Tensor, l: Linear): tf.Tensor {
  return tf.tidy(() => {
    const lead = x.shape.slice(0, -1);
    const x2 = x.rank === 2 ? (x as tf.Tensor2D) : tf.reshape(x, [-1, l.inFeatures]) as tf.Tensor2D;
    let y: tf.Tensor = tf.matMul(x2, l.weight);
    if (l.bias) y = tf.add(y, l.bias);
    return x.rank === 2 ? y : tf.reshape(y, [...lead, l.outFeatures]);
  });
}

export function disposeLinear(l: Linear): void {
  l.weight.dispose();
  l.bias?.dispose();
}
