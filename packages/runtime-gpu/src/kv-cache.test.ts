import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { cachedAttention, KVCache, sessionKVCache } from './kv-cache.js';
import { leakCheck } from './ownership.js';

beforeAll(async () => {
  await initBackend();
});

/** Rows h*1000 + position*10 + d, so any misplaced row shows up in the numbers. */
function rows(heads: number, from: number, n: number, dim: number, sign = 1): tf.Tensor3D {
  const data = new Float32Array(heads * n * dim);
  for (let h = 0; h < heads; h++) for (let t = 0; t < n; t++) for (let d = 0; d < dim; d++) data[(h * n + t) * dim + d] = sign * (h * 1000 + (from + t) * 10 + d);
  return tf.tensor3d(data, [heads, n, dim]);
}

describe.each([true, false])('KVCache (inPlace %s)', (inPlace) => {
  it('appends across growth and returns exactly the concatenation', () => {
    const leaks = leakCheck();
    const cache = new KVCache({ layers: 2, kvHeads: 2, headDim: 3, capacity: 4, inPlace });
    const steps = [3, 1, 1, 4, 1]; // crosses capacity 4 -> 8 -> 16
    let pos = 0;
    for (const n of steps) {
      for (let layer = 0; layer < 2; layer++) {
        const k = rows(2, pos, n, 3), v = rows(2, pos, n, 3, -1);
        const full = cache.append(layer, k, v);
        const wantK = rows(2, 0, pos + n, 3), wantV = rows(2, 0, pos + n, 3, -1);
        expect(full.k.shape).toEqual([2, pos + n, 3]);
        expect(Array.from(full.k.dataSync())).toEqual(Array.from(wantK.dataSync()));
        expect(Array.from(full.v.dataSync())).toEqual(Array.from(wantV.dataSync()));
        tf.dispose([k, v, full.k, full.v, wantK, wantV]);
      }
      pos += n;
    }
    expect(cache.length).toBe(10);
    expect(cache.capacity).toBe(16);
    expect(cache.bytes).toBe(2 * 2 * 2 * 16 * 3 * 4);
    cache.dispose();
    leaks.check('KVCache');
  });

  it('rolls an interrupted turn back and overwrites the stale rows', () => {
    const leaks = leakCheck();
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 2, capacity: 2, inPlace });
    tf.tidy(() => {
      cache.append(0, rows(1, 0, 3, 2), rows(1, 0, 3, 2));
    });
    expect(cache.beginTurn()).toBe(3);
    tf.tidy(() => {
      cache.append(0, rows(1, 100, 2, 2), rows(1, 100, 2, 2));
    });
    expect(cache.length).toBe(5);
    cache.rollback();
    expect(cache.length).toBe(3);
    const out = tf.tidy(() => Array.from(cache.append(0, rows(1, 3, 1, 2), rows(1, 3, 1, 2)).k.dataSync()));
    expect(out).toEqual([0, 1, 10, 11, 20, 21, 30, 31]);
    cache.truncate(1);
    const bufs = cache.buffers(0);
    expect([bufs.length, bufs.capacity]).toEqual([1, 8]); // grew 2 -> 4 -> 8 during the rolled-back turn
    cache.dispose();
    leaks.check('KVCache rollback');
  });

  it('rejects bad shapes, layers and lengths with the expected sizes', () => {
    const cache = new KVCache({ layers: 1, kvHeads: 2, headDim: 4, maxLength: 3 });
    const bad = tf.zeros([2, 1, 5]), ok = tf.zeros([2, 4, 4]);
    expect(() => cache.append(0, bad, bad)).toThrow('k must be float32 [2, newLen, 4], got float32 [2,1,5]');
    expect(() => cache.append(1, ok, ok)).toThrow('layer 1 is out of range [0, 1)');
    expect(() => cache.append(0, ok, ok)).toThrow('4 positions exceed maxLength 3');
    cache.dispose();
    expect(() => cache.append(0, ok, ok)).toThrow('used after dispose');
    tf.dispose([bad, ok]);
  });
});

describe('sessionKVCache', () => {
  it('is released when the node context disposes', () => {
    const disposers: Array<() => void> = [];
    const cache = sessionKVCache({ onDispose: (fn) => disposers.push(fn) }, { layers: 1, kvHeads: 1, headDim: 2 });
    cache.buffers(0);
    expect(cache.bytes).toBeGreaterThan(0);
    disposers.forEach((fn) => fn());
    expect(cache.isDisposed).toBe(true);
  });
});

describe('KVCache on the cpu backend (in-place writes into its value arrays)', () => {
  it('matches the concatenation across growth', async () => {
    await initBackend({ backend: 'cpu' });
    try {
      const leaks = leakCheck();
      const cache = new KVCache({ layers: 1, kvHeads: 2, headDim: 2, capacity: 2 });
      let pos = 0;
      for (const n of [1, 2, 1]) {
        const k = rows(2, pos, n, 2);
        const full = cache.append(0, k, k);
        const want = rows(2, 0, pos + n, 2);
        expect(Array.from(full.k.dataSync())).toEqual(Array.from(want.dataSync()));
        tf.dispose([k, full.k, full.v, want]);
        pos += n;
      }
      expect(cache.capacity).toBe(4);
      cache.dispose();
      leaks.check('KVCache on cpu');
    } finally {
      await initBackend({ backend: 'wasm' });
    }
  });
});

describe('cachedAttention', () => {
  it('equals causal attention over the sliced cache, for GQA and a multi-token prefill', () => {
    const leaks = leakCheck();
    const heads = 4, kvHeads = 2, dim = 8;
    const cache = new KVCache({ layers: 1, kvHeads, headDim: dim, capacity: 4 });
    const rand = (shape: [number, number, number], seed: number) => tf.randomNormal(shape, 0, 1, 'float32', seed) as tf.Tensor3D;
    let seed = 1;
    for (const newLen of [3, 1, 1, 2]) {
      const k = rand([kvHeads, newLen, dim], seed++), v = rand([kvHeads, newLen, dim], seed++), q = rand([heads, newLen, dim], seed++);
      const got = cachedAttention(q, cache.appendInPlace(0, k, v));
      const want = tf.tidy(() => {
        const len = cache.length;
        const { k: K, v: V } = cache.append(0, tf.zeros([kvHeads, 0, dim]), tf.zeros([kvHeads, 0, dim]));
        const Kh = tf.reshape(tf.tile(tf.expandDims(K, 1), [1, heads / kvHeads, 1, 1]), [heads, len, dim]); // head h -> kv head h / groups
        const Vh = tf.reshape(tf.tile(tf.expandDims(V, 1), [1, heads / kvHeads, 1, 1]), [heads, len, dim]);
        const s = tf.mul(tf.matMul(q, Kh, false, true), 1 / Math.sqrt(dim));
        const causal = tf.linalg.bandPart(tf.ones([newLen, len]), -1, len - newLen); // query i sees <= len - newLen + i
        const masked = tf.where(tf.cast(causal, 'bool'), s, tf.fill(s.shape, -Infinity));
        return tf.matMul(tf.softmax(masked), Vh);
      });
      expect(got.shape).toEqual([heads, newLen, dim]);
      const g = got.dataSync(), w = want.dataSync();
      let worst = 0;
      for (let i = 0; i < w.length; i++) worst = Math.max(worst, Math.abs(g[i] - w[i]));
      expect(worst).toBeLessThan(1e-5);
      tf.dispose([k, v, q, got, want]);
    }
    expect([cache.length, cache.capacity]).toEqual([7, 8]);
    cache.dispose();
    leaks.check('cachedAttention');
  });
});
