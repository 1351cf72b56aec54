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
  return tf.tidy(() => tf.add(x, tf.mul(sinSquared(tf.mul(x, act.frequency)), act.inverseMagnitude)));
}

// Taylor coefficients of sin(r)/r in r², up to r¹⁰: on |r| ≤ π/2 the truncation error is below 6e-8.
const SIN_OVER_R = [1, -1 / 6, 1 / 120, -1 / 5040, 1 / 362_880, -1 / 39_916_800];

/**
 * sin²(z), elementwise, as a polynomial: the wasm backend's Sin kernel is ~15x slower than a handful of multiply-adds
 * (measured on Code2Wav's activations, where SnakeBeta was a third of the decoder's time). sin² has period π, so
 * z is reduced to r = z − round(z/π)·π ∈ [−π/2, π/2] and sin(r) is an odd polynomial. The reduction loses about
 * |z|·1e-7 in float32 (1e-6 at |z| = 10; activations here are of order 1), the polynomial < 6e-8.
 *
 * ```ts
 * sinSquared(tf.tensor1d([0, Math.PI / 2, 10])); // ≈ [0, 1, 0.29596]
 * ```
 */
export function sinSquared(z: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const r = tf.sub(z, tf.mul(tf.round(tf.mul(z, 1 / Math.PI)), Math.PI));
    const r2 = tf.square(r);
    let p: tf.Tensor = tf.mul(r2, SIN_OVER_R[5]);
    for (let i = 4; i > 0; i--) p = tf.mul(tf.add(p, SIN_OVER_R[i]), r2);
    return tf.square(tf.mul(tf.add(p, SIN_OVER_R[0]), r));
  });
}

export function disposeSnakeBeta(act: SnakeBeta): void {
  act.frequency.dispose();
  act.inverseMagnitude.dispose();
}
