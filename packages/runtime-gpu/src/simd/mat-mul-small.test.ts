import v8 from 'node:v8';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend.js';
import { packBf16, unpackBf16 } from './bf16.js';
import { BLOCKED_MIN_ROWS, heapImportLimits, matMulBf16, matMulSmall, OMNIFLOW_MATMUL, OMNIFLOW_MATMUL_BF16, SIMD_MATMUL_MAX_ROWS, simdMatMulMaxRows } from './mat-mul-small.js';
import { BLOCKED_FMA_VARIANT, BLOCKED_VARIANT, blockedMatMulModuleBytes, blockedScratchBytes, buildBlockedMatMul, type BlockedMatMulVariant } from './matmul-blocked-module.js';
import { buildMatMulModule, DEFAULT_VARIANT, FMA_VARIANT, MATMUL_EPILOGUE, type MatMulVariant } from './matmul-module.js';
import { webAssembly, WasmModuleBuilder, type WasmMemoryLike } from './wasm-emitter.js';
import { lcgValues as values, maxAbsDiff } from '../testing/values.js';

/** relaxedSimdAvailable() caches its answer; this asks the engine again. */
function relaxedSimdAvailableNow(): boolean {
  const m = new WasmModuleBuilder();
  m.func('madd', { params: ['v128', 'v128', 'v128'], results: ['v128'] }, (c, [a, b, d]) => c.localGet(a!).localGet(b!).localGet(d!).f32x4RelaxedMadd());
  return (webAssembly() as unknown as { validate(bytes: Uint8Array): boolean }).validate(m.encode());
}

/** tf.matMul and plain ops, the definition matMulSmall must agree with. */
function expected(x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D | undefined, alpha: number, relu: boolean): tf.Tensor2D {
  return tf.tidy(() => {
    let y: tf.Tensor2D = tf.mul(tf.matMul(x, w), tf.scalar(alpha));
    if (bias) y = tf.add(y, bias);
    return relu ? tf.relu(y) : y;
  });
}

// 1-3: the streaming row kernels; 4-16: the register-blocked kernel (full and partial row blocks); 17: tf.matMul.
const ROWS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17];
// K, N with tails that are not multiples of 4 / 8 / the unrolls, and N above one column block (2048).
const SHAPES: Array<[number, number]> = [[1, 1], [3, 17], [17, 3], [130, 1000], [1000, 130], [1000, 17], [17, 1000], [7, 2501], [4099, 37]];

beforeAll(async () => {
  await initBackend();
  await import('@tensorflow/tfjs-backend-cpu');
  // tfjs-core alone registers no gradient functions; the reference chains (and the loss) need them.
  await import('@tensorflow/tfjs-core/dist/register_all_gradients.js');
});

describe.each(['wasm', 'cpu'])('matMulSmall on %s', (backend) => {
  beforeAll(async () => {
    await tf.setBackend(backend);
  });

  it('equals tf.matMul (+ alpha, bias, relu) for every row count and odd K, N', () => {
    const start = tf.memory().numTensors;
    let checked = 0;
    for (const M of ROWS) {
      for (const [K, N] of SHAPES) {
        tf.tidy(() => {
          const x = tf.tensor2d(values(M * K, M + K), [M, K]);
          const w = tf.tensor2d(values(K * N, K * 7 + N), [K, N]);
          const b = tf.tensor1d(values(N, N + 3));
          const tol = 2e-6 * Math.sqrt(K) + 1e-6;
          expect(maxAbsDiff(matMulSmall(x, w), tf.matMul(x, w)), `plain M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(tol);
          const fancy = matMulSmall(x, w, { bias: b, alpha: 0.75, activation: 'relu' });
          expect(maxAbsDiff(fancy, expected(x, w, b, 0.75, true)), `fused M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(tol);
          expect(maxAbsDiff(matMulSmall(x, w, { alpha: -2 }), expected(x, w, undefined, -2, false))).toBeLessThanOrEqual(2 * tol);
          // relu really clips something: about half the outputs are zero
          const zeros = (fancy.dataSync() as Float32Array).filter((v) => v === 0).length;
          if (M * N >= 100) expect(zeros / (M * N)).toBeGreaterThan(0.3);
        });
        checked++;
      }
    }
    expect(checked).toBe(ROWS.length * SHAPES.length);
    expect(tf.memory().numTensors).toBe(start);
  });

  it('keeps leading axes and accepts a rank-1 x', () => {
    tf.tidy(() => {
      const w = tf.tensor2d(values(6 * 10, 1), [6, 10]);
      const x3 = tf.tensor3d(values(2 * 3 * 6, 2), [2, 3, 6]);
      const y3 = matMulSmall(x3, w);
      expect(y3.shape).toEqual([2, 3, 10]);
      expect(maxAbsDiff(y3, tf.reshape(tf.matMul(tf.reshape(x3, [6, 6]), w), [2, 3, 10]))).toBeLessThan(1e-6);
      const y1 = matMulSmall(tf.tensor1d(values(6, 3)), w);
      expect(y1.shape).toEqual([10]);
    });
  });

  it('bf16 kernel equals the float32 kernel on the unpacked weight', () => {
    const start = tf.memory().numTensors;
    for (const M of [1, 3, 4, 5, 8, 13, 17]) {
      for (const [K, N] of [[1, 2], [17, 6], [130, 1000], [1000, 18], [5, 2502]] as Array<[number, number]>) {
        tf.tidy(() => {
          const x = tf.tensor2d(values(M * K, M * 31 + K), [M, K]);
          const packed = packBf16(tf.tensor2d(values(K * N, K + N * 5), [K, N]));
          const b = tf.tensor1d(values(N, 9));
          const w = unpackBf16(packed);
          const tol = 2e-6 * Math.sqrt(K) + 1e-6;
          expect(maxAbsDiff(matMulBf16(x, packed), matMulSmall(x, w)), `M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(tol);
          const opts = { bias: b, alpha: 1.5, activation: 'relu' } as const;
          expect(maxAbsDiff(matMulBf16(x, packed, opts), expected(x, w, b, 1.5, true))).toBeLessThanOrEqual(2 * tol);
        });
      }
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  it('has gradients equal to tf.matMul chains (x, W, bias; linear and relu, alpha)', () => {
    const start = tf.memory().numTensors;
    for (const [M, relu] of [[1, false], [3, true], [8, false], [11, true], [20, true]] as Array<[number, boolean]>) {
      tf.tidy(() => {
        const K = 19, N = 13;
        const x = tf.tensor2d(values(M * K, 5 + M), [M, K]);
        const w = tf.tensor2d(values(K * N, 6), [K, N]);
        const b = tf.tensor1d(values(N, 7));
        const r = tf.tensor2d(values(M * N, 8), [M, N]); // a loss that weighs each output differently
        const activation = relu ? 'relu' : 'linear';
        const ours = tf.grads((xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => tf.sum(tf.mul(matMulSmall(xx, ww as tf.Tensor2D, { bias: bb as tf.Tensor1D, alpha: 0.5, activation }), r)))([x, w, b]);
        const ref = tf.grads((xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => tf.sum(tf.mul(expected(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D, 0.5, relu), r)))([x, w, b]);
        for (let i = 0; i < 3; i++) {
          expect(maxAbsDiff(ours[i]!, ref[i]!), `grad ${['x', 'W', 'bias'][i]} M=${M} relu=${relu}`).toBeLessThan(1e-5);
          expect(tf.max(tf.abs(ref[i]!)).dataSync()[0]).toBeGreaterThan(0.01);
        }
      });
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  it('names the shapes when they do not fit', () => {
    tf.tidy(() => {
      const w = tf.zeros([4, 6]) as tf.Tensor2D;
      expect(() => matMulSmall(tf.zeros([1, 5]), w)).toThrow(/matMulSmall: x's last axis must match W's 4 rows, got x \[1,5\] and W \[4, 6\]/);
      expect(() => matMulSmall(tf.zeros([1, 4]), w, { bias: tf.zeros([5]) as tf.Tensor1D })).toThrow(/bias must be float32 \[6\].*got float32 \[5\]/);
      expect(() => matMulSmall(tf.zeros([1, 4]), w, { activation: 'gelu' as 'relu' })).toThrow(/activation 'gelu' is not one of linear, relu/);
      expect(() => matMulBf16(tf.zeros([1, 4]), w)).toThrow(/packed bf16, int32 \[K, N\/2\].*got float32 \[4,6\]/);
      expect(() => packBf16(tf.zeros([2, 3]) as tf.Tensor2D)).toThrow(/even number of columns/);
    });
  });
});

describe('SIMD kernel specifics (wasm)', () => {
  beforeAll(async () => {
    await tf.setBackend('wasm');
  });

  it('runs the f32 kernels up to SIMD_MATMUL_MAX_ROWS rows and tf.matMul above; the bf16 kernel for any rows', async () => {
    const w = tf.ones([8, 8]) as tf.Tensor2D;
    const kernels = async (rows: number) => (await tf.profile(() => matMulSmall(tf.ones([rows, 8]), w))).kernelNames;
    expect(await kernels(1)).toContain(OMNIFLOW_MATMUL);
    const limit = simdMatMulMaxRows();
    expect(limit).toBe(SIMD_MATMUL_MAX_ROWS);
    expect(limit).toBe(16);
    expect(await kernels(BLOCKED_MIN_ROWS)).toContain(OMNIFLOW_MATMUL);
    expect(await kernels(limit)).toContain(OMNIFLOW_MATMUL);
    expect(await kernels(limit + 1)).not.toContain(OMNIFLOW_MATMUL);
    const packed = packBf16(w);
    const bf16Kernels = async (rows: number) => (await tf.profile(() => matMulBf16(tf.ones([rows, 8]), packed))).kernelNames;
    expect(await bf16Kernels(1)).toEqual([OMNIFLOW_MATMUL_BF16]);
    expect(await bf16Kernels(40)).toEqual([OMNIFLOW_MATMUL_BF16]); // any row count: no unpacking on wasm
    tf.dispose([w, packed]);
  });

  it('frees the blocked kernel\'s scratch (no data left on the backend)', () => {
    const backend = tf.backend();
    tf.tidy(() => matMulSmall(tf.ones([8, 64]), tf.ones([64, 64]) as tf.Tensor2D)); // warm: kernel module built
    const tensors = tf.memory().numTensors, ids = backend.numDataIds();
    tf.tidy(() => {
      const x = tf.tensor2d(values(9 * 130, 21), [9, 130]);
      const w = tf.tensor2d(values(130 * 70, 22), [130, 70]);
      expect(maxAbsDiff(matMulSmall(x, w), tf.matMul(x, w))).toBeLessThan(1e-5);
    });
    expect(tf.memory().numTensors).toBe(tensors);
    expect(backend.numDataIds()).toBe(ids);
  });

  it('blocked kernels (f32, bf16): every variant agrees with tf.matMul over odd M, K, N (row, panel and column tails)', () => {
    const backend = tf.backend() as unknown as { wasm: { asm: { memory: WasmMemoryLike } }; dataIdMap: { get(d: object): { memoryOffset: number } } };
    const off = (t: tf.Tensor) => backend.dataIdMap.get(t.dataId).memoryOffset;
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    const variants: BlockedMatMulVariant[] = [
      BLOCKED_VARIANT,
      BLOCKED_FMA_VARIANT,
      { rowBlock: 3, kPanel: 5, nUnroll: 3 },
      { rowBlock: 1, kPanel: 1, nUnroll: 1 },
      { rowBlock: 5, kPanel: 2, nUnroll: 4, fma: true },
    ];
    const start = tf.memory().numTensors;
    for (const variant of variants) {
      const kernels = buildBlockedMatMul(backend.wasm.asm.memory, variant);
      for (const [format, M, K, N] of [
        ['f32', 4, 8, 8], ['f32', 7, 37, 106], ['f32', 9, 3, 5], ['f32', 1, 17, 2], ['f32', 13, 130, 33],
        ['bf16', 4, 8, 8], ['bf16', 7, 37, 106], ['bf16', 9, 3, 6], ['bf16', 1, 17, 2], ['bf16', 13, 130, 34],
      ] as Array<['f32' | 'bf16', number, number, number]>) {
        tf.tidy(() => {
          const f = kernels[format];
          const x = tf.tensor2d(values(M * K, 11 + M), [M, K]);
          const w32 = tf.tensor2d(values(K * N, 12 + K), [K, N]);
          // bf16: the kernel reads the packed weight; the reference uses the same rounded values as float32
          const packed = format === 'bf16' ? packBf16(w32) : w32;
          const w = format === 'bf16' ? unpackBf16(packed) : w32;
          const b = tf.tensor1d(values(N, 13));
          // scratch filled with garbage: the kernel must not depend on it being zero
          const scratch = tf.fill([blockedScratchBytes(variant, M, K, N) / 4 + 1], Number.NaN);
          const y = tf.fill([M, N], Number.NaN);
          f(off(x), off(packed), off(b), off(y), M, K, N, 2, MATMUL_EPILOGUE.relu, off(scratch));
          const tol = 2e-6 * Math.sqrt(K) + 1e-6;
          expect(maxAbsDiff(y, expected(x, w, b, 2, true)), `${format} ${JSON.stringify(variant)} M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(4 * tol);
          const plain = tf.fill([M, N], Number.NaN);
          f(off(x), off(packed), 0, off(plain), M, K, N, 1, MATMUL_EPILOGUE.none, off(scratch));
          expect(maxAbsDiff(plain, tf.matMul(x, w)), `plain ${format} ${JSON.stringify(variant)} M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(2 * tol);
        });
      }
    }
    expect(tf.memory().numTensors).toBe(start);
    expect(() => blockedMatMulModuleBytes({ rowBlock: 0, kPanel: 8, nUnroll: 2 })).toThrow(/rowBlock must be an integer in 1..64, got 0/);
  });

  it('computes the same with every loop variant buildMatMulModule accepts', () => {
    const backend = tf.backend() as unknown as { wasm: { asm: { memory: WasmMemoryLike } }; dataIdMap: { get(d: object): { memoryOffset: number } } };
    const off = (t: tf.Tensor) => backend.dataIdMap.get(t.dataId).memoryOffset;
    // Relaxed SIMD is behind a flag in Node 20: enable it in this test process to check the FMA kernels too.
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    expect(relaxedSimdAvailableNow()).toBe(true);
    const variants: MatMulVariant[] = [
      DEFAULT_VARIANT,
      FMA_VARIANT,
      { maxRows: 3, kUnroll: [3, 2, 1], nUnroll: 2, colBlock: 16, fma: true },
      { maxRows: 2, kUnroll: [16, 3], nUnroll: 1, colBlock: 16 },
      { maxRows: 3, kUnroll: [5, 4, 2], nUnroll: 4, colBlock: 48 },
      { maxRows: 3, kUnroll: [1, 1, 1], nUnroll: 3, colBlock: 32 },
    ];
    tf.tidy(() => {
      const [M, K, N] = [5, 37, 106];
      const x = tf.tensor2d(values(M * K, 11), [M, K]);
      const w = tf.tensor2d(values(K * N, 12), [K, N]);
      const b = tf.tensor1d(values(N, 13));
      const packed = packBf16(w);
      const want = expected(x, w, b, 2, true), wantBf16 = expected(x, unpackBf16(packed), b, 2, true);
      for (const variant of variants) {
        const mod = buildMatMulModule(backend.wasm.asm.memory, variant);
        for (const [fns, weight, ref] of [[mod.f32, w, want], [mod.bf16, packed, wantBf16]] as const) {
          const y = tf.zeros([M, N]);
          for (let r0 = 0; r0 < M; r0 += variant.maxRows) {
            const rows = Math.min(variant.maxRows, M - r0);
            fns[rows]!(off(x) + r0 * K * 4, off(weight), off(b), off(y) + r0 * N * 4, K, N, 2, MATMUL_EPILOGUE.relu);
          }
          expect(maxAbsDiff(y, ref), JSON.stringify(variant)).toBeLessThan(1e-5);
        }
      }
    });
  });

  it('links to a shared memory too (the threaded tfjs-wasm builds share their heap)', () => {
    const memory = new (webAssembly().Memory)({ initial: 2, maximum: 16, shared: true });
    expect(heapImportLimits(memory)).toEqual({ initial: 1, maximum: 65536, shared: true });
    expect(heapImportLimits((tf.backend() as unknown as { wasm: { asm: { memory: WasmMemoryLike } } }).wasm.asm.memory)).toEqual({ initial: 1 });
    const mod = buildMatMulModule(memory, DEFAULT_VARIANT, heapImportLimits(memory));
    const f = new Float32Array(memory.buffer);
    f.set([1, 2, 3], 0); // x [1, 3]
    f.set([1, 0, 0, 1, 1, 1], 4); // W [3, 2] at byte 16
    mod.f32[1]!(0, 16, 0, 64, 3, 2, 1, MATMUL_EPILOGUE.none);
    expect([...f.subarray(16, 18)]).toEqual([4, 5]);
  });

  it('stays right after the tfjs heap grew under the compiled module', () => {
    const heap = (tf.backend() as unknown as { wasm: { asm: { memory: { buffer: ArrayBuffer } } } }).wasm.asm.memory;
    tf.tidy(() => matMulSmall(tf.ones([1, 4]), tf.ones([4, 4]) as tf.Tensor2D)); // module built over the heap as it is
    const before = heap.buffer.byteLength;
    const big = tf.zeros([before / 4 + 1024]); // more than the whole heap: forces a grow
    expect(heap.buffer.byteLength).toBeGreaterThan(before);
    tf.tidy(() => {
      const x = tf.tensor2d(values(3 * 300, 1), [3, 300]);
      const w = tf.tensor2d(values(300 * 77, 2), [300, 77]);
      const off = (t: tf.Tensor) => (tf.backend() as unknown as { dataIdMap: { get(d: object): { memoryOffset: number } } }).dataIdMap.get(t.dataId).memoryOffset;
      expect(off(w)).toBeGreaterThan(before); // really in the grown part
      expect(maxAbsDiff(matMulSmall(x, w), tf.matMul(x, w))).toBeLessThan(1e-5);
      const packed = packBf16(tf.tensor2d(values(300 * 78, 3), [300, 78]));
      expect(maxAbsDiff(matMulBf16(x, packed), tf.matMul(x, unpackBf16(packed)))).toBeLessThan(1e-5);
    });
    big.dispose();
  });
});

describe('packBf16 / unpackBf16', () => {
  it('round-trips bf16 values exactly and rounds others to nearest even', () => {
    const bits = new Uint32Array(4000);
    for (let i = 0; i < bits.length; i++) bits[i] = ((Math.imul(i + 1, 2654435761) >>> 0) & 0xffff0000) >>> 0;
    const f = new Float32Array(bits.buffer).map((v) => (Number.isNaN(v) ? 1 : v)); // NaN payloads aside
    tf.tidy(() => {
      const back = unpackBf16(packBf16(tf.tensor2d(f, [40, 100])));
      expect(Array.from(back.dataSync())).toEqual(Array.from(f));
      // 1 + 2^-8 is halfway between 1 and 1 + 2^-7 → 1 (even); 1 + 3·2^-8 → 1 + 2^-6 (even); just above halfway → up
      const r = unpackBf16(packBf16(tf.tensor2d([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8 + 2 ** -20), Infinity, NaN], [1, 6]))).dataSync();
      expect(Array.from(r.slice(0, 5))).toEqual([1, 1 + 2 ** -6, 1 + 2 ** -7, -(1 + 2 ** -7), Infinity]);
      expect(r[5]).toBeNaN();
      expect(packBf16(tf.tensor2d([1, 2], [1, 2])).dataSync()[0]).toBe(0x3f80 | (0x4000 << 16)); // column 0 low, column 1 high
    });
  });
});
