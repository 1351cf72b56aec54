import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { sinSquared, snakeBeta, snakeBetaOps, type SnakeBeta } from './snake-beta.js';

describe('sinSquared (SnakeBeta without the wasm Sin kernel)', () => {
  beforeAll(async () => {
    await initBackend();
  });

  it('matches sin² to float32 precision over the range activations take, and stays accurate further out', () => {
    const before = tf.memory().numTensors;
    const z = Float32Array.from({ length: 20_001 }, (_, i) => -20 + i * 0.002);
    const got = tf.tidy(() => sinSquared(tf.tensor1d(z)).dataSync());
    let worst = 0;
    z.forEach((v, i) => (worst = Math.max(worst, Math.abs(got[i] - Math.sin(v) ** 2))));
    expect(worst).toBeLessThan(3e-6); // reduction error ~|z|·1e-7 at |z| = 20
    const far = tf.tidy(() => sinSquared(tf.tensor1d([1000.5])).dataSync()[0]);
    expect(far).toBeCloseTo(Math.sin(1000.5) ** 2, 3);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('snakeBeta', () => {
  beforeAll(async () => {
    await initBackend();
  });

  // C = 16 runs the unrolled SIMD kernel, C = 8 the plain one, C = 5 the scalar fallback.
  it.each([16, 8, 5])('equals x + inv·sin²(x·freq) per channel with %i channels, through the kernel and through tfjs ops alike', (C) => {
    const before = tf.memory().numTensors;
    const L = 37;
    const xs = Float32Array.from({ length: L * C }, (_, i) => Math.sin(i * 1.7) * 6);
    const freq = Array.from({ length: C }, (_, c) => [0.5, 1, 2.5, 7, 0.01, 3, 0.2, 1.5][c % 8] * (1 + c / 16));
    const inv = Array.from({ length: C }, (_, c) => [1, 0.3, 2, 0.05, 10, 0.7, 4, 1][(c + 3) % 8]);
    const act: SnakeBeta = { frequency: tf.tensor1d(freq), inverseMagnitude: tf.tensor1d(inv), channels: C };
    const x = tf.tensor3d(xs, [1, L, C]);
    // Allowed error: a few float32 roundings of the result, plus what rounding z = x·freq to float32 (as the reference
    // does) moves sin²: up to 2·|z|·2^-24 in the argument, scaled by inv.
    const check = (got: ArrayLike<number>, roundings: number) => {
      let worst = 0;
      for (let i = 0; i < L * C; i++) {
        const c = i % C, v = xs[i], z = v * freq[c];
        const want = v + inv[c] * Math.sin(z) ** 2;
        const allowed = roundings * 6e-8 * Math.max(1, Math.abs(want)) + inv[c] * 2 * Math.abs(z) * 6e-8;
        worst = Math.max(worst, Math.abs(got[i] - want) / allowed);
      }
      expect(worst).toBeLessThan(1);
    };
    const fast = snakeBeta(x, act), ops = snakeBetaOps(x, act);
    expect(fast.shape).toEqual([1, L, C]);
    check(fast.dataSync(), 8);
    check(ops.dataSync(), 100); // ~20 float32 ops, and |z|·1e-7 from its reduction
    // Still right after the wasm heap grew (the kernel's memory views must follow it).
    const big = tf.zeros([16 << 20]);
    const again = snakeBeta(x, act);
    check(again.dataSync(), 8);
    expect(() => tf.tidy(() => snakeBeta(tf.zeros([2, 4]), act))).toThrow(new RegExp(`4 channels on its last axis, the activation has ${C}`));
    tf.dispose([x, fast, ops, big, again, act.frequency, act.inverseMagnitude]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
