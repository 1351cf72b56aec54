import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';

/**
 * SnakeBeta activation (BigVGAN style): `y = x + 1/(exp(β) + 1e-9) · sin²(x · exp(α))`, per channel.
 * The checkpoint stores α and β in log space, so both exponentials are taken once at load.
 */
export interface SnakeBeta {
  /** exp(alpha), [C]: the frequency. */
  readonly frequency: tf.Tensor1D;
  /** 1 / (exp(beta) + 1e-9), [C]: the magnitude's reciprocal, as the reference computes it. */
  readonly inverseMagnitude: tf.Tensor1D;
  readonly channels: number;
}

/**
 * Loads `${prefix}.alpha` and `${prefix}.beta` ([C] each).
 *
 * ```ts
 * const act = loadSnakeBeta(ckpt, 'code2wav.decoder.5', 96);
 * const y = snakeBeta(x, act); // x [..., 96]
 * ```
 */
export function loadSnakeBeta(ckpt: Checkpoint, prefix: string, channels: number): SnakeBeta {
  const alpha = ckpt.get(`${prefix}.alpha`, [channels]).data as Float32Array;
  const beta = ckpt.get(`${prefix}.beta`, [channels]).data as Float32Array;
  return tf.tidy(() => ({
    frequency: tf.exp(tf.tensor1d(alpha)),
    inverseMagnitude: tf.div(1, tf.add(tf.exp(tf.tensor1d(beta)), 1e-9)) as tf.Tensor1D,
    channels,
  }));
}

/** Applies SnakeBeta over the last (channel) axis of `x`, channels-last. */
export function snakeBeta(x: tf.Tensor, act: SnakeBeta): tf.Tensor {
  return tf.tidy(() => tf.add(x, tf.mul(tf.square(tf.sin(tf.mul(x, act.frequency))), act.inverseMagnitude)));
}

export function disposeSnakeBeta(act: SnakeBeta): void {
  act.frequency.dispose();
  act.inverseMagnitude.dispose();
}
