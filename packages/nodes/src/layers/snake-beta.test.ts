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

  it('equals x + inv·sin²(x·freq) per channel, through the kernel and through tfjs ops alike', () => {
    const before = tf.memory().numTensors;
    const L = 37, C = 5;
    const xs = Float32Array.from({ length: L * C }, (_, i) => Math.sin(i * 1.7) * 6);
    const freq = [0.5, 1, 2.5, 7, 0.01], inv = [1, 0.3, 2, 0.05, 10];
    const act: SnakeBeta = { frequency: tf.tensor1d(freq), inverseMagnitude: tf.tensor1d(inv), channels: C };
    const x = tf.tensor3d(xs, [1, L, C]);
    const fast = snakeBeta(x, act), ops = snakeBetaOps(x, act);
    expect(fast.shape).toEqual([1, L, C]);
    const a = fast.dataSync(), b = ops.dataSync();
    let worstFast = 0, worstOps = 0;
    for (let i = 0; i < L * C; i++) {
      const c = i % C, v = xs[i];
      const want = v + inv[c] * Math.sin(v * freq[c]) ** 2;
      worstFast = Math.max(worstFast, Math.abs(a[i] - want) / Math.max(1, Math.abs(want)));
      worstOps = Math.max(worstOps, Math.abs(b[i] - want) / Math.max(1, Math.abs(want)));
    }
    expect(worstFast).toBeLessThan(1e-6); // one float32 rounding of the result
    expect(worstOps).toBeLessThan(1e-5);
    expect(() => tf.tidy(() => snakeBeta(tf.zeros([2, 4]), act))).toThrow(/4 channels on its last axis, the activation has 5/);
    tf.dispose([x, fast, ops, act.frequency, act.inverseMagnitude]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
