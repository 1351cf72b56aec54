import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, int8WeightShape, isInt8Weight, unpackBf16, unpackInt8 } from '@omniflow/runtime-gpu';
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

  it('an int8 Linear computes x·dequant(W) + b, within the quantization bound of the float32 layer, any rows', () => {
    const before = tf.memory().numTensors;
    const f32 = loadLinear(source(inF, outF), 'l', inF, outF, true);
    const int8 = loadLinear(source(inF, outF), 'l', inF, outF, true, 'int8');
    expect(isInt8Weight(int8.weight)).toBe(true);
    expect(int8WeightShape(int8.weight)).toEqual({ K: inF, N: outF, packing: 'rows' });
    expect(int8.weight.shape).toEqual([9, 148]); // 34 outputs in 9 blocks of 4; 130 inputs padded to 144, then 4 scales
    const w = f32.weight.dataSync() as Float32Array;
    const colMax = Array.from({ length: outF }, (_, n) => Math.max(...Array.from({ length: inF }, (_, k) => Math.abs(w[k * outF + n]!))));
    for (const rows of [1, 3, 40]) {
      const x = tf.tensor3d(values(rows * 2 * inF, rows + 11), [rows, 2, inF]); // leading axes kept
      const outs = tf.tidy(() => [linear(x, f32), linear(x, int8), tf.add(tf.matMul(tf.reshape(x, [-1, inF]) as tf.Tensor2D, unpackInt8(int8.weight)), int8.bias!)]);
      expect(outs[1]!.shape).toEqual([rows, 2, outF]);
      const [yf, y8, deq] = outs.map((t) => t.dataSync() as Float32Array);
      const xs = x.dataSync();
      let errSq = 0, refSq = 0;
      for (let i = 0; i < y8!.length; i++) {
        const m = Math.floor(i / outF), n = i % outF;
        let sumX = 0, maxX = 0;
        for (let k = 0; k < inF; k++) {
          sumX += Math.abs(xs[m * inF + k]!);
          maxX = Math.max(maxX, Math.abs(xs[m * inF + k]!));
        }
        // per weight half a step (colMax/254) times |x|, plus x's own int16 rounding (max|x| / 2·32767 per value)
        const bound = sumX * (colMax[n]! / 254) + (maxX / 65534) * inF * colMax[n]! + 1e-4;
        expect(Math.abs(y8![i]! - yf![i]!)).toBeLessThanOrEqual(bound);
        expect(Math.abs(y8![i]! - deq![i]!)).toBeLessThanOrEqual((maxX / 65534) * inF * colMax[n]! + 1e-4);
        errSq += (y8![i]! - yf![i]!) ** 2;
        refSq += yf![i]! ** 2;
      }
      // uniform weights: step/sqrt(12) per weight against rms(W) = max/sqrt(3), i.e. about 0.45% of the product
      expect(Math.sqrt(errSq / refSq)).toBeLessThan(0.01);
      tf.dispose([x, ...outs]);
    }
    disposeLinear(f32);
    disposeLinear(int8);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('matMulWeight: an int8 weight goes to the int8 kernel even though it is int32 (bf16 is the unmarked int32)', () => {
    const x = tf.tensor2d(values(2 * 64, 1), [2, 64]);
    const w8 = packWeight(values(64 * 4, 2), 64, 4, 'int8'); // int32 [1, 68]: read as bf16, a [1, 136] weight
    const w16 = packWeight(values(64 * 4, 2), 64, 4, 'bf16'); // int32 [64, 2]
    const y8 = matMulWeight(x, w8, { alpha: 2 });
    const y16 = matMulWeight(x, w16, { alpha: 2 });
    expect(y8.shape).toEqual([2, 4]);
    expect(tf.max(tf.abs(tf.sub(y8, y16))).dataSync()[0]).toBeLessThan(0.1 * tf.max(tf.abs(y16)).dataSync()[0]!);
    // a copy of the int8 tensor is not marked: it is read as bf16 and its shape does not fit x
    const copy = tf.clone(w8);
    expect(() => matMulWeight(x, copy)).toThrow(/matMulBf16: x's last axis must match W's 1 rows/);
    tf.dispose([x, w8, w16, y8, y16, copy]);
  });
});
