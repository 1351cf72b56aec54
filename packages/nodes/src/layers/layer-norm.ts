import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';

/** `nn.LayerNorm` with weight and bias over the last axis. */
export interface LayerNorm {
  readonly weight: tf.Tensor1D;
  readonly bias: tf.Tensor1D;
  readonly dim: number;
  readonly eps: number;
}

/**
 * Loads `${prefix}.weight` and `${prefix}.bias` ([dim] each). The eps is not in the checkpoint:
 * the audio encoder uses PyTorch's default 1e-5, the vision blocks and mergers 1e-6.
 *
 * ```ts
 * const ln = loadLayerNorm(ckpt, 'thinker.audio_tower.ln_post', 1280, 1e-5);
 * const y = layerNorm(x, ln); // x [..., 1280]
 * ```
 */
export function loadLayerNorm(ckpt: Checkpoint, prefix: string, dim: number, eps: number): LayerNorm {
  const weight = tf.tensor1d(ckpt.get(`${prefix}.weight`, [dim]).data as Float32Array);
  const bias = tf.tensor1d(ckpt.get(`${prefix}.bias`, [dim]).data as Float32Array);
  return { weight, bias, dim, eps };
}

/** y = (x − mean) / sqrt(var + eps) · w + b over the last axis (biased variance, as PyTorch). */
export function layerNorm(x: tf.Tensor, ln: LayerNorm): tf.Tensor {
  return tf.tidy(() => {
    const axis = x.rank - 1;
    const mean = tf.mean(x, axis, true);
    const centered = tf.sub(x, mean);
    const variance = tf.mean(tf.square(centered), axis, true);
    const normed = tf.mul(centered, tf.rsqrt(tf.add(variance, ln.eps)));
    return tf.add(tf.mul(normed, ln.weight), ln.bias);
  });
}

export function disposeLayerNorm(ln: LayerNorm): void {
  ln.weight.dispose();
  ln.bias.dispose();
}
