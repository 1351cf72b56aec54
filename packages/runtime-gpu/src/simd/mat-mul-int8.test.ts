import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend.js';
import { int8PackedShape, int8PaddedK, int8Values, int8WeightShape, isInt8Weight, markInt8Weight, packInt8, packInt8Bits, packInt8BitsOutIn, unpackInt8, type Int8Packing } from './int8.js';
import { matMulInt8, OMNIFLOW_MATMUL_INT8 } from './mat-mul-int8.js';
import { packBf16 } from './bf16.js';
import { buildInt8MatMul, int8MatMulModuleBytes, int8XMax } from './matmul-int8-module.js';
import { MATMUL_EPILOGUE } from './matmul-module.js';
import { webAssembly } from './wasm-emitter.js';
import { lcgValues as values } from '../testing/values.js';

/** Round half to even, as f32x4.nearest. */
function nearest(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The kernel's arithmetic on the host: x rows quantized to int16 exactly as `quantize` does (f32 ops), exact integer
 * dots with the packed weight, then y = sum · sx · alpha · s[n] + b[n] (relu). The kernel must match this to f32
 * rounding, so any wrong index, lane or tail shows.
 */
function quantizedReference(x: Float32Array, M: number, K: number, bits: Int32Array, N: number, alpha: number, bias?: Float32Array, relu = false, packing: Int8Packing = 'rows'): Float32Array {
  const { q, scales } = int8Values(bits, K, N, packing);
  const xmax = int8XMax(K, packing), f = Math.fround;
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(x[m * K + k]!));
    const sx = f(amax / xmax), inv = amax === 0 ? 0 : f(xmax / amax);
    const xq = Int16Array.from({ length: K }, (_, k) => nearest(f(x[m * K + k]! * inv)));
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += xq[k]! * q[n * K + k]!;
      let v = f(f(acc * f(sx * alpha)) * scales[n]!);
      if (bias) v = f(v + bias[n]!);
      y[m * N + n] = relu ? Math.max(0, v) : v;
    }
  }
  return y;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

beforeAll(async () => {
  await initBackend();
  await import('@tensorflow/tfjs-backend-cpu');
});

describe('packInt8', () => {
  it('round-trips within half a column scale, scales per column, zero column, K padded to 16', () => {
    const K = 37, N = 5;
    const w = values(K * N, 11);
    for (let k = 0; k < K; k++) {
      w[k * N + 2] = 0; // an all-zero column: scale 0, values 0
      w[k * N + 4]! *= 1000; // a large column keeps its own scale
    }
    const bits = packInt8Bits(w, K, N);
    expect(int8PaddedK(K)).toBe(48);
    expect(int8PackedShape(K, N)).toEqual([2, 52]); // 2 blocks of 4 outputs (the 8th is padding), 4·48 + 16 bytes each
    expect(bits.length).toBe(2 * 52);
    // the layout itself: q[k, n] at block n/4, piece k/16, lane n%4, byte k%16; then the block's 4 scales
    const bytes = new Int8Array(bits.buffer), f32 = new Float32Array(bits.buffer);
    expect(bytes[1 * 208 + 2 * 64 + 0 * 16 + 3]).toBe(Math.round(w[35 * N + 4]! / f32[(208 + 192) / 4]!)); // q[35, 4]
    expect(f32[(208 + 192 + 4) / 4]).toBe(0); // output 5 is padding: scale 0
    expect(bytes.slice(208 + 16, 208 + 64).every((v) => v === 0)).toBe(true); // and its weights 0
    const { q, scales } = int8Values(bits, K, N);
    for (let n = 0; n < N; n++) {
      let colMax = 0;
      for (let k = 0; k < K; k++) colMax = Math.max(colMax, Math.abs(w[k * N + n]!));
      expect(scales[n]).toBeCloseTo(colMax / 127, 6);
      let hit127 = false;
      for (let k = 0; k < K; k++) {
        const v = q[n * K + k]!;
        expect(Math.abs(w[k * N + n]! - v * scales[n]!)).toBeLessThanOrEqual(scales[n]! / 2 + 1e-7 * Math.abs(w[k * N + n]!));
        hit127 ||= Math.abs(v) === 127;
      }
      expect(hit127).toBe(n !== 2); // the column's largest value maps to ±127
    }
    for (let k = K; k < int8PaddedK(K); k++) expect(bytes[2 * 64 + 16 + (k % 16)]).toBe(0); // K padding of output 1
    expect(scales[2]).toBe(0);
    const packed = packInt8(tf.tensor2d(w, [K, N]));
    expect(packed.shape).toEqual(int8PackedShape(K, N));
    expect(int8WeightShape(packed)).toEqual({ K, N, packing: 'rows' });
    const deq = unpackInt8(packed);
    const d = deq.dataSync();
    for (let i = 0; i < K * N; i++) expect(Math.abs(d[i]! - w[i]!)).toBeLessThanOrEqual(scales[i % N]! / 2 + 1e-7 * Math.abs(w[i]!));
    expect(maxAbs(d.filter((_, i) => i % N === 2))).toBe(0);
    tf.dispose([packed, deq]);
  });

  it('panels: 8 outputs a panel, their k pairs side by side, K padded to 8; the same values and scales as rows', () => {
    const K = 13, N = 11;
    const w = values(K * N, 12);
    const bits = packInt8Bits(w, K, N, 'panels');
    expect(int8PaddedK(K, 'panels')).toBe(16);
    expect(int8PackedShape(K, N, 'panels')).toEqual([2, 40]); // 2 panels of 8 outputs, 8·16 + 32 bytes each
    expect(bits.length).toBe(2 * 40);
    const bytes = new Int8Array(bits.buffer), f32 = new Float32Array(bits.buffer);
    // q[k, n] at panel n/8, pair k/2, output n%8, byte k%2; then the panel's 8 scales
    const s10 = f32[(160 + 128 + 2 * 4) / 4]!; // output 10 = panel 1, lane 2
    expect(bytes[160 + 6 * 16 + 2 * 2 + 0]).toBe(Math.round(w[12 * N + 10]! / s10)); // q[12, 10]
    expect(bytes[160 + 6 * 16 + 2 * 2 + 1]).toBe(0); // k = 13 is padding
    expect(f32[(160 + 128 + 3 * 4) / 4]).toBe(0); // output 11 is padding: scale 0
    const rows = int8Values(packInt8Bits(w, K, N), K, N), panels = int8Values(bits, K, N, 'panels');
    expect(panels.q).toEqual(rows.q);
    expect(panels.scales).toEqual(rows.scales);
    const packed = packInt8(w, K, N, 'in-out', 'panels');
    expect(int8WeightShape(packed)).toEqual({ K, N, packing: 'panels' });
    expect(unpackInt8(packed).dataSync()).toEqual(unpackInt8(packInt8(w, K, N)).dataSync());
    expect(() => markInt8Weight(tf.zeros([2, 40], 'int32') as tf.Tensor2D, K, N)).toThrow(/packed as rows is int32 \[3, 20\], got int32 \[2,40\]/);
    expect(() => int8Values(bits, K, N)).toThrow(/80 int32 words for a \[13, 11\] int8 weight packed as rows \(expected 60\)/);
    packed.dispose();
  });

  it('packs a checkpoint-layout [N, K] array to the same bits as its [K, N] transpose', () => {
    for (const packing of ['rows', 'panels'] as const) {
      for (const [K, N] of [[37, 5], [16, 4], [300, 65]] as const) {
        const w = values(K * N, K + N);
        w[3 * N + 1] = 0.5; // a tie after scaling is as likely as any value; equal arithmetic either way
        const outIn = new Float32Array(K * N);
        for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) outIn[n * K + k] = w[k * N + n]!;
        expect(packInt8BitsOutIn(outIn, K, N, packing)).toEqual(packInt8Bits(w, K, N, packing));
        const t = packInt8(outIn, K, N, 'out-in', packing);
        expect(int8WeightShape(t)).toEqual({ K, N, packing });
        expect(t.dataSync()).toEqual(packInt8Bits(w, K, N, packing));
        t.dispose();
      }
    }
    expect(() => packInt8BitsOutIn(Float32Array.of(1, Infinity), 1, 2)).toThrow(/output 1 of the \[2, 1\] \(out, in\) weight holds a non-finite value/);
  });

  it('marks only its own tensors; bad input is named', () => {
    const bf = packBf16(tf.tensor2d(values(8, 1), [2, 4]));
    expect(isInt8Weight(bf)).toBe(false);
    expect(() => matMulInt8(tf.zeros([1, 2]), bf)).toThrow(/int8 weight from packInt8.*int32 \[2,2\]/);
    expect(() => packInt8Bits(new Float32Array(5), 2, 3)).toThrow(/5 values for a \[2, 3\] weight/);
    expect(() => packInt8Bits(Float32Array.of(1, NaN), 2, 1)).toThrow(/column 0 .* non-finite/);
    expect(() => packInt8(tf.tensor2d([[1, 2]], [1, 2], 'int32'))).toThrow(/float32 \[K, N\], got int32/);
    expect(() => markInt8Weight(tf.zeros([3, 4], 'int32') as tf.Tensor2D, 16, 3)).toThrow(/int32 \[1, 20\], got int32 \[3,4\]/);
    const w = packInt8(tf.tensor2d(values(12, 2), [4, 3]));
    expect(() => matMulInt8(tf.zeros([2, 5]), w)).toThrow(/x's last axis must match W's 4 rows, got x \[2,5\]/);
    expect(() => matMulInt8(tf.zeros([2, 4]), w, { bias: tf.zeros([4]) as tf.Tensor1D })).toThrow(/bias must be float32 \[3\]/);
    expect(() => matMulInt8(tf.zeros([2, 4], 'int32'), w)).toThrow(/x must be float32/);
    expect(() => matMulInt8(tf.zeros([2, 4]), w, { activation: 'gelu' as 'relu' })).toThrow(/activation 'gelu'/);
    w.dispose();
    expect(() => matMulInt8(tf.zeros([2, 4]), w)).toThrow(/disposed/);
    bf.dispose();
  });
});

// Row counts: decode (1, 2, 3 = a 2-row block and a 1-row block), 5, 16, 100 (tiled row blocks); K with tails not a
// multiple of 16 (and below 8, the quantizer's vector step); N odd, below and above a group and a column tile.
const ROWS = [1, 2, 3, 5, 16, 100];
const SHAPES: Array<[number, number]> = [[1, 1], [7, 3], [16, 4], [37, 9], [300, 65], [1000, 131], [4099, 7]];

describe.each(['wasm', 'cpu'])('matMulInt8 on %s', (backend) => {
  beforeAll(async () => {
    await tf.setBackend(backend);
  });

  it.each(['rows', 'panels'] as const)('%s: is within the quantization bound of the float product, for every row count and odd K, N', (packing) => {
    const start = tf.memory().numTensors;
    for (const M of ROWS) {
      for (const [K, N] of SHAPES) {
        if (M * K * N > 4e6) continue; // keeps the test fast; [100, 4099, 7] is covered at 16 rows
        const xs = values(M * K, M * 31 + K), ws = values(K * N, K * 7 + N), bs = values(N, N + 3);
        tf.tidy(() => {
          const x = tf.tensor2d(xs, [M, K]), w = tf.tensor2d(ws, [K, N]), b = tf.tensor1d(bs);
          const packed = packInt8(w, undefined, undefined, 'in-out', packing);
          const got = matMulInt8(x, packed, { bias: b, alpha: 0.75 }).dataSync();
          const exact = tf.add(tf.mul(tf.matMul(x, w), tf.scalar(0.75)), b).dataSync();
          // |Σ x̂·Ŵ - x·W| <= Σ |x|·s[n]/2 + Σ |W[:, n]|·sx/2 (per weight and per x rounding), times alpha, + f32 slack
          const { scales } = int8Values(packed.dataSync() as Int32Array, K, N, packing);
          let errSq = 0, refSq = 0;
          for (let m = 0; m < M; m++) {
            let sumX = 0, amax = 0;
            for (let k = 0; k < K; k++) {
              sumX += Math.abs(xs[m * K + k]!);
              amax = Math.max(amax, Math.abs(xs[m * K + k]!));
            }
            const sx = backend === 'wasm' ? amax / int8XMax(K, packing) : 0;
            for (let n = 0; n < N; n++) {
              let sumW = 0;
              for (let k = 0; k < K; k++) sumW += Math.abs(ws[k * N + n]!);
              const bound = 0.75 * (sumX * (scales[n]! / 2) + sumW * (sx / 2)) + 1e-5 * (1 + sumX);
              const e = Math.abs(got[m * N + n]! - exact[m * N + n]!);
              expect(e, `M=${M} K=${K} N=${N} at [${m}, ${n}]`).toBeLessThanOrEqual(bound);
              errSq += e * e;
              refSq += (exact[m * N + n]! - bs[n]!) ** 2;
            }
          }
          // Rounding errors are independent, so the error is a few % of the product's size; a wrong index, lane or
          // tail would be of the product's own size.
          if (K >= 37) expect(Math.sqrt(errSq / refSq), `relative rms M=${M} K=${K} N=${N}`).toBeLessThan(0.03);
        });
      }
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  it.each(['rows', 'panels'] as const)('%s: relu, alpha, no bias, leading axes, an all-zero x row, zero columns', (packing) => {
    const start = tf.memory().numTensors;
    tf.tidy(() => {
      const K = 50, N = 6;
      const ws = values(K * N, 5);
      for (let k = 0; k < K; k++) ws[k * N + 1] = 0;
      const xs = values(2 * 3 * K, 9);
      xs.fill(0, K, 2 * K); // row 1 is all zero
      const packed = packInt8(ws, K, N, 'in-out', packing);
      const x = tf.tensor3d(xs, [2, 3, K]);
      const y = matMulInt8(x, packed, { alpha: -2, activation: 'relu' });
      expect(y.shape).toEqual([2, 3, N]);
      const exact = tf.relu(tf.mul(tf.matMul(tf.reshape(x, [6, K]) as tf.Tensor2D, unpackInt8(packed)), tf.scalar(-2))).dataSync();
      const got = y.dataSync();
      for (let i = 0; i < 6 * N; i++) expect(Math.abs(got[i]! - exact[i]!)).toBeLessThanOrEqual(1e-3 * (1 + Math.abs(exact[i]!)));
      expect([...got.slice(N, 2 * N)]).toEqual(new Array(N).fill(0)); // the zero row
      for (let m = 0; m < 6; m++) expect(got[m * N + 1]).toBe(0); // the zero column
      expect(got.filter((v) => v === 0).length).toBeGreaterThan(6 * N * 0.3); // relu clipped about half
      expect(got.some((v) => v > 0.5)).toBe(true);
    });
    expect(tf.memory().numTensors).toBe(start);
  });
});

describe('matMulInt8: wasm and cpu agree', () => {
  it('to within x\'s int16 rounding (the cpu fallback multiplies float x by the same dequantized W)', async () => {
    const M = 3, K = 300, N = 37;
    const xs = values(M * K, 21), ws = values(K * N, 22), bs = values(N, 23);
    const bits = packInt8Bits(ws, K, N);
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      return tf.tidy(() => {
        const packed = markInt8Weight(tf.tensor2d(bits, int8PackedShape(K, N), 'int32'), K, N);
        return matMulInt8(tf.tensor2d(xs, [M, K]), packed, { bias: tf.tensor1d(bs), alpha: 1.5 }).dataSync();
      });
    };
    const [onWasm, onCpu] = [await run('wasm'), await run('cpu')];
    await tf.setBackend('wasm');
    const { q, scales } = int8Values(bits, K, N);
    for (let m = 0; m < M; m++) {
      const amax = maxAbs(xs.subarray(m * K, (m + 1) * K)), sx = amax / int8XMax(K);
      for (let n = 0; n < N; n++) {
        let sumW = 0;
        for (let k = 0; k < K; k++) sumW += Math.abs(q[n * K + k]! * scales[n]!);
        // each x value is off by at most sx/2 on wasm; plus f32 summation noise
        expect(Math.abs(onWasm[m * N + n]! - onCpu[m * N + n]!)).toBeLessThanOrEqual(1.5 * sumW * (sx / 2) + 1e-5);
      }
    }
    // and they are not trivially equal: the difference is x's rounding, small but present
    expect(maxAbs(onWasm.map((v, i) => v - onCpu[i]!))).toBeGreaterThan(0);
  });
});

describe('int8 kernel specifics (wasm)', () => {
  beforeAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each(['rows', 'panels'] as const)('%s: matches the quantized arithmetic done on the host to f32 rounding (every group, row block and tail)', (packing) => {
    for (const [M, K, N] of [[1, 4099, 7], [3, 37, 9], [5, 300, 65], [16, 17, 131], [100, 33, 70], [7, 672, 96]] as const) {
      const xs = values(M * K, M + K), ws = values(K * N, K + N), bs = values(N, 77);
      const bits = packInt8Bits(ws, K, N, packing);
      const want = quantizedReference(xs, M, K, bits, N, 0.5, bs, true, packing);
      const got = tf.tidy(() => {
        const packed = markInt8Weight(tf.tensor2d(bits, int8PackedShape(K, N, packing), 'int32'), K, N, packing);
        return matMulInt8(tf.tensor2d(xs, [M, K]), packed, { bias: tf.tensor1d(bs), alpha: 0.5, activation: 'relu' }).dataSync();
      });
      // the kernel sums the four i32 lanes in f32 (exact on the host): a few ulps of the row's scale apart
      let worst = 0;
      for (let i = 0; i < M * N; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
      expect(worst / maxAbs(want), `M=${M} K=${K} N=${N}`).toBeLessThan(1e-6);
      expect(maxAbs(want)).toBeGreaterThan(0.1);
    }
  });

  it.each(['rows', 'panels'] as const)('%s: a non-finite x gives NaN outputs for its row, in the vector part and the scalar tail alike (no trap)', (packing) => {
    const K = 11, N = 4; // 8 values in the quantizer's vector step, 3 in its scalar tail
    const packed = packInt8(values(K * N, 8), K, N, 'in-out', packing);
    for (const [at, v] of [[2, NaN], [9, NaN], [10, Infinity], [1, -Infinity], [0, NaN]] as const) {
      const xs = values(2 * K, 3);
      xs[at] = v;
      const y = tf.tidy(() => matMulInt8(tf.tensor2d(xs, [2, K]), packed).dataSync());
      expect([...y.slice(0, N)].every(Number.isNaN), `x[0, ${at}] = ${v}`).toBe(true);
      expect([...y.slice(N)].every(Number.isFinite)).toBe(true); // the other row is untouched
    }
    packed.dispose();
  });

  it.each(['rows', 'panels'] as const)('%s: accumulates without overflow at the largest x the K allows (every lane at its bound)', (packing) => {
    // x all at ±max and W all at ±127 with matching signs: every product is 127·xmax, the i32 sum is at its limit.
    for (const M of [1, 5]) {
      const K = 8192, N = 9;
      const xs = new Float32Array(M * K).fill(3);
      const ws = new Float32Array(K * N).fill(-1);
      const got = tf.tidy(() => matMulInt8(tf.tensor2d(xs, [M, K]), packInt8(ws, K, N, 'in-out', packing)).dataSync());
      for (const v of got) expect(v / (-3 * K)).toBeCloseTo(1, 5);
    }
  });

  it('frees its scratch and leaves no tensor behind', () => {
    const before = tf.memory().numTensors;
    const bytesBefore = tf.memory().numBytes;
    tf.tidy(() => {
      const packed = packInt8(tf.tensor2d(values(64 * 40, 1), [64, 40]));
      const panels = packInt8(values(64 * 40, 1), 64, 40, 'in-out', 'panels');
      for (const M of [1, 2, 7]) matMulInt8(tf.ones([M, 64]), packed);
      for (const M of [1, 5, 9]) matMulInt8(tf.ones([M, 64]), panels);
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(tf.memory().numBytes).toBe(bytesBefore);
    expect(tf.getKernel(OMNIFLOW_MATMUL_INT8, 'wasm')).toBeDefined();
  });

  it('the registered kernel checks its N attr against the packed weight (runKernel callers pass it)', () => {
    const packed = packInt8(tf.tensor2d(values(32 * 6, 1), [32, 6]));
    const x = tf.ones([1, 32]);
    expect(() => tf.engine().runKernel(OMNIFLOW_MATMUL_INT8, { x, w: packed }, { alpha: 1, activation: 'linear' })).toThrow(/attr N = undefined and packed w \[2,36\]/);
    expect(() => tf.engine().runKernel(OMNIFLOW_MATMUL_INT8, { x, w: packed }, { N: 9, alpha: 1, activation: 'linear' })).toThrow(/attr N = 9/);
    const y = tf.engine().runKernel(OMNIFLOW_MATMUL_INT8, { x, w: packed }, { N: 6, alpha: 1, activation: 'linear' }) as tf.Tensor;
    expect(y.shape).toEqual([1, 6]);
    tf.dispose([packed, x, y]);
  });

  it('runs over any WebAssembly.Memory (quantize, then one row block)', () => {
    const memory = new (webAssembly().Memory)({ initial: 2 });
    const k = buildInt8MatMul(memory);
    expect(int8MatMulModuleBytes().length).toBeLessThan(20000);
    const K = 20, Kp = 32, N = 5;
    const ws = values(K * N, 3), xs = values(K, 4);
    const bits = packInt8Bits(ws, K, N);
    new Int32Array(memory.buffer, 4096, bits.length).set(bits);
    new Float32Array(memory.buffer, 0, K).set(xs);
    const after = new Float32Array(memory.buffer, 8192 + 4 * N, 3).fill(7); // past y's end: the padding output's slot
    k.quantize(0, 1, K, 1, 0, Kp, int8XMax(K), 1024, 2048);
    k.rows[1]!(1024, 2048, 4096, 0, 8192, Kp, N, 0, N, 1, MATMUL_EPILOGUE.none);
    expect([...after]).toEqual([7, 7, 7]);
    const want = quantizedReference(xs, 1, K, bits, N, 1);
    const got = new Float32Array(memory.buffer, 8192, N);
    for (let n = 0; n < N; n++) expect(got[n]).toBeCloseTo(want[n]!, 5);
    // the quantized row: int16 within xmax, zero padded to Kp
    const xq = new Int16Array(memory.buffer, 1024, Kp);
    expect(Math.max(...[...xq].map(Math.abs))).toBe(int8XMax(K));
    expect([...xq.slice(K)]).toEqual(new Array(Kp - K).fill(0));
    // the same row against the 'panels' packing: its own xmax and Kp
    const pBits = packInt8Bits(ws, K, N, 'panels'), pKp = int8PaddedK(K, 'panels');
    new Int32Array(memory.buffer, 4096, pBits.length).set(pBits);
    k.quantize(0, 1, K, 1, 0, pKp, int8XMax(K, 'panels'), 1024, 2048);
    k.panels[1]!(1024, 2048, 4096, 0, 8192, pKp, N, 0, N, 1, MATMUL_EPILOGUE.none);
    expect([...after]).toEqual([7, 7, 7]);
    const pWant = quantizedReference(xs, 1, K, pBits, N, 1, undefined, false, 'panels');
    for (let n = 0; n < N; n++) expect(got[n]).toBeCloseTo(pWant[n]!, 5);
  });

  it('quantizes im2col rows gathered as taps: the same integers and scales as the plain rows of the im2col matrix', () => {
    const memory = new (webAssembly().Memory)({ initial: 4 });
    const k = buildInt8MatMul(memory);
    for (const [C, taps, d] of [[8, 3, 1], [13, 7, 3], [5, 2, 9]] as const) { // C = 13 and 5 exercise the scalar tail
      const L = 6, rows = L + (taps - 1) * d, K = taps * C, Kp = int8PaddedK(K), xmax = int8XMax(K);
      const xs = values(rows * C, C + taps);
      new Float32Array(memory.buffer, 0, rows * C).set(xs);
      // the im2col matrix on the host, quantized as plain rows
      const cols = new Float32Array(L * K);
      for (let l = 0; l < L; l++) for (let t = 0; t < taps; t++) cols.set(xs.subarray((l + t * d) * C, (l + t * d + 1) * C), l * K + t * C);
      new Float32Array(memory.buffer, 65536, L * K).set(cols);
      k.quantize(0, L, C, taps, d * C * 4, Kp, xmax, 131072, 196608);
      const gathered = new Int16Array(memory.buffer, 131072, L * Kp).slice(), gScales = new Float32Array(memory.buffer, 196608, L).slice();
      k.quantize(65536, L, K, 1, 0, Kp, xmax, 131072, 196608);
      expect(gathered).toEqual(new Int16Array(memory.buffer, 131072, L * Kp));
      expect(gScales).toEqual(new Float32Array(memory.buffer, 196608, L));
      expect(Math.max(...[...gathered].map(Math.abs))).toBe(xmax);
    }
  });
});
