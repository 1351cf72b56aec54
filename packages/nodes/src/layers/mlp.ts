import * as tf from '@tensorflow/tfjs-core';
import { heapOffset, perWasmBackend, wasmHeap, WasmModuleBuilder, type WasmBackendInternals } from '@omniflow/runtime-gpu';
import { matMulWeight, packWeight, type WeightDtype, type WeightSource } from './linear.js';

/**
 * SwiGLU MLP `down(silu(gate(x)) ⊙ up(x))`, no biases (spec 3.1). gate_proj and up_proj are stored side by side in one
 * `[in, 2·intermediate]` matrix (gate first, like transformers' fused `gate_up_proj`), so one matmul computes both.
 */
export interface SwiGluMlp {
  /** [hidden, 2 · intermediate] (int32 [hidden, intermediate] packed when bf16, see packWeight). */
  readonly gateUp: tf.Tensor2D;
  /** [intermediate, hidden] (int32 [intermediate, hidden / 2] when bf16). */
  readonly down: tf.Tensor2D;
  readonly hidden: number;
  readonly intermediate: number;
}

/**
 * Loads `${prefix}.gate_proj/up_proj/down_proj.weight` (PyTorch [out, in]) into the pre-transposed fused layout, in
 * the given weight format.
 *
 * ```ts
 * const mlp = loadSwiGluMlp(ckpt, 'thinker.model.layers.0.mlp.experts.3', 2048, 768);
 * const y = swiGlu(x, mlp); // [n, 2048] -> [n, 2048]
 * ```
 */
export function loadSwiGluMlp(ckpt: WeightSource, prefix: string, hidden: number, intermediate: number, format: WeightDtype = 'float32'): SwiGluMlp {
  const gate = ckpt.get(`${prefix}.gate_proj.weight`, [intermediate, hidden]).data as Float32Array;
  const up = ckpt.get(`${prefix}.up_proj.weight`, [intermediate, hidden]).data as Float32Array;
  const down = ckpt.get(`${prefix}.down_proj.weight`, [hidden, intermediate]).data as Float32Array;
  return swiGluFromPyTorch(gate, up, down, hidden, intermediate, format);
}

/**
 * Builds the fused layout from PyTorch-layout host arrays (gate, up: [I, H]; down: [H, I]).
 *
 * ```ts
 * const mlp = swiGluFromPyTorch(gate, up, down, 1024, 512); // e.g. weights made in memory for a benchmark
 * ```
 */
export function swiGluFromPyTorch(gate: Float32Array, up: Float32Array, down: Float32Array, hidden: number, intermediate: number, format: WeightDtype = 'float32'): SwiGluMlp {
  // Transpose on the host into the final layout: one device tensor per matrix, no temporaries on the device.
  const gateUp = new Float32Array(hidden * 2 * intermediate);
  for (let o = 0; o < intermediate; o++) {
    for (let i = 0; i < hidden; i++) {
      gateUp[i * 2 * intermediate + o] = gate[o * hidden + i]!;
      gateUp[i * 2 * intermediate + intermediate + o] = up[o * hidden + i]!;
    }
  }
  const downT = new Float32Array(intermediate * hidden);
  for (let o = 0; o < hidden; o++) for (let i = 0; i < intermediate; i++) downT[i * hidden + o] = down[o * intermediate + i]!;
  return { gateUp: packWeight(gateUp, hidden, 2 * intermediate, format), down: packWeight(downT, intermediate, hidden, format), hidden, intermediate };
}

/**
 * SwiGLU over the rows of `x` ([n, hidden]); `alpha` scales the output in the down projection's own pass (an MoE
 * expert's routing weight costs no extra op).
 *
 * ```ts
 * const y = swiGlu(x, mlp); // [n, hidden] -> [n, hidden]
 * const weighted = swiGlu(x, expert, 0.3); // 0.3 · expert(x)
 * ```
 */
export function swiGlu(x: tf.Tensor2D, mlp: SwiGluMlp, alpha?: number): tf.Tensor2D {
  return tf.tidy(() => matMulWeight(siluMul(matMulWeight(x, mlp.gateUp)), mlp.down, alpha === undefined ? {} : { alpha }));
}

/*
 * Between its two matmuls a SwiGLU is split, sigmoid, two multiplies: four tfjs kernels, each a few µs of dispatch on
 * a row of a few hundred values, and the split copies. A decode step runs 7 SwiGLUs per talker layer (six experts and
 * the shared one), so `siluMul` does it in one pass over the wasm heap: wasm SIMD when the intermediate size is a
 * multiple of 4 (CPU per call, one row, back to back: 384 values 2.7 vs 51 µs for the ops, 768 3.2 vs 26, 3072 7.8 vs
 * 46), else a JS loop for small inputs.
 */

/**
 * Output values (rows × intermediate) up to which siluMul runs its JS pass when the intermediate size is not a multiple
 * of 4 (the SIMD pass has no limit): per value Math.exp is slower than XNNPACK's sigmoid (3072 values 54 vs 41 µs),
 * while for a few hundred values the ops' dispatch dominates (384: 9 vs 45 µs).
 */
export const SILU_MUL_MAX_VALUES = 1024;

const SILU_MUL = 'OmniflowSiluMul';

/**
 * `silu(g) ⊙ u` for rows `[g | u]` of `gateUp` ([n, 2·I] -> [n, I]): the middle of a SwiGLU whose gate and up
 * projections share one matmul. One kernel on wasm (differentiable): SIMD for an intermediate size that is a multiple
 * of 4, a JS pass for up to SILU_MUL_MAX_VALUES outputs otherwise; else tfjs ops.
 *
 * ```ts
 * const h = siluMul(tf.tensor2d([[1, -2, 3, 4]])); // [[silu(1)·3, silu(-2)·4]] = [[2.193, -0.954]]
 * ```
 */
export function siluMul(gateUp: tf.Tensor2D): tf.Tensor2D {
  const [n, width] = gateUp.shape;
  if (width % 2 !== 0) throw new Error(`siluMul: rows of ${width} values cannot be split into gate and up halves`);
  const kernel = (width / 2) % 4 === 0 || (n * width) / 2 <= SILU_MUL_MAX_VALUES;
  if (tf.getBackend() !== 'wasm' || !kernel || gateUp.dtype !== 'float32') return siluMulOps(gateUp);
  registerSiluMul();
  return tf.engine().runKernel(SILU_MUL, { x: gateUp }) as tf.Tensor2D;
}

/** The same as tfjs ops (any backend, any size). */
export function siluMulOps(gateUp: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const [g, u] = tf.split(gateUp, 2, 1);
    return tf.mul(tf.mul(g!, tf.sigmoid(g!)), u!) as tf.Tensor2D;
  });
}

let siluMulRegistered = false;

function registerSiluMul(): void {
  if (siluMulRegistered) return;
  siluMulRegistered = true;
  tf.registerKernel({ kernelName: SILU_MUL, backendName: 'wasm', kernelFunc: siluMulWasm as unknown as tf.KernelFunc });
  tf.registerGradient({
    kernelName: SILU_MUL,
    inputsToSave: ['x'],
    // y = g·σ(g)·u: dy/du = g·σ(g), dy/dg = u·σ(g)·(1 + g·(1 − σ(g))).
    gradFunc: ((dy: tf.Tensor, saved: tf.Tensor[]) => ({
      x: () => {
        const [g, u] = tf.split(saved[0]!, 2, 1);
        const s = tf.sigmoid(g!);
        const dg = tf.mul(tf.mul(dy, u!), tf.mul(s, tf.add(1, tf.mul(g!, tf.sub(1, s)))));
        return tf.concat([dg, tf.mul(dy, tf.mul(g!, s))], 1);
      },
    })) as unknown as tf.GradFunc,
  });
}

function siluMulWasm(args: { inputs: { x: tf.TensorInfo }; backend: WasmBackendInternals }): tf.TensorInfo {
  const { backend } = args;
  const { x } = args.inputs;
  const [n, width] = x.shape as [number, number];
  const I = width / 2;
  const out = backend.makeOutput([n, I], 'float32');
  if (n === 0 || I === 0) return out;
  const xo = heapOffset(backend, x, 'x'), yo = heapOffset(backend, out, 'y');
  if (I % 4 === 0) {
    siluMulSimd(backend)(xo, yo, n, I);
    return out;
  }
  const f = new Float32Array(wasmHeap(backend).buffer); // after makeOutput, which may have grown the heap
  for (let r = 0; r < n; r++) {
    const gr = (xo >>> 2) + r * width, ur = gr + I, yr = (yo >>> 2) + r * I;
    for (let i = 0; i < I; i++) {
      const g = f[gr + i]!;
      // float32 steps like the ops: σ(g), g·σ(g), then ·u
      f[yr + i] = Math.fround(g * Math.fround(1 / (1 + Math.exp(-g)))) * f[ur + i]!;
    }
  }
  return out;
}


/**
 * silu(g)·u over rows [g | u] (byte addresses; I a multiple of 4) in wasm SIMD, four values per step. exp(−g) is
 * Cephes' expf (range reduction by ln 2, a degree-6 polynomial, 2^n built in the exponent bits; about 1 ulp, the
 * argument clamped to ±88.38 where float32 exp overflows), then σ = 1 / (1 + exp(−g)) and (g·σ)·u in float32.
 */
const siluMulSimd = perWasmBackend((heap, limits): ((x: number, y: number, rows: number, I: number) => void) => {
  const m = new WasmModuleBuilder().importMemory('env', 'memory', limits);
  m.func('siluMul', { params: ['i32', 'i32', 'i32', 'i32'], results: [] }, (c, [x, y, rows, I]) => {
    const r = c.local('i32'), i = c.local('i32'), gr = c.local('i32'), yr = c.local('i32'), ub = c.local('i32');
    const g = c.local('v128'), t = c.local('v128'), fx = c.local('v128'), z = c.local('v128'), p = c.local('v128');
    const k = (name: string, v: number) => {
      const l = c.local('v128');
      c.f32Const(v).f32x4Splat().localSet(l);
      return [name, l] as const;
    };
    const K = Object.fromEntries([
      k('hi', 88.3762626647949), k('lo', -88.3762626647949), k('log2e', Math.LOG2E), k('c1', 0.693359375), k('c2', -2.12194440e-4),
      k('p0', 1.9875691500e-4), k('p1', 1.3981999507e-3), k('p2', 8.3334519073e-3), k('p3', 4.1665795894e-2), k('p4', 1.6666665459e-1),
      k('p5', 5.0000001201e-1), k('one', 1), k('zero', 0),
    ]);
    const bias = c.local('v128');
    c.v128ConstI32x4([127, 127, 127, 127]).localSet(bias);
    c.localGet(I).i32Const(4).i32Mul().localSet(ub); // bytes from g to u in a row
    c.for(r, () => c.i32Const(0), () => c.localGet(rows), 1, () => {
      c.localGet(x).localGet(r).localGet(ub).i32Mul().i32Const(2).i32Mul().i32Add().localSet(gr);
      c.localGet(y).localGet(r).localGet(ub).i32Mul().i32Add().localSet(yr);
      c.for(i, () => c.i32Const(0), () => c.localGet(I), 4, () => {
        c.localGet(gr).localGet(i).i32Const(4).i32Mul().i32Add().v128Load(0).localSet(g);
        // t = clamp(−g, lo, hi)
        c.localGet(K.hi!).localGet(K.zero!).localGet(g).f32x4Sub().simd('f32x4.pmin').localSet(t);
        c.localGet(K.lo!).localGet(t).f32x4Pmax().localSet(t);
        // fx = nearest(t·log2e); t -= fx·ln2 (in two parts)
        c.localGet(t).localGet(K.log2e!).f32x4Mul().f32x4Nearest().localSet(fx);
        c.localGet(t).localGet(fx).localGet(K.c1!).f32x4Mul().f32x4Sub().localSet(t);
        c.localGet(t).localGet(fx).localGet(K.c2!).f32x4Mul().f32x4Sub().localSet(t);
        c.localGet(t).localGet(t).f32x4Mul().localSet(z);
        // p = ((((p0·t + p1)·t + p2)·t + p3)·t + p4)·t + p5, then p·z + t + 1
        c.localGet(K.p0!).localGet(t).f32x4Mul().localGet(K.p1!).f32x4Add().localSet(p);
        for (const pk of ['p2', 'p3', 'p4', 'p5']) c.localGet(p).localGet(t).f32x4Mul().localGet(K[pk]!).f32x4Add().localSet(p);
        c.localGet(p).localGet(z).f32x4Mul().localGet(t).f32x4Add().localGet(K.one!).f32x4Add().localSet(p);
        // · 2^fx: (fx + 127) << 23 as float bits
        c.localGet(p).localGet(fx).i32x4TruncSatF32x4S().localGet(bias).i32x4Add().i32Const(23).i32x4Shl().f32x4Mul().localSet(p);
        // σ = 1 / (1 + exp(−g)); y = (g·σ)·u
        c.localGet(K.one!).localGet(K.one!).localGet(p).f32x4Add().f32x4Div().localSet(p);
        c.localGet(yr).localGet(i).i32Const(4).i32Mul().i32Add();
        c.localGet(g).localGet(p).f32x4Mul();
        c.localGet(gr).localGet(ub).i32Add().localGet(i).i32Const(4).i32Mul().i32Add().v128Load(0);
        c.f32x4Mul().v128Store(0);
      });
    });
  });
  return (m.instantiate({ env: { memory: heap } }) as unknown as { siluMul: (x: number, y: number, rows: number, I: number) => void }).siluMul;
});

export function disposeSwiGluMlp(mlp: SwiGluMlp): void {
  mlp.gateUp.dispose();
  mlp.down.dispose();
}
