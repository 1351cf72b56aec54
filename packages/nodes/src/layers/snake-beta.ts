import * as tf from '@tensorflow/tfjs-core';
import { WasmModuleBuilder, heapOffset, perWasmBackend, uleb, type Checkpoint, type MemoryLimits, type WasmBackendInternals, type WasmMemoryLike } from '@omniflow/runtime-gpu';

/**
 * SnakeBeta activation (BigVGAN style): `y = x + 1/(exp(β) + 1e-9) · sin²(x · exp(α))`, per channel.
 * The checkpoint stores α and β in log space, so both exponentials are taken once at load.
 */
export interface SnakeBeta {
  /** exp(alpha), [C]: the frequency. */
  readonly frequency: tf.Tensor1D;
  /** 1 / (exp(beta) + 1e-9), [C]: the magnitude's reciprocal, as the reference computes it. */
  readonly inverseMagnitude: tf.Tensor1D;
  readonly channels: number;
}

/**
 * Loads `${prefix}.alpha` and `${prefix}.beta` ([C] each).
 *
 * ```ts
 * const act = loadSnakeBeta(ckpt, 'code2wav.decoder.5', 96);
 * const y = snakeBeta(x, act); // x [..., 96]
 * ```
 */
export function loadSnakeBeta(ckpt: Checkpoint, prefix: string, channels: number): SnakeBeta {
  const alpha = ckpt.get(`${prefix}.alpha`, [channels]).data as Float32Array;
  const beta = ckpt.get(`${prefix}.beta`, [channels]).data as Float32Array;
  return tf.tidy(() => ({
    frequency: tf.exp(tf.tensor1d(alpha)),
    inverseMagnitude: tf.div(1, tf.add(tf.exp(tf.tensor1d(beta)), 1e-9)) as tf.Tensor1D,
    channels,
  }));
}

/**
 * Applies SnakeBeta over the last (channel) axis of `x`, channels-last. On the wasm backend it is one pass over the
 * heap (the `SnakeBeta` kernel below); elsewhere a chain of tfjs ops with `sinSquared`.
 */
export function snakeBeta(x: tf.Tensor, act: SnakeBeta): tf.Tensor {
  if (x.shape[x.rank - 1] !== act.channels) {
    throw new Error(`snakeBeta: input [${x.shape}] has ${x.shape[x.rank - 1]} channels on its last axis, the activation has ${act.channels}`);
  }
  if (x.dtype === 'float32' && registerSnakeBetaKernel()) {
    return tf.engine().runKernel(SNAKE_BETA, { x, frequency: act.frequency, inverseMagnitude: act.inverseMagnitude }) as tf.Tensor;
  }
  return snakeBetaOps(x, act);
}

/** SnakeBeta as tfjs ops (any backend): x + inverseMagnitude · sin²(x · frequency). */
export function snakeBetaOps(x: tf.Tensor, act: SnakeBeta): tf.Tensor {
  return tf.tidy(() => tf.add(x, tf.mul(sinSquared(tf.mul(x, act.frequency)), act.inverseMagnitude)));
}

const SNAKE_BETA = 'SnakeBeta';

/**
 * Registers the `SnakeBeta` kernel for the wasm backend (once) and says whether the active backend has it. As tfjs ops,
 * SnakeBeta is ~20 elementwise passes, most of them broadcasting (the wasm backend's slow path): 12% of a streaming
 * Code2Wav frame. The kernel makes one pass over the tensors in the wasm heap: four channels at a time in wasm SIMD
 * when the channel count is a multiple of 4 (every Code2Wav layer of the release), else a scalar JS loop.
 */
function registerSnakeBetaKernel(): boolean {
  const backend = tf.getBackend();
  if (backend !== 'wasm') return false;
  if (!tf.getKernel(SNAKE_BETA, backend)) {
    tf.registerKernel({ kernelName: SNAKE_BETA, backendName: 'wasm', kernelFunc: snakeBetaWasm as unknown as tf.KernelFunc });
  }
  return true;
}

type SnakeFn = (x: number, freq: number, inv: number, y: number, n: number, channels: number) => void;
const simdModuleFor = perWasmBackend((heap, limits) => buildSnakeBetaSimd(heap, limits));

function snakeBetaWasm(args: { inputs: { x: tf.TensorInfo; frequency: tf.TensorInfo; inverseMagnitude: tf.TensorInfo }; backend: WasmBackendInternals }): tf.TensorInfo {
  const { backend } = args;
  const { x, frequency, inverseMagnitude } = args.inputs;
  const out = backend.makeOutput(x.shape.slice(), 'float32');
  const n = x.shape.reduce((a, b) => a * b, 1), C = frequency.shape[0];
  if (n === 0) return out;
  if (C % 4 === 0) {
    const mod = simdModuleFor(backend);
    (C % 16 === 0 ? mod.snake16 : mod.snake4)(heapOffset(backend, x, 'x'), heapOffset(backend, frequency, 'frequency'), heapOffset(backend, inverseMagnitude, 'inverseMagnitude'), heapOffset(backend, out, 'y'), n, C);
    return out;
  }
  // Views after makeOutput: allocating may grow the heap, which detaches views taken before.
  const heap = (t: tf.TensorInfo) => (backend as unknown as WasmHeapViews).typedArrayFromHeap(t) as Float32Array;
  snakeBetaLoop(heap(x), heap(frequency), heap(inverseMagnitude), heap(out));
  return out;
}

interface WasmHeapViews {
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
}

// π split in two (Cody–Waite): PI_HI has 13 significant bits, so t·PI_HI is exact in float32 for |t| < 2^11 (|z| < 6000)
// and the reduction keeps float32 precision instead of losing |z|·1e-7.
const PI_HI = Math.round(Math.PI * 2048) / 2048, PI_LO = Math.PI - PI_HI;

/**
 * The SIMD kernels: snake(x, freq, inv, y, n, C) over n floats at byte offsets x/y, C channels per row:
 * z = x·freq[c]; t = nearest(z/π); r = (z − t·π_hi) − t·π_lo; y = x + inv[c]·(r·poly(r²))². float32 throughout; the
 * polynomial's truncation error is below 6e-8 on |r| ≤ π/2. `snake4` needs C a multiple of 4; `snake16` a multiple of
 * 16 and runs four independent vectors per iteration (the Horner chain is latency-bound: 1.5x faster measured).
 */
function buildSnakeBetaSimd(memory: WasmMemoryLike, limits: MemoryLimits): { snake4: SnakeFn; snake16: SnakeFn } {
  const m = new WasmModuleBuilder().importMemory('env', 'memory', limits);
  const F32X4_NEAREST = 0x6a;
  for (const unroll of [1, 4]) {
    m.func(`snake${4 * unroll}`, { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32'], results: [] }, (c, [x, freq, inv, y, n, channels]) => {
      const end = c.local('i32'), ch = c.local('i32'), rowBytes = c.local('i32');
      const vecs = (count: number) => Array.from({ length: count }, () => c.local('v128'));
      const xv = vecs(unroll), z = vecs(unroll), t = vecs(unroll), r = vecs(unroll), r2 = vecs(unroll), p = vecs(unroll);
      const k = (v: number) => {
        const l = c.local('v128');
        c.f32Const(v).f32x4Splat().localSet(l);
        return l;
      };
      const invPi = k(1 / Math.PI), piHi = k(PI_HI), piLo = k(PI_LO);
      const coef = SIN_OVER_R.map(k); // sin(r)/r as a polynomial in r² (see sinSquared)
      c.localGet(x).localGet(n).i32Const(2).i32Shl().i32Add().localSet(end); // end = x + 4n
      c.localGet(channels).i32Const(2).i32Shl().localSet(rowBytes);
      c.i32Const(0).localSet(ch);
      const each = (body: (u: number) => void) => {
        for (let u = 0; u < unroll; u++) body(u);
      };
      c.block((exit) => {
        c.loop((top) => {
          c.localGet(x).localGet(end).i32GeU().brIf(exit);
          // z = x · freq[ch]
          each((u) => c.localGet(x).v128Load(16 * u).localTee(xv[u]).localGet(freq).localGet(ch).i32Add().v128Load(16 * u).f32x4Mul().localSet(z[u]));
          // t = nearest(z / π); r = (z − t·π_hi) − t·π_lo; r2 = r²
          each((u) => c.localGet(z[u]).localGet(invPi).f32x4Mul().raw(0xfd, ...uleb(F32X4_NEAREST)).localSet(t[u]));
          each((u) => c.localGet(z[u]).localGet(t[u]).localGet(piHi).f32x4Mul().f32x4Sub().localGet(t[u]).localGet(piLo).f32x4Mul().f32x4Sub().localSet(r[u]));
          each((u) => c.localGet(r[u]).localGet(r[u]).f32x4Mul().localSet(r2[u]));
          // p = sin(r)/r by Horner in r², the vectors interleaved
          each((u) => c.localGet(coef[5]).localSet(p[u]));
          for (let i = 4; i >= 0; i--) each((u) => c.localGet(p[u]).localGet(r2[u]).f32x4Mul().localGet(coef[i]).f32x4Add().localSet(p[u]));
          // y = x + inv[ch] · (r·p)²
          each((u) => {
            c.localGet(y).localGet(xv[u]).localGet(r[u]).localGet(p[u]).f32x4Mul().localTee(p[u]).localGet(p[u]).f32x4Mul();
            c.localGet(inv).localGet(ch).i32Add().v128Load(16 * u).f32x4Mul().f32x4Add().v128Store(16 * u);
          });
          // advance; the channel offset wraps at the end of a row
          c.localGet(x).i32Const(16 * unroll).i32Add().localSet(x);
          c.localGet(y).i32Const(16 * unroll).i32Add().localSet(y);
          c.localGet(ch).i32Const(16 * unroll).i32Add().localTee(ch).localGet(rowBytes).i32Eq();
          c.if(() => c.i32Const(0).localSet(ch));
          c.br(top);
        });
      });
    });
  }
  const exports = m.instantiate({ env: { memory } });
  return { snake4: exports.snake4 as SnakeFn, snake16: exports.snake16 as SnakeFn };
}

const PI = Math.PI, INV_PI = 1 / Math.PI;
// Taylor coefficients of sin(r)/r in r², up to r¹²: on |r| ≤ π/2 the truncation error is below 3e-10 (double arithmetic).
const S1 = -1 / 6, S2 = 1 / 120, S3 = -1 / 5040, S4 = 1 / 362_880, S5 = -1 / 39_916_800, S6 = 1 / 6_227_020_800;

/** y = x + inv[c]·sin²(x·freq[c]) over rows of C channels, in double precision; sin² via r = z − round(z/π)·π. */
function snakeBetaLoop(x: Float32Array, freq: Float32Array, inv: Float32Array, y: Float32Array): void {
  const C = freq.length, rows = x.length / C;
  for (let row = 0, o = 0; row < rows; row++, o += C) {
    for (let c = 0; c < C; c++) {
      const v = x[o + c], z = v * freq[c];
      const r = z - Math.floor(z * INV_PI + 0.5) * PI, r2 = r * r;
      const s = r * (1 + r2 * (S1 + r2 * (S2 + r2 * (S3 + r2 * (S4 + r2 * (S5 + r2 * S6))))));
      y[o + c] = v + inv[c] * s * s;
    }
  }
}

// Taylor coefficients of sin(r)/r in r², up to r¹⁰: on |r| ≤ π/2 the truncation error is below 6e-8.
const SIN_OVER_R = [1, -1 / 6, 1 / 120, -1 / 5040, 1 / 362_880, -1 / 39_916_800];

/**
 * sin²(z), elementwise, as a polynomial: the wasm backend's Sin kernel is ~15x slower than a handful of multiply-adds
 * (measured on Code2Wav's activations, where SnakeBeta was a third of the decoder's time). sin² has period π, so
 * z is reduced to r = z − round(z/π)·π ∈ [−π/2, π/2] and sin(r) is an odd polynomial. The reduction loses about
 * |z|·1e-7 in float32 (1e-6 at |z| = 10; activations here are of order 1), the polynomial < 6e-8.
 *
 * ```ts
 * sinSquared(tf.tensor1d([0, Math.PI / 2, 10])); // ≈ [0, 1, 0.29596]
 * ```
 */
export function sinSquared(z: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const r = tf.sub(z, tf.mul(tf.round(tf.mul(z, 1 / Math.PI)), Math.PI));
    const r2 = tf.square(r);
    let p: tf.Tensor = tf.mul(r2, SIN_OVER_R[5]);
    for (let i = 4; i > 0; i--) p = tf.mul(tf.add(p, SIN_OVER_R[i]), r2);
    return tf.square(tf.mul(tf.add(p, SIN_OVER_R[0]), r));
  });
}

export function disposeSnakeBeta(act: SnakeBeta): void {
  act.frequency.dispose();
  act.inverseMagnitude.dispose();
}
