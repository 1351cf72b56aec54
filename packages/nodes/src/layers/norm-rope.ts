import * as tf from '@tensorflow/tfjs-core';
import { heapOffset, perWasmBackend, wasmHeap, WasmModuleBuilder, type WasmBackendInternals } from '@omniflow/runtime-gpu';
import { rmsNorm, type RMSNorm } from './rms-norm.js';
import { applyRope } from './rope.js';

/*
 * A decode step normalises small tensors many times: per layer the two block RMSNorms over [1, hidden] and q_norm /
 * k_norm over [1, heads, head_dim], each followed for q and k by RoPE. As tfjs ops that is 6 kernels per norm and 6
 * per RoPE (square, mean, add, rsqrt, mul, mul; split, neg, concat, mul, mul, add) — 36 kernel calls per layer, each
 * a few µs of dispatch plus cache misses on a heap that the layer's weights just streamed through. `normRope` does a
 * norm (and its RoPE) in one pass over the rows in the wasm heap. It is used for small row counts only (decode steps
 * and short blocks); long prefills keep the tfjs ops.
 */

/** Rows up to which normRope runs its one-pass kernel on wasm (a decode step has 1..heads rows). */
export const NORM_ROPE_MAX_ROWS = 64;

/** Kernel names: the norm alone (inputs x, weight) and the norm followed by RoPE (x, weight, cos, sin). */
const RMS_NORM = 'OmniflowRmsNorm';
const NORM_ROPE = 'OmniflowRmsNormRope';

interface NormRopeAttrs {
  eps: number;
  /** Output scale (attention's 1/√head_dim folded into q's norm). */
  scale: number;
  /** Rows sharing one position's cos/sin row (heads); 0: no RoPE. */
  rowsPerPosition: number;
}

/**
 * `scale · applyRope(rmsNorm(x, norm), cos, sin)` — or `scale · rmsNorm(x, norm)` without `rope` — over the last axis
 * of `x` (`scale` defaults to 1; attention passes 1/√head_dim for q, which RoPE's linearity lets it fold in).
 * With RoPE, x is `[S, heads, head_dim]` and cos/sin `[S, 1, head_dim]` (ropeTensors). On the wasm backend with at most
 * NORM_ROPE_MAX_ROWS rows it is one kernel (differentiable); otherwise the tfjs ops of rmsNorm and applyRope.
 *
 * ```ts
 * const q = normRope(tf.reshape(linear(x, attn.q_proj), [S, H, D]), attn.q_norm, { cos, sin });
 * const h = normRope(x, layer.input_layernorm); // [S, hidden]
 * ```
 */
export function normRope(x: tf.Tensor, norm: RMSNorm, rope?: { cos: tf.Tensor; sin: tf.Tensor }, scale = 1): tf.Tensor {
  const D = x.shape[x.rank - 1]!;
  if (norm.weight.shape[0] !== D) throw new Error(`normRope: input [${x.shape}] has ${D} features on its last axis, the norm weight has ${norm.weight.shape[0]}`);
  const rows = x.size / D;
  if (rope && (x.rank !== 3 || rope.cos.size !== x.shape[0]! * D || rope.sin.size !== rope.cos.size)) {
    throw new Error(`normRope: RoPE needs x [S, heads, ${D}] and cos/sin [S, 1, ${D}], got x [${x.shape}], cos [${rope.cos.shape}], sin [${rope.sin.shape}]`);
  }
  if (tf.getBackend() !== 'wasm' || rows > NORM_ROPE_MAX_ROWS || x.dtype !== 'float32' || D % 2 !== 0) return normRopeOps(x, norm, rope, scale);
  register();
  const attrs: NormRopeAttrs = { eps: norm.eps, scale, rowsPerPosition: rope ? x.shape[1]! : 0 };
  const inputs: tf.NamedTensorMap = rope ? { x, weight: norm.weight, cos: rope.cos, sin: rope.sin } : { x, weight: norm.weight };
  return tf.engine().runKernel(rope ? NORM_ROPE : RMS_NORM, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
}

/** The same as tfjs ops (any backend, any size). */
export function normRopeOps(x: tf.Tensor, norm: RMSNorm, rope?: { cos: tf.Tensor; sin: tf.Tensor }, scale = 1): tf.Tensor {
  return tf.tidy(() => {
    const y = rope ? applyRope(rmsNorm(x, norm), rope.cos, rope.sin) : rmsNorm(x, norm);
    return scale === 1 ? y : tf.mul(y, scale);
  });
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  for (const [kernelName, inputsToSave] of [[RMS_NORM, ['x', 'weight']], [NORM_ROPE, ['x', 'weight', 'cos', 'sin']]] as const) {
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: normRopeWasm as unknown as tf.KernelFunc });
    tf.registerGradient({ kernelName, inputsToSave: [...inputsToSave], gradFunc: normRopeGrad as unknown as tf.GradFunc });
  }
}

/** Gradients of the norm (and RoPE) in tfjs ops; cos/sin are tables, their gradient is zero. */
function normRopeGrad(dy: tf.Tensor, saved: tf.Tensor[], attrs: NormRopeAttrs): Record<string, () => tf.Tensor> {
  const [x, w, cos, sin] = saved as [tf.Tensor, tf.Tensor1D, tf.Tensor | undefined, tf.Tensor | undefined];
  const D = x.shape[x.rank - 1]!;
  // Through RoPE (linear): n = y·cos + rot(y)·sin with rot(y) = [-y2, y1], so dn = dy·cos + rotᵀ(dy·sin), rotᵀ(u) = [u2, -u1].
  const dn = () => {
    const d = attrs.scale === 1 ? dy : tf.mul(dy, attrs.scale);
    if (!attrs.rowsPerPosition) return d;
    const [u1, u2] = tf.split(tf.mul(d, sin!), 2, -1);
    return tf.add(tf.mul(d, cos!), tf.concat([u2!, tf.neg(u1!)], -1));
  };
  // Through the norm n = x·r·w, r = (mean(x²) + eps)^-½: dx = r·g − x·r³·mean(g·x), g = dn·w; dw = Σ dn·x·r.
  const r = () => tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), attrs.eps));
  const grads: Record<string, () => tf.Tensor> = {
    x: () => {
      const rr = r(), g = tf.mul(dn(), w);
      return tf.sub(tf.mul(g, rr), tf.mul(tf.mul(x, tf.pow(rr, 3)), tf.mean(tf.mul(g, x), -1, true)));
    },
    weight: () => tf.reshape(tf.sum(tf.reshape(tf.mul(tf.mul(dn(), x), r()), [-1, D]), 0), [D]),
  };
  if (cos) {
    grads.cos = () => tf.zerosLike(cos);
    grads.sin = () => tf.zerosLike(sin!);
  }
  return grads;
}

/** One pass per row over the wasm heap: sum of squares, scale by weight·r, then rotate the two halves by the row's position. */
function normRopeWasm(args: { inputs: { x: tf.TensorInfo; weight: tf.TensorInfo; cos?: tf.TensorInfo; sin?: tf.TensorInfo }; backend: WasmBackendInternals; attrs: NormRopeAttrs }): tf.TensorInfo {
  const { backend, attrs } = args;
  const { x, weight, cos, sin } = args.inputs;
  const out = backend.makeOutput(x.shape.slice(), 'float32');
  const D = x.shape[x.shape.length - 1]!, rows = x.shape.reduce((a, b) => a * b, 1) / D;
  if (rows === 0) return out;
  // The view is made after makeOutput, which may have grown the heap.
  const f = new Float32Array(wasmHeap(backend).buffer);
  const xo = heapOffset(backend, x, 'x') >>> 2, wo = heapOffset(backend, weight, 'weight') >>> 2, yo = heapOffset(backend, out, 'y') >>> 2;
  const co = cos ? heapOffset(backend, cos, 'cos') >>> 2 : 0, so = sin ? heapOffset(backend, sin, 'sin') >>> 2 : 0;
  const per = attrs.rowsPerPosition;
  const row = rowKernel(backend, f, D, per > 0);
  for (let r = 0; r < rows; r++) {
    const p = per ? Math.floor(r / per) * D : -1;
    row(xo + r * D, yo + r * D, wo, attrs.eps, attrs.scale, per ? co + p : -1, so + p);
  }
  return out;
}

/** One row of normRope at float indices of the heap: x at xr, y at yr, weight at wo, cos/sin rows at cr/sr (cr < 0: no RoPE). */
type NormRopeRowFn = (xr: number, yr: number, wo: number, eps: number, scale: number, cr: number, sr: number) => void;

/**
 * The row pass for head size D: wasm SIMD when D splits into whole vectors (D % 4, and with RoPE each half: D % 8),
 * else the JS loop (3-4x slower: [1, 1024] 12.5 vs 3.5 µs, the talker's q/k/v 19.4 vs 6.4 µs). Both do the per-element
 * products in float32; the SIMD pass sums the squares in four float32 lanes (the JS one in double) and rounds sqrt and
 * the reciprocal separately — differences of an ulp or two, like the reference's own float32 reduction order.
 */
function rowKernel(backend: WasmBackendInternals, f: Float32Array, D: number, rope: boolean): NormRopeRowFn {
  if (D % (rope ? 8 : 4) !== 0) return (xr, yr, wo, eps, scale, cr, sr) => normRopeRow(f, xr, yr, wo, D, eps, scale, cr, sr);
  const simd = simdModuleFor(backend);
  return (xr, yr, wo, eps, scale, cr, sr) => simd.row(4 * xr, 4 * yr, 4 * wo, D, eps, scale, 4 * Math.max(cr, 0), 4 * sr, cr < 0 ? 0 : 1, D);
}

interface NormRopeSimd {
  /** Byte addresses; D f32 per row; rope 0/1; Df = D as f32 (the mean's divisor). */
  row(x: number, y: number, w: number, D: number, eps: number, scale: number, cos: number, sin: number, rope: number, Df: number): void;
}

const simdModuleFor = perWasmBackend((heap, limits): NormRopeSimd => {
  const m = new WasmModuleBuilder().importMemory('env', 'memory', limits);
  m.func('row', { params: ['i32', 'i32', 'i32', 'i32', 'f32', 'f32', 'i32', 'i32', 'i32', 'f32'], results: [] }, (c, [x, y, w, D, eps, scale, cs, sn, rope, Df]) => {
    const d = c.local('i32'), half = c.local('i32'), hb = c.local('i32'), s = c.local('f32');
    const ss = c.local('v128'), v = c.local('v128'), inv = c.local('v128'), a = c.local('v128'), b = c.local('v128');
    // base + 4·d (+ hb): the element d (of the second half) of a row; loops count elements, never compare addresses.
    const at = (base: typeof x, second = false) => {
      c.localGet(base).localGet(d).i32Const(4).i32Mul().i32Add();
      if (second) c.localGet(hb).i32Add();
    };
    c.v128ConstI32x4([0, 0, 0, 0]).localSet(ss);
    c.for(d, () => c.i32Const(0), () => c.localGet(D), 4, () => {
      at(x);
      c.v128Load(0).localTee(v).localGet(v).f32x4Mul().localGet(ss).f32x4Add().localSet(ss);
    });
    c.localGet(ss).f32x4ExtractLane(0).localGet(ss).f32x4ExtractLane(1).f32Add();
    c.localGet(ss).f32x4ExtractLane(2).localGet(ss).f32x4ExtractLane(3).f32Add().f32Add();
    // inv = scale / sqrt(mean + eps), in float32 steps like the reference
    c.localGet(Df).f32Div().localGet(eps).f32Add().raw(0x91 /* f32.sqrt */).localSet(s);
    c.f32Const(1).localGet(s).f32Div().localGet(scale).f32Mul().f32x4Splat().localSet(inv);
    const normed = (second: boolean) => {
      at(x, second);
      c.v128Load(0).localGet(inv).f32x4Mul();
      at(w, second);
      c.v128Load(0).f32x4Mul();
    };
    c.localGet(rope).i32Eqz().if(() => {
      c.for(d, () => c.i32Const(0), () => c.localGet(D), 4, () => {
        at(y);
        normed(false);
        c.v128Store(0);
      });
    }, () => {
      c.localGet(D).i32Const(1).i32ShrU().localSet(half);
      c.localGet(half).i32Const(4).i32Mul().localSet(hb);
      c.for(d, () => c.i32Const(0), () => c.localGet(half), 4, () => {
        normed(false);
        c.localSet(a);
        normed(true);
        c.localSet(b);
        // y1 = a·cos1 − b·sin1, y2 = b·cos2 + a·sin2
        at(y);
        c.localGet(a);
        at(cs);
        c.v128Load(0).f32x4Mul().localGet(b);
        at(sn);
        c.v128Load(0).f32x4Mul().f32x4Sub().v128Store(0);
        at(y, true);
        c.localGet(b);
        at(cs, true);
        c.v128Load(0).f32x4Mul().localGet(a);
        at(sn, true);
        c.v128Load(0).f32x4Mul().f32x4Add().v128Store(0);
      });
    });
  });
  return m.instantiate({ env: { memory: heap } }) as unknown as NormRopeSimd;
});

/**
 * One row of normRope on the heap view `f` (float indices): y[yr..] = scale · rope(rmsNorm(x[xr..])) with the cos/sin
 * row at `cr`/`sr`, or the norm alone when `cr` < 0.
 */
function normRopeRow(f: Float32Array, xr: number, yr: number, wo: number, D: number, eps: number, scale: number, cr: number, sr: number): void {
  let ss = 0;
  for (let d = 0; d < D; d++) ss += f[xr + d]! * f[xr + d]!;
  // float32 like the reference: mean, + eps, rsqrt, then the products
  const inv = Math.fround(Math.fround(1 / Math.sqrt(Math.fround(Math.fround(ss / D) + eps))) * scale);
  if (cr < 0) {
    for (let d = 0; d < D; d++) f[yr + d] = Math.fround(f[xr + d]! * inv) * f[wo + d]!;
    return;
  }
  const half = D / 2;
  for (let j = 0; j < half; j++) {
    const a = Math.fround(Math.fround(f[xr + j]! * inv) * f[wo + j]!);
    const b = Math.fround(Math.fround(f[xr + half + j]! * inv) * f[wo + half + j]!);
    f[yr + j] = Math.fround(a * f[cr + j]!) - Math.fround(b * f[sr + j]!);
    f[yr + half + j] = Math.fround(b * f[cr + half + j]!) + Math.fround(a * f[sr + half + j]!);
  }
}

/*
 * Attention's q, k and v come from one fused projection (a row [q | k | v] per position, see DecoderAttention.qkv_proj).
 * Splitting it, normalising q and k and rotating them, and reordering all three head-major is 8-10 tfjs kernels per
 * layer; `qkvNormRope` is one pass that writes the three head-major tensors attention consumes.
 */
const QKV_NORM_ROPE = 'OmniflowQkvNormRope';

interface QkvNormRopeAttrs {
  heads: number;
  kvHeads: number;
  qEps: number;
  kEps: number;
  /** Output scale of q (attention's 1/√head_dim). */
  qScale: number;
}

/** The head-major q, k, v of one attention call: [heads, S, D], [kvHeads, S, D], [kvHeads, S, D]. */
export interface HeadMajorQkv {
  q: tf.Tensor3D;
  k: tf.Tensor3D;
  v: tf.Tensor3D;
}

/**
 * Splits fused projection rows `qkv` ([S, (heads + 2·kvHeads)·D], q then k then v) into head-major q, k, v, with q
 * and k RMS-normed (`qNorm`, `kNorm`) and rotated by RoPE (cos/sin `[S, 1, D]`), and q scaled by `qScale`. On the wasm
 * backend with at most NORM_ROPE_MAX_ROWS rows one kernel; otherwise the tfjs ops. Inference only (no gradient).
 *
 * ```ts
 * const { q, k, v } = qkvNormRope(linear(x, attn.qkv_proj), attn.q_norm, attn.k_norm, { cos, sin }, 16, 2, 1 / Math.sqrt(128));
 * ```
 */
export function qkvNormRope(qkv: tf.Tensor2D, qNorm: RMSNorm, kNorm: RMSNorm, rope: { cos: tf.Tensor; sin: tf.Tensor }, heads: number, kvHeads: number, qScale = 1): HeadMajorQkv {
  const [S, W] = qkv.shape;
  const D = qNorm.weight.shape[0];
  if (kNorm.weight.shape[0] !== D || W !== (heads + 2 * kvHeads) * D) {
    throw new Error(`qkvNormRope: rows of ${W} features do not hold ${heads} q heads and 2 × ${kvHeads} k/v heads of ${D} (q_norm ${D}, k_norm ${kNorm.weight.shape[0]})`);
  }
  if (rope.cos.size !== S * D || rope.sin.size !== rope.cos.size) {
    throw new Error(`qkvNormRope: cos/sin must be [${S}, 1, ${D}], got cos [${rope.cos.shape}], sin [${rope.sin.shape}]`);
  }
  if (tf.getBackend() !== 'wasm' || S * heads > NORM_ROPE_MAX_ROWS || qkv.dtype !== 'float32' || D % 2 !== 0) {
    return qkvNormRopeOps(qkv, qNorm, kNorm, rope, heads, kvHeads, qScale);
  }
  registerQkv();
  const attrs: QkvNormRopeAttrs = { heads, kvHeads, qEps: qNorm.eps, kEps: kNorm.eps, qScale };
  const [q, k, v] = tf.engine().runKernel(QKV_NORM_ROPE, { qkv, qWeight: qNorm.weight, kWeight: kNorm.weight, cos: rope.cos, sin: rope.sin }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor3D[];
  return { q: q!, k: k!, v: v! };
}

/** The same as tfjs ops (any backend, any size). */
export function qkvNormRopeOps(qkv: tf.Tensor2D, qNorm: RMSNorm, kNorm: RMSNorm, rope: { cos: tf.Tensor; sin: tf.Tensor }, heads: number, kvHeads: number, qScale = 1): HeadMajorQkv {
  const S = qkv.shape[0], D = qNorm.weight.shape[0];
  return tf.tidy(() => {
    const [q, k, v] = tf.split(qkv, [heads * D, kvHeads * D, kvHeads * D], 1);
    const headMajor = (t: tf.Tensor, h: number) => (S === 1 ? tf.reshape(t, [h, 1, D]) : tf.transpose(tf.reshape(t, [S, h, D]), [1, 0, 2])) as tf.Tensor3D;
    return {
      q: headMajor(normRope(tf.reshape(q!, [S, heads, D]), qNorm, rope, qScale), heads),
      k: headMajor(normRope(tf.reshape(k!, [S, kvHeads, D]), kNorm, rope), kvHeads),
      v: headMajor(v!, kvHeads),
    };
  });
}

let qkvRegistered = false;

function registerQkv(): void {
  if (qkvRegistered) return;
  qkvRegistered = true;
  tf.registerKernel({ kernelName: QKV_NORM_ROPE, backendName: 'wasm', kernelFunc: qkvNormRopeWasm as unknown as tf.KernelFunc });
}

function qkvNormRopeWasm(args: { inputs: { qkv: tf.TensorInfo; qWeight: tf.TensorInfo; kWeight: tf.TensorInfo; cos: tf.TensorInfo; sin: tf.TensorInfo }; backend: WasmBackendInternals; attrs: QkvNormRopeAttrs }): tf.TensorInfo[] {
  const { backend, attrs } = args;
  const { qkv, qWeight, kWeight, cos, sin } = args.inputs;
  const { heads: H, kvHeads: Hkv } = attrs;
  const S = qkv.shape[0]!, W = qkv.shape[1]!, D = qWeight.shape[0]!;
  const outs = [backend.makeOutput([H, S, D], 'float32'), backend.makeOutput([Hkv, S, D], 'float32'), backend.makeOutput([Hkv, S, D], 'float32')];
  if (S === 0) return outs;
  const f = new Float32Array(wasmHeap(backend).buffer); // after makeOutput, which may have grown the heap
  const xo = heapOffset(backend, qkv, 'qkv') >>> 2, qw = heapOffset(backend, qWeight, 'q_norm') >>> 2, kw = heapOffset(backend, kWeight, 'k_norm') >>> 2;
  const co = heapOffset(backend, cos, 'cos') >>> 2, so = heapOffset(backend, sin, 'sin') >>> 2;
  const [qo, ko, vo] = outs.map((o, i) => heapOffset(backend, o, ['q', 'k', 'v'][i]!) >>> 2) as [number, number, number];
  const norm = rowKernel(backend, f, D, true);
  for (let s = 0; s < S; s++) {
    const row = xo + s * W, cr = co + s * D, sr = so + s * D;
    for (let h = 0; h < H; h++) norm(row + h * D, qo + (h * S + s) * D, qw, attrs.qEps, attrs.qScale, cr, sr);
    for (let h = 0; h < Hkv; h++) {
      norm(row + (H + h) * D, ko + (h * S + s) * D, kw, attrs.kEps, 1, cr, sr);
      f.copyWithin(vo + (h * S + s) * D, row + (H + Hkv + h) * D, row + (H + Hkv + h + 1) * D);
    }
  }
  return outs;
}
