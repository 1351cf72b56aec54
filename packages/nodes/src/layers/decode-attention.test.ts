import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { decodeAttention, decodeAttentionApplies } from './decode-attention.js';

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1);
}

/** The definition on the host: query i of S (at position length − S + i) attends causally over the first `length` rows. */
function naive(q: Float32Array, k: Float32Array, v: Float32Array, Hkv: number, R: number, D: number, cap: number, length: number, S: number): Float32Array {
  const out = new Float32Array(Hkv * R * D);
  for (let h = 0; h < Hkv; h++) {
    for (let r = 0; r < R; r++) {
      const seen = length - S + (r % S) + 1;
      const s = Array.from({ length: seen }, (_, t) => {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(h * R + r) * D + d]! * k[(h * cap + t) * D + d]!;
        return dot;
      });
      const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), z = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < D; d++) out[(h * R + r) * D + d] = e.reduce((a, p, t) => a + (p / z) * v[(h * cap + t) * D + d]!, 0);
    }
  }
  return out;
}

beforeAll(async () => {
  await initBackend();
});

describe('decodeAttention (SIMD attention of a few new positions over cache buffers in place)', () => {
  it('equals causal softmax attention over the live prefix for 1-4 queries, head sizes of whole and partial 16-column blocks', () => {
    const before = tf.memory().numTensors;
    for (const [Hkv, groups, S, D, cap, length] of [[2, 8, 1, 128, 120, 101], [8, 2, 2, 128, 17, 2], [1, 3, 4, 20, 9, 7], [3, 1, 1, 4, 5, 1]] as const) {
      expect(decodeAttentionApplies(S, D)).toBe(true);
      const R = groups * S;
      const qv = values(Hkv * R * D, 1 + D), kv = values(Hkv * cap * D, 2 + S), vv = values(Hkv * cap * D, 3 + cap);
      const q = tf.tensor3d(qv, [Hkv, R, D]), k = tf.tensor3d(kv, [Hkv, cap, D]), v = tf.tensor3d(vv, [Hkv, cap, D]);
      const got = decodeAttention(q, k, v, length, S);
      expect(got.shape).toEqual([Hkv, R, D]);
      const want = naive(qv, kv, vv, Hkv, R, D, cap, length, S);
      const y = got.dataSync();
      let max = 0;
      for (let i = 0; i < y.length; i++) max = Math.max(max, Math.abs(y[i]! - want[i]!));
      expect(max).toBeLessThan(2e-6);
      tf.dispose([q, k, v, got]);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('applies to few positions and whole SIMD vectors only, and names buffers that do not fit', () => {
    expect(decodeAttentionApplies(5, 128)).toBe(false);
    expect(decodeAttentionApplies(1, 6)).toBe(false);
    const q = tf.zeros([2, 4, 8]) as tf.Tensor3D, k = tf.zeros([2, 3, 8]) as tf.Tensor3D;
    expect(() => decodeAttention(q, k, k, 5, 1)).toThrow('decodeAttention: q [2,4,8] with 1 queries does not fit k [2,3,8], v [2,3,8] over 5 positions');
    tf.dispose([q, k]);
  });
});
