import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { sinSquared } from './snake-beta.js';

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
