import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { decodeAttention, decodeAttentionApplies } from './decode-attention.js';

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1);
}

/**
 * The definition on the host: q [H, S, D]; query i of head hh (at position length − S + i) attends causally over the
 * first `length` rows of KV head floor(hh / groups); out [S, H·D].
 */
function naive(q: Float32Array, k: Float32Array, v: Float32Array, H: number, Hkv: number, S: number, D: number, cap: number, length: number): Float32Array {
  const out = new Float32Array(S * H * D);
  for (let hh = 0; hh < H; hh++) {
    const h = Math.floor(hh / (H / Hkv));
    for (let i = 0; i < S; i++) {
      const seen = length - S + i + 1;
      const s = Array.from({ length: seen }, (_, t) => {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(hh * S + i) * D + d]! * k[(h * cap + t) * D + d]!;
        return dot;
      });
      const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), z = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < D; d++) out[(i * H + hh) * D + d] = e.reduce((a, p, t) => a + (p / z) * v[(h * cap + t) * D + d]!, 0);
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
      const H = groups * Hkv;
      const qv = values(H * S * D, 1 + D), kv = values(Hkv * cap * D, 2 + S), vv = values(Hkv * cap * D, 3 + cap);
      const q = tf.tensor3d(qv, [H, S, D]), k = tf.tensor3d(kv, [Hkv, cap, D]), v = tf.tensor3d(vv, [Hkv, cap, D]);
      const got = decodeAttention(q, k, v, length);
      expect(got.shape).toEqual([S, H * D]);
      const want = naive(qv, kv, vv, H, Hkv, S, D, cap, length);
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
    const q = tf.zeros([4, 1, 8]) as tf.Tensor3D, k = tf.zeros([2, 3, 8]) as tf.Tensor3D;
    expect(() => decodeAttention(q, k, k, 5)).toThrow('decodeAttention: q [4,1,8] does not fit k [2,3,8], v [2,3,8] over 5 positions');
    tf.dispose([q, k]);
  });
});
