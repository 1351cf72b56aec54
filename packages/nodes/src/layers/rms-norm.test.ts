import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { rmsNorm } from './rms-norm.js';

beforeAll(async () => {
  await initBackend();
});

describe('rmsNorm', () => {
  it('divides each row by its root mean square (+eps) and scales by the weight', () => {
    const before = tf.memory().numTensors;
    const weight = tf.tensor1d([1, 2, 0.5]);
    const x = tf.tensor2d([[1, 2, 2], [0, 0, 0]]);
    const y = rmsNorm(x, { weight, eps: 1e-6 });
    const rms = Math.sqrt((1 + 4 + 4) / 3 + 1e-6);
    const got = y.arraySync() as number[][];
    expect(got[0]![0]).toBeCloseTo(1 / rms, 6);
    expect(got[0]![1]).toBeCloseTo((2 * 2) / rms, 6);
    expect(got[0]![2]).toBeCloseTo((2 * 0.5) / rms, 6);
    expect(got[1]).toEqual([0, 0, 0]); // eps keeps a zero row finite
    tf.dispose([weight, x, y]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
