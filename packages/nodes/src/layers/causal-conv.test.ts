import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, int8WeightShape, isInt8Weight, matMulInt8, packInt8, type Checkpoint } from '@omniflow/runtime-gpu';
import { causalConv1d, disposeConv, im2col, im2colInt8, im2colInt8Applies, loadCausalConv1d } from './causal-conv.js';
import { StreamState } from './stream-state.js';

/** A checkpoint stand-in holding one conv's weight ([out, in, k]) and bias, deterministic pseudo-random values. */
function convCheckpoint(inC: number, outC: number, k: number, seed: number): Checkpoint {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296 - 0.5);
  const w = Float32Array.from({ length: outC * inC * k }, rand), b = Float32Array.from({ length: outC }, rand);
  return { get: (name: string) => ({ dtype: 'float32', shape: [], data: name.endsWith('bias') ? b : w }) } as unknown as Checkpoint;
}

const relRms = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) [num, den] = [num + (a[i] - b[i]) ** 2, den + b[i] ** 2];
  return Math.sqrt(num / den);
};

describe('causalConv1d with int8 weights (im2col + int8 product)', () => {
  beforeAll(async () => {
    await initBackend();
  });

  it('im2col (the wasm heap-copy kernel) puts the k dilated shifts side by side', () => {
    const before = tf.memory().numTensors;
    expect(tf.getBackend()).toBe('wasm');
    const C = 5, d = 3, k = 4, L = 9;
    const data = Float32Array.from({ length: (L + (k - 1) * d) * C }, (_, i) => i);
    const got = tf.tidy(() => im2col(tf.tensor2d(data, [L + (k - 1) * d, C]), k, d).arraySync());
    expect(got.length).toBe(L);
    got.forEach((row, l) => expect(row).toEqual(Array.from({ length: k * C }, (_, j) => data[(l + Math.floor(j / C) * d) * C + (j % C)])));
    expect(() => tf.tidy(() => im2col(tf.zeros([8, 2]) as tf.Tensor2D, 4, 3))).toThrow(/8 rows are fewer than the 9 of left context a k 4, dilation 3 conv needs/);
    expect(tf.memory().numTensors).toBe(before);
  });

  // 24 channels: K = 7·24 = 168 is not a multiple of 16 (padded), 20 outputs a multiple of the 4-output blocks; 5 → 3
  // leaves a partial block.
  it.each([
    [24, 20, 7, 1, 'rows'], [24, 20, 7, 3, 'rows'], [5, 3, 7, 9, 'rows'], [24, 20, 1, 1, 'rows'],
    [24, 20, 7, 3, 'panels'], [5, 3, 7, 9, 'panels'], [24, 20, 1, 1, 'panels'],
  ] as const)('in %i, out %i, k %i, dilation %i, %s: within the int8 bound of float32, and chunked streaming equals the whole', (inC, outC, k, d, packing) => {
    const before = tf.memory().numTensors;
    const f32 = loadCausalConv1d(convCheckpoint(inC, outC, k, 3), 'c', inC, outC, k, d);
    const q = loadCausalConv1d(convCheckpoint(inC, outC, k, 3), 'c', inC, outC, k, d, 'int8', packing);
    expect(int8WeightShape(k === 1 ? q.pointwise! : q.im2col!)?.packing).toBe(packing);
    expect(isInt8Weight(k === 1 ? q.pointwise! : q.im2col!)).toBe(true);
    expect(q.filter).toBeUndefined();
    const L = 40;
    const x = tf.randomNormal([1, L, inC], 0, 1, 'float32', 9) as tf.Tensor3D;
    const want = tf.tidy(() => causalConv1d(x, f32).dataSync());
    const got = tf.tidy(() => causalConv1d(x, q).dataSync());
    expect(got.length).toBe(L * outC);
    // Per-column int8 weights and per-row int16 x: a few tenths of a percent (a wrong tap order would be ~100%).
    expect(relRms(got, want)).toBeLessThan(0.01);
    expect(relRms(got, want)).toBeGreaterThan(0); // it really ran int8
    // Streamed in uneven chunks with the left context carried: each output row is one product row, so identical.
    const state = new StreamState();
    const pieces: number[] = [];
    let at = 0;
    for (const n of [1, 7, 2, 13, 17]) {
      const chunk = tf.slice(x, [0, at, 0], [1, n, inC]);
      const y = causalConv1d(chunk, q, state, 'c');
      pieces.push(...y.dataSync());
      tf.dispose([chunk, y]);
      state.commit();
      at += n;
    }
    state.dispose();
    expect(pieces).toEqual([...got]);
    tf.dispose(x);
    disposeConv(f32);
    disposeConv(q);
    expect(tf.memory().numTensors).toBe(before);
  });

  // 8 channels x k 7: K = 56 padded to 64; 5 outputs leave a partial 4-output block; 96 x 7 at dilation 9 is Code2Wav's
  // last block; 13 channels leave a tail in every tap. Rows 3-12 of x are zero (a zero im2col row: scale 0), one row is
  // large (a wide per-row range).
  it.each([
    [8, 5, 7, 3, true, 'rows'], [96, 96, 7, 9, false, 'rows'], [16, 12, 3, 1, true, 'rows'], [13, 11, 7, 2, true, 'rows'],
    [8, 5, 7, 3, true, 'panels'], [96, 96, 7, 9, false, 'panels'], [13, 11, 7, 2, true, 'panels'],
  ] as const)('im2colInt8 (fused im2col + quantize) equals matMulInt8(im2col(x)) bit for bit: C %i, N %i, k %i, d %i, bias %s, %s', (C, N, k, d, withBias, packing) => {
    const before = tf.memory().numTensors;
    const rows = 50 + (k - 1) * d;
    const data = tf.tidy(() => tf.randomNormal([rows, C], 0, 1, 'float32', 5).dataSync() as Float32Array);
    data.fill(0, 3 * C, 13 * C);
    for (let c = 0; c < C; c++) data[30 * C + c] *= 1000;
    const x = tf.tensor2d(data, [rows, C]);
    const w = tf.tidy(() => packInt8(tf.randomNormal([k * C, N], 0, 0.1, 'float32', 6).dataSync() as Float32Array, k * C, N, 'in-out', packing));
    const bias = withBias ? tf.randomNormal([N], 0, 1, 'float32', 7) as tf.Tensor1D : undefined;
    expect(im2colInt8Applies(x, w)).toBe(true);
    const want = tf.tidy(() => matMulInt8(im2col(x, k, d), w, { bias }).dataSync());
    const got = tf.tidy(() => im2colInt8(x, w, k, d, bias).dataSync());
    expect(got.length).toBe(50 * N);
    expect([...got]).toEqual([...want]);
    expect(() => tf.tidy(() => im2colInt8(x, w, k + 1, d))).toThrow(/int8 \[\d+, N\] weight for k \d+ over \d+ channels/);
    tf.dispose([x, w, ...(bias ? [bias] : [])]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
