import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { NORM_ROPE_MAX_ROWS, normRope, normRopeOps, qkvNormRope, qkvNormRopeOps } from './norm-rope.js';
import { ropeTables, ropeTensors } from './rope.js';

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2);
}

const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);

beforeAll(async () => {
  await initBackend();
  await import('@tensorflow/tfjs-core/dist/register_all_gradients.js'); // the reference ops' gradients
});

describe('normRope (one-pass RMSNorm + RoPE for decode rows)', () => {
  const D = 16;
  const norm = () => ({ weight: tf.tensor1d(values(D, 3)), eps: 1e-6 });

  it('equals rmsNorm → applyRope (tfjs ops) for decode rows and short blocks, and the norm alone', () => {
    const n = norm();
    const before = tf.memory().numTensors;
    for (const [S, H] of [[1, 4], [3, 2], [2, 5]] as const) {
      const [cos, sin] = ropeTensors(ropeTables(Array.from({ length: S }, (_, i) => 7 + 3 * i), D, 1e4));
      const x = tf.tensor3d(values(S * H * D, S + H), [S, H, D]);
      const fused = normRope(x, n, { cos, sin }), ops = normRopeOps(x, n, { cos, sin });
      expect(fused.shape).toEqual([S, H, D]);
      expect(maxDiff(fused, ops)).toBeLessThan(2e-6);
      const scaled = normRope(x, n, { cos, sin }, 0.25), scaledOps = normRopeOps(x, n, { cos, sin }, 0.25);
      expect(maxDiff(scaled, scaledOps)).toBeLessThan(1e-6);
      expect(tf.tidy(() => maxDiff(scaled, tf.mul(ops, 0.25)))).toBeLessThan(1e-6);
      tf.dispose([scaled, scaledOps]);
      const x2 = tf.reshape(x, [S * H, D]);
      const plain = normRope(x2, n), plainOps = normRopeOps(x2, n);
      expect(maxDiff(plain, plainOps)).toBeLessThan(2e-6);
      tf.dispose([cos, sin, x, fused, ops, x2, plain, plainOps]);
    }
    expect(tf.memory().numTensors).toBe(before);
    n.weight.dispose();
  });

  it('runs head sizes that are not whole SIMD vectors (D = 6 with RoPE, 10 without) through the JS pass, equal to the ops', () => {
    for (const [D, rope] of [[6, true], [10, false]] as const) {
      const n = { weight: tf.tensor1d(values(D, 3)), eps: 1e-6 };
      const [cos, sin] = ropeTensors(ropeTables([3, 4], D, 1e4));
      const x = tf.tensor3d(values(2 * 3 * D, 6), [2, 3, D]);
      const r = rope ? { cos, sin } : undefined;
      const got = normRope(x, n, r, 0.5), want = normRopeOps(x, n, r, 0.5);
      expect(maxDiff(got, want)).toBeLessThan(2e-6);
      tf.dispose([n.weight, cos, sin, x, got, want]);
    }
  });

  it('gives the gradients of the tfjs ops (x and the norm weight) through the kernel', () => {
    const n = norm();
    const [cos, sin] = ropeTensors(ropeTables([4, 9], D, 1e4));
    const x = tf.tensor3d(values(2 * 3 * D, 5), [2, 3, D]);
    const up = tf.tensor3d(values(2 * 3 * D, 8), [2, 3, D]); // a fixed upstream gradient
    for (const [rope, scale] of [[{ cos, sin }, 1], [{ cos, sin }, 0.3], [undefined, 1]] as const) {
      const loss = (f: typeof normRope) => (a: tf.Tensor, w: tf.Tensor) => tf.sum(tf.mul(f(a, { weight: w as tf.Tensor1D, eps: n.eps }, rope, scale), up));
      const [gx, gw] = tf.grads(loss(normRope))([x, n.weight]);
      const [wx, ww] = tf.grads(loss(normRopeOps))([x, n.weight]);
      expect(maxDiff(gx!, wx!)).toBeLessThan(1e-5);
      expect(maxDiff(gw!, ww!)).toBeLessThan(1e-5);
      tf.dispose([gx!, gw!, wx!, ww!]);
    }
    tf.dispose([cos, sin, x, up, n.weight]);
  });

  it(`leaves blocks over ${NORM_ROPE_MAX_ROWS} rows to the tfjs ops and names bad shapes`, () => {
    const n = norm();
    const x = tf.tensor2d(values((NORM_ROPE_MAX_ROWS + 1) * D, 2), [NORM_ROPE_MAX_ROWS + 1, D]);
    const y = normRope(x, n), want = normRopeOps(x, n);
    expect(maxDiff(y, want)).toBe(0);
    const bad = tf.zeros([1, 8]);
    expect(() => normRope(bad, n)).toThrow('normRope: input [1,8] has 8 features on its last axis, the norm weight has 16');
    tf.dispose([x, y, want, bad, n.weight]);
  });
});

describe('qkvNormRope (fused q/k/v rows -> head-major q, k, v)', () => {
  const D = 16, H = 4, Hkv = 2;
  it('equals split + normRope + head-major reorder (tfjs ops), and names a row width that does not fit', () => {
    const qNorm = { weight: tf.tensor1d(values(D, 3)), eps: 1e-6 }, kNorm = { weight: tf.tensor1d(values(D, 4)), eps: 1e-5 };
    const before = tf.memory().numTensors;
    for (const S of [1, 3]) {
      const [cos, sin] = ropeTensors(ropeTables(Array.from({ length: S }, (_, i) => 5 + 2 * i), D, 1e4));
      const qkv = tf.tensor2d(values(S * (H + 2 * Hkv) * D, 10 + S), [S, (H + 2 * Hkv) * D]);
      const got = qkvNormRope(qkv, qNorm, kNorm, { cos, sin }, H, Hkv, 0.25), want = qkvNormRopeOps(qkv, qNorm, kNorm, { cos, sin }, H, Hkv, 0.25);
      expect([got.q.shape, got.k.shape, got.v.shape]).toEqual([[H, S, D], [Hkv, S, D], [Hkv, S, D]]);
      expect(maxDiff(got.q, want.q)).toBeLessThan(1e-6);
      expect(maxDiff(got.k, want.k)).toBeLessThan(2e-6);
      expect(maxDiff(got.v, want.v)).toBe(0);
      // v is the last 2·D columns, head-major: v[h, s] = qkv[s, (H + Hkv + h)·D ...].
      expect(Array.from(tf.tidy(() => tf.slice(got.v, [1, S - 1, 0], [1, 1, D]).dataSync()))).toEqual(Array.from(tf.tidy(() => tf.slice(qkv, [S - 1, (H + Hkv + 1) * D], [1, D]).dataSync())));
      tf.dispose([cos, sin, qkv, got.q, got.k, got.v, want.q, want.k, want.v]);
    }
    expect(tf.memory().numTensors).toBe(before);
    const [cos, sin] = ropeTensors(ropeTables([0], D, 1e4));
    const bad = tf.zeros([1, 5 * D]) as tf.Tensor2D;
    expect(() => qkvNormRope(bad, qNorm, kNorm, { cos, sin }, H, Hkv)).toThrow('qkvNormRope: rows of 80 features do not hold 4 q heads and 2 × 2 k/v heads of 16');
    tf.dispose([cos, sin, bad, qNorm.weight, kNorm.weight]);
  });
});
