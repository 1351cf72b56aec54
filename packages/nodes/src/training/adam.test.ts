import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { Adam, learningRate } from './adam.js';

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

describe('Adam', () => {
  it('follows the AdamW formulas with global-norm clipping (matrices decay, vectors do not)', () => {
    const before = tf.memory().numTensors;
    const [w, b] = tf.tidy(() => [tf.variable(tf.tensor2d([[0.5, -1], [2, 0]])), tf.variable(tf.tensor1d([0.25, -0.5]))] as tf.Variable[]);
    const adam = new Adam(new Map([['w', w], ['b', b]]), { beta1: 0.9, beta2: 0.98, epsilon: 1e-8, weightDecay: 0.1, clipNorm: 1 });
    const steps = [
      { w: [3, 0, -4, 0], b: [0, 0] }, // norm 5: clipped to 1
      { w: [0.1, 0.2, 0, -0.1], b: [0.3, 0] }, // norm < 1: as is
    ];
    // The same updates in double precision, written out.
    const ref = { w: [0.5, -1, 2, 0], b: [0.25, -0.5] } as Record<'w' | 'b', number[]>;
    const mom = { w: { m: [0, 0, 0, 0], v: [0, 0, 0, 0] }, b: { m: [0, 0], v: [0, 0] } };
    steps.forEach((g, k) => {
      const lr = 0.01 * (k + 1);
      const norm = Math.hypot(...g.w, ...g.b);
      const { gradNorm } = adam.apply({ w: Float32Array.from(g.w), b: Float32Array.from(g.b) }, lr);
      expect(gradNorm).toBeCloseTo(norm, 6);
      const scale = Math.min(1, 1 / norm);
      for (const name of ['w', 'b'] as const) {
        ref[name] = ref[name].map((x, i) => {
          const gi = g[name][i]! * scale;
          const m = (mom[name].m[i] = 0.9 * mom[name].m[i]! + 0.1 * gi);
          const v = (mom[name].v[i] = 0.98 * mom[name].v[i]! + 0.02 * gi * gi);
          const decay = name === 'w' ? lr * 0.1 * x : 0;
          return x - (lr * m / (1 - 0.9 ** (k + 1))) / (Math.sqrt(v / (1 - 0.98 ** (k + 1))) + 1e-8) - decay;
        });
      }
    });
    Array.from(w.dataSync()).forEach((x, i) => expect(x).toBeCloseTo(ref.w[i]!, 6));
    Array.from(b.dataSync()).forEach((x, i) => expect(x).toBeCloseTo(ref.b[i]!, 6));
    // The state round-trips: a second optimizer with it makes the same next update.
    const state = adam.exportState();
    const [w2, b2] = tf.tidy(() => [tf.variable(tf.clone(w!)), tf.variable(tf.clone(b!))]);
    const again = new Adam(new Map([['w', w2], ['b', b2]]), { weightDecay: 0.1, clipNorm: 1 });
    again.importState(state.step, state.tensors);
    const g = { w: Float32Array.from([0.2, 0, 0, 0.1]), b: Float32Array.from([0, 0.1]) };
    adam.apply(g, 0.01);
    again.apply(g, 0.01);
    expect(Array.from(w2.dataSync())).toEqual(Array.from(w.dataSync()));
    expect(() => adam.apply({ x: new Float32Array(1) }, 0.1)).toThrow(/unknown variable 'x'/);
    expect(() => adam.apply({ w: new Float32Array(3) }, 0.1)).toThrow(/'w' has 3 values, the variable 4/);
    expect(() => again.importState(1, { 'w.m': { shape: [4], data: new Float32Array(4) } })).toThrow(/'w\.m' is \[4\] but the variable is \[2,2\]/);
    tf.dispose([w, b, w2, b2]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('warms up linearly, then decays by a cosine to the floor', () => {
    const s = { peak: 1e-3, warmup: 10, total: 110, minRatio: 0.1 };
    expect(learningRate(0, s)).toBeCloseTo(1e-4, 12);
    expect(learningRate(9, s)).toBeCloseTo(1e-3, 12);
    expect(learningRate(60, s)).toBeCloseTo(1e-3 * (0.1 + 0.9 * 0.5), 12);
    expect(learningRate(110, s)).toBeCloseTo(1e-4, 12);
    expect(learningRate(500, s)).toBeCloseTo(1e-4, 12);
  });
});
