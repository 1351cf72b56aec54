import * as tf from '@tensorflow/tfjs-core';

/**
 * Deterministic values in [-1, 1) from a linear congruential generator: the same numbers on every machine and
 * backend, so kernel tests compare against fixed inputs without fixtures.
 *
 * ```ts
 * const w = tf.tensor2d(lcgValues(64 * 32, 7), [64, 32]);
 * ```
 */
export function lcgValues(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** The largest |a - b| over two tensors of the same shape (throws naming both shapes otherwise). */
export function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  if (a.shape.join() !== b.shape.join()) throw new Error(`maxAbsDiff: shapes [${a.shape}] and [${b.shape}] differ`);
  const x = a.dataSync(), y = b.dataSync();
  let d = 0;
  for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i]! - y[i]!));
  return d;
}
