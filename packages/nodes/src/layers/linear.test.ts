import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, unpackBf16 } from '@omniflow/runtime-gpu';
import { disposeLinear, linear, loadLinear, matMulWeight, packWeight, useSimdMatMul, type WeightSource } from './linear.js';

/** Deterministic values in [-2, 2). */
function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2);
}

/** A WeightSource holding one PyTorch-layout [out, in] weight and a bias. */
function source(inF: number, outF: number): WeightSource {
  const w = values(outF * inF, 3), b = values(outF, 5);
  return { get: (name: string) => ({ dtype: 'float32' as const, shape: name.endsWith('bias') ? [outF] : [outF, inF], data: name.endsWith('bias') ? b : w }) } as unknown as WeightSource;
}

beforeAll(async () => {
  await initBackend();
});

describe('linear weights: float32 and packed bf16', () => {
  // 130 inputs and 34 outputs: not multiples of the kernel's vector widths.
  const inF = 130, outF = 34;

  it('a bf16 Linear computes x·bf16(W) + b, within bf16 rounding of the float32 layer, for decode rows and prefill blocks', () => {
    const before = tf.memory().numTensors;
    const f32 = loadLinear(source(inF, outF), 'l', inF, outF, true);
    const bf16 = loadLinear(source(inF, outF), 'l', inF, outF, true, 'bf16');
    expect(f32.weight.dtype).toBe('float32');
    expect(bf16.weight.dtype).toBe('int32');
    expect(bf16.weight.shape).toEqual([inF, outF / 2]);
    for (const rows of [1, 3, 40]) { // 40 rows take the tfjs fallback (unpack per call)
      const x = tf.tensor2d(values(rows * inF, rows), [rows, inF]);
      const outs = tf.tidy(() => {
        const w = unpackBf16(bf16.weight);
        return [linear(x, f32), linear(x, bf16), tf.add(tf.matMul(x, w), bf16.bias!), tf.matMul(tf.abs(x), tf.abs(f32.weight))];
      });
      const [yf, yb, exact, absProducts] = outs.map((t) => t.dataSync() as Float32Array);
      tf.dispose(outs);
      let vsExact = 0;
      for (let i = 0; i < yb!.length; i++) {
        vsExact = Math.max(vsExact, Math.abs(yb![i]! - exact![i]!));
        // |x·(W - bf16(W))| <= Σ|x||W| · 2^-9 (round to nearest: half a bf16 ulp, relative) plus float32 noise.
        expect(Math.abs(yb![i]! - yf![i]!)).toBeLessThanOrEqual(absProducts![i]! * 2 ** -9 + 1e-4);
      }
      expect(vsExact).toBeLessThan(1e-4);
      x.dispose();
    }
    disposeLinear(f32);
    disposeLinear(bf16);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('keeps an odd-width matrix float32 (two bf16 per int32 need an even width)', () => {
    const w = packWeight(values(6, 1), 6, 1, 'bf16');
    expect(w.dtype).toBe('float32');
    expect(w.shape).toEqual([6, 1]);
    w.dispose();
    expect(() => packWeight(values(5, 1), 2, 3, 'bf16')).toThrow('packWeight: 5 values for a [2, 3] matrix');
  });

  it('useSimdMatMul(false) gives the plain tf.matMul product with alpha and bias', () => {
    const x = tf.tensor2d(values(2 * inF, 9), [2, inF]);
    const w = packWeight(values(inF * outF, 4), inF, outF);
    const b = tf.tensor1d(values(outF, 6));
    const kernel = matMulWeight(x, w, { alpha: 0.5, bias: b });
    useSimdMatMul(false);
    let plain: tf.Tensor2D;
    try {
      plain = matMulWeight(x, w, { alpha: 0.5, bias: b });
    } finally {
      useSimdMatMul(true);
    }
    const want = tf.tidy(() => tf.add(tf.mul(tf.matMul(x, w), 0.5), b));
    expect(tf.max(tf.abs(tf.sub(plain, want))).dataSync()[0]).toBe(0);
    expect(tf.max(tf.abs(tf.sub(kernel, want))).dataSync()[0]).toBeLessThan(1e-4);
    tf.dispose([x, w, b, kernel, plain, want]);
  });
});
