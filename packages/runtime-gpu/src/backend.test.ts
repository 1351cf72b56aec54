import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';

describe('initBackend', () => {
  it('falls back to wasm when tfjs-node is absent and says why', async () => {
    const r = await initBackend();
    expect(r.name).toBe('wasm');
    expect(r.reason).toMatch(/tensorflow: neither/);
    const y = tf.matMul(tf.tensor2d([[1, 2]]), tf.tensor2d([[3], [4]]));
    expect(Array.from(y.dataSync())).toEqual([11]);
    y.dispose();
  });
});
