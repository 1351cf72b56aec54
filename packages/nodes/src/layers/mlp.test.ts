import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { SILU_MUL_MAX_VALUES, siluMul, siluMulOps, swiGlu, swiGluFromPyTorch } from './mlp.js';

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 6 - 3);
}

const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);

beforeAll(async () => {
  await initBackend();
  await import('@tensorflow/tfjs-core/dist/register_all_gradients.js'); // the reference ops' gradients
});

describe('siluMul (the middle of a SwiGLU in one pass)', () => {
  it('equals split → silu(g)·u as tfjs ops, on the kernel and past its size limit', () => {
    expect(Array.from(siluMul(tf.tensor2d([[1, -2, 3, 4]])).dataSync()).map((v) => +v.toFixed(3))).toEqual([2.193, -0.954]);
    const before = tf.memory().numTensors;
    // 384, 40, 3072 (any size): the SIMD pass; 6: not whole vectors, the JS pass; 2 × 513 = 1026 values of odd width: the ops.
    for (const [n, I] of [[1, 384], [3, 40], [2, 3072], [2, 6], [2, SILU_MUL_MAX_VALUES / 2 + 1]] as const) {
      const x = tf.tensor2d(values(n * 2 * I, n + I), [n, 2 * I]);
      const y = siluMul(x), want = siluMulOps(x);
      expect(y.shape).toEqual([n, I]);
      expect(maxDiff(y, want)).toBeLessThan(1e-6);
      tf.dispose([x, y, want]);
    }
    expect(tf.memory().numTensors).toBe(before);
    // Gates far out in both tails (exp(−g) overflows float32 below −88): σ is 0 or 1 there, as in the ops.
    const tails = tf.tensor2d([[-120, -90, -30, -5, 0, 5, 30, 120, 1, 2, 3, 4, 5, 6, 7, 8]]);
    const [yt, wt] = [siluMul(tails), siluMulOps(tails)];
    const round = (t: tf.Tensor) => Array.from(t.dataSync()).map((v) => +v.toFixed(4) + 0); // + 0: -0 and 0 alike
    expect(round(yt)).toEqual(round(wt));
    expect(maxDiff(yt, wt)).toBeLessThan(1e-4); // 120·8 = 960 at the top: relative 1e-7
    tf.dispose([tails, yt, wt]);
    const odd = tf.zeros([1, 5]) as tf.Tensor2D;
    expect(() => siluMul(odd)).toThrow('siluMul: rows of 5 values cannot be split into gate and up halves');
    odd.dispose();
  });

  it('gives the gradient of the tfjs ops through the kernel', () => {
    const x = tf.tensor2d(values(2 * 24, 7), [2, 24]);
    const up = tf.tensor2d(values(2 * 12, 9), [2, 12]);
    const [g] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(siluMul(a as tf.Tensor2D), up)))([x]);
    const [w] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(siluMulOps(a as tf.Tensor2D), up)))([x]);
    expect(maxDiff(g!, w!)).toBeLessThan(1e-5);
    expect(maxDiff(g!, tf.zerosLike(g!))).toBeGreaterThan(0.1);
    tf.dispose([x, up, g!, w!]);
  });

  it('makes swiGlu equal down(silu(gate(x)) ⊙ up(x)) from the PyTorch-layout weights', () => {
    const H = 8, I = 6;
    const gate = values(I * H, 1), upW = values(I * H, 2), down = values(H * I, 3);
    const mlp = swiGluFromPyTorch(gate, upW, down, H, I);
    const x = tf.tensor2d(values(2 * H, 4), [2, H]);
    const y = swiGlu(x, mlp, 0.5);
    const want = tf.tidy(() => {
      const g = tf.matMul(x, tf.tensor2d(gate, [I, H]), false, true), u = tf.matMul(x, tf.tensor2d(upW, [I, H]), false, true);
      return tf.mul(tf.matMul(tf.mul(tf.mul(g, tf.sigmoid(g)), u), tf.tensor2d(down, [H, I]), false, true), 0.5);
    });
    expect(maxDiff(y, want)).toBeLessThan(1e-4);
    tf.dispose([x, y, want, mlp.gateUp, mlp.down]);
  });
});
