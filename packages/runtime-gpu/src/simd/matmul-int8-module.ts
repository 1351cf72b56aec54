import { type WasmCode, type WasmLocal, type MemoryLimits, WasmModuleBuilder, type WasmMemoryLike, webAssembly } from './wasm-emitter.js';
import { MATMUL_EPILOGUE } from './matmul-module.js';

/*
 * The int8-weight kernels (weights from int8.ts: blocks of 4 outputs, their 16-weight pieces interleaved, then the 4
 * f32 scales), over a memory they import (tfjs-wasm's heap):
 *
 *   y[M, N] = epilogue(alpha · x[M, K] · dequant(W) + b[N])
 *
 * in two passes. `quantize` turns each x row into int16 (scratch [M, Kp], zero padded) with one scale per row,
 * sx = max|x| / xmax, where xmax keeps the i32 accumulators from overflowing (int8XMax: with 'rows' every accumulator
 * lane adds K/4 products of at most 127 · xmax, so 127 · xmax · K/4 < 2^31; with 'panels' a lane is one output and
 * adds all K; xmax <= 32767, so the i16 dot never sees -32768²). A row may also be gathered as k taps of C floats
 * `tapStride` bytes apart: an im2col row of a 1-D conv, quantized straight from the conv's input.
 *
 * 'rows' packing (int8.ts): `int8_r{R}` computes R rows × output columns [n0, n1) one block of 4 outputs at a time: each step of 16
 * weights loads the R rows' x as two i16x8 vectors, then per output its 16 int8 weights (one load; the block's four
 * are adjacent, so W streams past in one sequential read), widens them to two i16x8 (extend_low/high_i8x16_s) and
 * adds `i32x4.dot_i16x8_s` of each half into that output's accumulator: 16 multiply-adds in 7 ops, no float in the
 * loop (V8 on x64: vpmovsxbw, vpunpckhbw + vpsraw, 2 vpmaddwd, 2 vpaddd). At the block's end the accumulators are
 * converted to f32 and reduced across lanes (a 4×4 transpose-add), and y[r, n..n+4] = sums · sx[r] · alpha · s + b
 * as one vector.
 *
 * Decode (M <= 2) is one call over all columns: it streams W once, a quarter of float32's bytes. Larger M runs
 * row blocks over column tiles small enough to stay in L2, so W comes from memory once per tile whatever M is.
 *
 * 'panels' packing: `panel_r{R}` computes R rows × one panel of 8 outputs at a time: per pair of k, two
 * `v128.load8x8_s` (vpmovsxbw from memory) give the panel's 8 outputs' two weights as i16 pairs, and each row's x
 * pair, broadcast (`v128.load32_splat`), meets both in one `i32x4.dot_i16x8_s` each: 4 outputs' partial sums per
 * accumulator, so the end of the panel needs no reduction across lanes, and R = 4 rows hold 8 accumulators, 2 weight
 * vectors and one broadcast, within x64's 16 vector registers (the 'rows' kernel at 4 rows needs 27 and spills).
 * Measured on this repository's machine at Code2Wav's decoder shapes ([32..1920 rows, 672..5376] · [.., 96..768]):
 * ~35 GMAC/s against ~26 for 'rows' at the same row counts, near the ~4 G vpmaddwd/s one core sustains here. Unrolling
 * the pair loop made it slower (V8 hoists the unrolled loads and spills), so the loop is one pair per iteration.
 */

/** Loop shape (measured choices in INT8_VARIANT). */
export interface Int8MatMulVariant {
  /** Largest row block with its own function (`int8_r1` .. `int8_r{maxRows}`). */
  readonly maxRows: number;
  /** Largest row block of the 'panels' kernel (`panel_r1` .. `panel_r{panelRows}`). */
  readonly panelRows: number;
  /** Steps of 16 weights per loop iteration (immediate load offsets, one pointer update per iteration), by row count. */
  readonly kUnroll: readonly number[];
}

/**
 * Measured (process CPU time, best of 9, weights rotated so they come from memory, machine busy) over
 * [M, 4096]·[4096, 4096] and [M, 1024]·[1024, 6144]: kUnroll 1/2/4 level within noise; row blocks of 3 and 4 beat
 * 2 + 1 or 2 + 2 (M = 3: 2.1 vs 3.1 ms; M = 4: 3.0 vs 3.4), 6 a little better still at M = 8 (5.2 vs 5.9) but with
 * more code for the decode sizes that matter. From 2 rows the kernel is bound by vpmaddwd (one per cycle here):
 * about 0.7 ms per row per 16.7M weights. Before the 4-output interleaved layout (one row per output, 4 short
 * streams at a time) a decode step at K = 1024 streamed about a third slower.
 */
export const INT8_VARIANT: Int8MatMulVariant = { maxRows: 4, panelRows: 4, kUnroll: [1, 1, 1, 1] };

/**
 * Signature of `quantize`: M rows of k·C f32 → xq [M, Kp] int16 and sx [M] f32 (pointers are byte offsets). Row m's
 * tap t is the C floats at x + m·C·4 + t·tapStride: a plain [M, K] matrix is k = 1, C = K (tapStride unused); the
 * im2col rows of a conv with dilation d over x [L + (k-1)·d, C] are tapStride = d·C·4.
 */
export type Int8QuantizeFn = (x: number, M: number, C: number, k: number, tapStride: number, Kp: number, xmax: number, xq: number, sx: number) => void;

/**
 * Signature of `int8_r{R}`: R rows of xq (row stride Kp int16) and sx, the packed weight, output columns [n0, n1)
 * of y (row stride N floats; n0 a multiple of 4); `bias` 0 means none.
 */
export type Int8MatMulFn = (xq: number, sx: number, w: number, bias: number, y: number, Kp: number, N: number, n0: number, n1: number, alpha: number, epilogue: number) => void;

/** An instantiated int8 module. */
export interface Int8MatMul {
  readonly quantize: Int8QuantizeFn;
  /** rows[R] handles exactly R rows of a 'rows'-packed weight (index 0 unused). */
  readonly rows: readonly Int8MatMulFn[];
  /** panels[R] handles exactly R rows of a 'panels'-packed weight (n0 a multiple of 8; index 0 unused). */
  readonly panels: readonly Int8MatMulFn[];
  readonly variant: Int8MatMulVariant;
}

/**
 * The largest int16 magnitude x may be quantized to for a K-long dot product with int8 weights of a packing (see the
 * header).
 *
 * ```ts
 * int8XMax(4096); // 16513
 * int8XMax(4096, 'panels'); // 4128
 * ```
 */
export function int8XMax(K: number, packing: 'rows' | 'panels' = 'rows'): number {
  const terms = packing === 'panels' ? Math.ceil(Math.max(K, 8) / 8) * 8 : Math.ceil(Math.max(K, 4) / 4);
  return Math.max(1, Math.min(32767, Math.floor((2 ** 31 - 1) / (127 * terms))));
}

/** Bytes of scratch for M rows: xq (M · Kp int16), then sx (M f32). */
export function int8ScratchBytes(M: number, Kp: number): number {
  return M * Kp * 2 + M * 4;
}

/**
 * The module's bytes: `quantize` and `int8_r1` .. `int8_r{maxRows}`, importing `env.memory` with `memory`'s limits.
 *
 * ```ts
 * const bytes = int8MatMulModuleBytes(INT8_VARIANT, { initial: 1 });
 * ```
 */
export function int8MatMulModuleBytes(variant: Int8MatMulVariant = INT8_VARIANT, memory: MemoryLimits = { initial: 1 }): Uint8Array {
  if (!Number.isInteger(variant.maxRows) || variant.maxRows < 1 || variant.maxRows > 8) throw new Error(`int8MatMulModuleBytes: maxRows must be 1..8, got ${variant.maxRows}`);
  if (!Number.isInteger(variant.panelRows) || variant.panelRows < 1 || variant.panelRows > 6) throw new Error(`int8MatMulModuleBytes: panelRows must be 1..6, got ${variant.panelRows}`);
  const u = variant.kUnroll;
  if (u.length < variant.maxRows || u.some((g) => !Number.isInteger(g) || g < 1 || g > 8)) throw new Error(`int8MatMulModuleBytes: kUnroll needs ${variant.maxRows} entries in 1..8, got [${u}]`);
  const m = new WasmModuleBuilder().importMemory('env', 'memory', memory);
  m.func('quantize', { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32', 'i32'], results: [] }, emitQuantize);
  const product = { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32'] as const, results: [] };
  for (let R = 1; R <= variant.maxRows; R++) m.func(`int8_r${R}`, product, (c, p) => emitInt8(c, p, R, variant.kUnroll[R - 1]!));
  for (let R = 1; R <= variant.panelRows; R++) m.func(`panel_r${R}`, product, (c, p) => emitPanel(c, p, R));
  return m.encode();
}

/**
 * Assembles and instantiates the int8 kernels over `memory`.
 *
 * ```ts
 * const k = buildInt8MatMul((tf.backend() as any).wasm.asm.memory);
 * k.quantize(x, 1, K, 1, 0, Kp, int8XMax(K), xq, sx);
 * k.rows[1](xq, sx, w, 0, y, Kp, N, 0, N, 1, MATMUL_EPILOGUE.none); // y[1, N] = x[1, K] · dequant(W)
 * ```
 */
export function buildInt8MatMul(memory: WasmMemoryLike, variant: Int8MatMulVariant = INT8_VARIANT, limits: MemoryLimits = { initial: 1 }): Int8MatMul {
  const wasm = webAssembly();
  const { exports } = new wasm.Instance(new wasm.Module(int8MatMulModuleBytes(variant, limits)), { env: { memory } });
  const fns = (prefix: string, n: number) => [undefined, ...Array.from({ length: n }, (_, r) => exports[`${prefix}${r + 1}`])] as Int8MatMulFn[];
  return { quantize: exports.quantize as Int8QuantizeFn, rows: fns('int8_r', variant.maxRows), panels: fns('panel_r', variant.panelRows), variant };
}

/**
 * Per row: amax = max |x| over its k taps, sx = amax / xmax, and the taps times xmax / amax rounded to int16 side by
 * side, zero padded to Kp. Eight values per vector step, a scalar tail when C is not a multiple of 8. The max uses
 * f32x4.pmax (one vmaxps; f32x4.max's NaN rules cost ~7 x64 instructions) and a separate sum of x - x, which is 0
 * for finite x and NaN otherwise: a row holding NaN or ±Inf gets amax = NaN, so sx = NaN and its outputs are NaN
 * whatever integers the quantizer wrote. Rounding adds 1.5·2^23: for |v| < 2^22 the sum's low mantissa bits are v
 * rounded to nearest-even, the same integer as f32x4.nearest + trunc_sat (|v| <= xmax <= 32767 here) at fewer
 * instructions than trunc_sat's fix-ups.
 */
function emitQuantize(c: WasmCode, params: WasmLocal[]): void {
  const [x, M, C, k, tapStride, Kp, xmax, xq, sx] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const [m, t, row, p, pEnd, vEnd, dst, dEnd] = Array.from({ length: 8 }, () => c.local('i32'));
  const mx = c.local('v128'), bad = c.local('v128'), v = c.local('v128'), inv4 = c.local('v128'), magic = c.local('v128'), unmagic = c.local('v128');
  const amax = c.local('f32'), inv = c.local('f32'), f = c.local('f32');
  c.f32Const(12582912).f32x4Splat().localSet(magic);
  c.v128ConstI32x4([-0x4b400000, -0x4b400000, -0x4b400000, -0x4b400000]).localSet(unmagic);
  // tap t of the row: p .. pEnd (C floats), vEnd where fewer than 8 remain
  const taps = (body: () => void) => c.for(t, () => c.i32Const(0), () => c.localGet(k), 1, () => {
    c.localGet(row).localGet(t).localGet(tapStride).i32Mul().i32Add().localSet(p);
    c.localGet(p).localGet(C).i32Const(4).i32Mul().i32Add().localSet(pEnd);
    c.localGet(pEnd).i32Const(28).i32Sub().localSet(vEnd);
    body();
  });
  /** while p < vEnd (8 or more floats left): body; p += 32 — then while p < pEnd: tail; p += 4 */
  const overTap = (body: () => void, tail: () => void) => {
    c.block((exit) => c.loop((top) => {
      c.localGet(p).localGet(vEnd).i32GeS().brIf(exit);
      body();
      c.localGet(p).i32Const(32).i32Add().localSet(p);
      c.br(top);
    }));
    c.block((exit) => c.loop((top) => {
      c.localGet(p).localGet(pEnd).i32GeU().brIf(exit);
      tail();
      c.localGet(p).i32Const(4).i32Add().localSet(p);
      c.br(top);
    }));
  };
  c.for(m, () => c.i32Const(0), () => c.localGet(M), 1, () => {
    c.localGet(x).localGet(m).localGet(C).i32Mul().i32Const(4).i32Mul().i32Add().localSet(row);
    c.f32Const(0).f32x4Splat().localTee(mx).localSet(bad);
    c.f32Const(0).localSet(amax);
    taps(() => overTap(
      () => {
        for (const off of [0, 16]) {
          c.localGet(p).v128Load(off).localSet(v);
          c.localGet(v).f32x4Abs().localGet(mx).f32x4Pmax().localSet(mx);
          c.localGet(bad).localGet(v).localGet(v).f32x4Sub().f32x4Add().localSet(bad);
        }
      },
      () => {
        c.localGet(p).f32Load().localSet(f);
        c.localGet(amax).localGet(f).f32Abs().f32Max().localSet(amax); // f32.max: NaN wins
        c.localGet(amax).localGet(f).localGet(f).f32Sub().f32Add().localSet(amax); // ±Inf: Inf - Inf = NaN
      },
    ));
    // amax = max of the lanes and the tail, plus the lanes of `bad` (0, or NaN for a non-finite value)
    c.localGet(mx).f32x4ExtractLane(0).localGet(mx).f32x4ExtractLane(1).f32Max();
    c.localGet(mx).f32x4ExtractLane(2).localGet(mx).f32x4ExtractLane(3).f32Max().f32Max().localGet(amax).f32Max();
    c.localGet(bad).f32x4ExtractLane(0).localGet(bad).f32x4ExtractLane(1).f32Add();
    c.localGet(bad).f32x4ExtractLane(2).localGet(bad).f32x4ExtractLane(3).f32Add().f32Add().f32Add().localSet(amax);
    // sx = max / xmax; x · (xmax / max) rounds to [-xmax, xmax]. An all-zero row quantizes to zeros with sx 0.
    c.localGet(sx).localGet(m).i32Const(4).i32Mul().i32Add().localGet(amax).localGet(xmax).f32Div().f32Store();
    c.f32Const(0).localGet(xmax).localGet(amax).f32Div().localGet(amax).f32Const(0).f32Eq().select().localSet(inv);
    c.localGet(inv).f32x4Splat().localSet(inv4);
    c.localGet(xq).localGet(m).localGet(Kp).i32Mul().i32Const(2).i32Mul().i32Add().localSet(dst);
    c.localGet(dst).localGet(Kp).i32Const(2).i32Mul().i32Add().localSet(dEnd);
    taps(() => overTap(
      () => {
        c.localGet(dst);
        c.localGet(p).v128Load(0).localGet(inv4).f32x4Mul().localGet(magic).f32x4Add().localGet(unmagic).i32x4Add();
        c.localGet(p).v128Load(16).localGet(inv4).f32x4Mul().localGet(magic).f32x4Add().localGet(unmagic).i32x4Add();
        c.i16x8NarrowI32x4S().v128Store();
        c.localGet(dst).i32Const(16).i32Add().localSet(dst);
      },
      () => {
        // the same rounding in scalar form; |v| <= xmax fits an i16 (a non-finite row writes garbage that sx = NaN hides)
        c.localGet(dst).localGet(p).f32Load().localGet(inv).f32Mul().f32Const(12582912).f32Add().i32ReinterpretF32().i32Const(-0x4b400000).i32Add().i32Store16();
        c.localGet(dst).i32Const(2).i32Add().localSet(dst);
      },
    ));
    c.block((exit) => c.loop((top) => { // zero padding up to Kp
      c.localGet(dst).localGet(dEnd).i32GeU().brIf(exit);
      c.localGet(dst).i32Const(0).i32Store16();
      c.localGet(dst).i32Const(2).i32Add().localSet(dst);
      c.br(top);
    }));
  });
}

function emitInt8(c: WasmCode, params: WasmLocal[], R: number, U: number): void {
  const [xq, sx, w, b, y, Kp, N, n0, n1, alpha, act] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const i32 = () => c.local('i32');
  const [n, blockBytes, xRowBytes, yRowBytes, xk, left, wp, yn] = Array.from({ length: 8 }, i32);
  const acc = Array.from({ length: R }, () => Array.from({ length: 4 }, () => c.local('v128')));
  const xa = Array.from({ length: R }, () => c.local('v128'));
  const xb = Array.from({ length: R }, () => c.local('v128'));
  const wv = c.local('v128'), lo = c.local('v128'), hi = c.local('v128'), t0 = c.local('v128'), t1 = c.local('v128'), v = c.local('v128');
  const rs = Array.from({ length: R }, () => c.local('v128')); // splat(sx[r] · alpha)
  const zero4 = c.local('v128');
  const fa = c.local('f32');

  c.localGet(Kp).i32Const(4).i32Mul().i32Const(16).i32Add().localSet(blockBytes);
  c.localGet(Kp).i32Const(2).i32Mul().localSet(xRowBytes);
  c.localGet(N).i32Const(4).i32Mul().localSet(yRowBytes);
  for (let r = 0; r < R; r++) c.localGet(sx).f32Load(4 * r).localGet(alpha).f32Mul().f32x4Splat().localSet(rs[r]!);
  // Byte offsets of rows 1..R-1 in xq and y, once.
  const xOff = Array.from({ length: R }, (_, r) => (r === 0 ? undefined : i32()));
  const yOff = Array.from({ length: R }, (_, r) => (r === 0 ? undefined : i32()));
  for (let r = 1; r < R; r++) {
    c.localGet(xRowBytes).i32Const(r).i32Mul().localSet(xOff[r]!);
    c.localGet(yRowBytes).i32Const(r).i32Mul().localSet(yOff[r]!);
  }
  const xRow = (r: number) => (r > 0 ? c.localGet(xk).localGet(xOff[r]!).i32Add() : c.localGet(xk));
  const yRow = (r: number) => (r > 0 ? c.localGet(yn).localGet(yOff[r]!).i32Add() : c.localGet(yn));

  // u steps of 16 weights (64 bytes of the block: 16 per output) per loop iteration.
  const steps = (u: number) => {
    for (let st = 0; st < u; st++) {
      for (let r = 0; r < R; r++) {
        xRow(r).v128Load(32 * st).localSet(xa[r]!);
        xRow(r).v128Load(32 * st + 16).localSet(xb[r]!);
      }
      for (let j = 0; j < 4; j++) {
        c.localGet(wp).v128Load(64 * st + 16 * j).localTee(wv).i16x8ExtendLowI8x16S().localSet(lo);
        c.localGet(wv).i16x8ExtendHighI8x16S().localSet(hi);
        for (let r = 0; r < R; r++) {
          c.localGet(acc[r]![j]!).localGet(lo).localGet(xa[r]!).i32x4DotI16x8S().i32x4Add();
          c.localGet(hi).localGet(xb[r]!).i32x4DotI16x8S().i32x4Add().localSet(acc[r]![j]!);
        }
      }
    }
    c.localGet(wp).i32Const(64 * u).i32Add().localSet(wp);
    c.localGet(xk).i32Const(32 * u).i32Add().localSet(xk);
    c.localGet(left).i32Const(u).i32Sub().localSet(left);
  };

  // One block of 4 outputs per iteration: n = n0, n0 + 4, ... < n1 (n0 is a multiple of 4).
  c.localGet(w).localGet(n0).i32Const(2).i32ShrU().localGet(blockBytes).i32Mul().i32Add().localSet(wp);
  c.for(n, () => c.localGet(n0), () => c.localGet(n1), 4, () => {
    for (let r = 0; r < R; r++) for (let j = 0; j < 4; j++) c.localGet(zero4).localSet(acc[r]![j]!);
    c.localGet(xq).localSet(xk);
    c.localGet(Kp).i32Const(4).i32ShrU().localSet(left);
    for (const u of U > 1 ? [U, 1] : [1]) {
      c.block((exit) => {
        c.localGet(left).i32Const(u).i32LtS().brIf(exit);
        c.loop((top) => {
          steps(u);
          c.localGet(left).i32Const(u).i32GeS().brIf(top);
        });
      });
    }
    // wp is at the block's 4 scales now. Per row: the 4 accumulators → f32 → lane sums [a, b, c, d] (a transpose-add),
    // then y[r, n..n+4] = sums · sx[r] · alpha · s[n..n+4] + b[n..n+4].
    c.localGet(y).localGet(n).i32Const(4).i32Mul().i32Add().localSet(yn);
    for (let r = 0; r < R; r++) {
      const a = acc[r]!;
      for (let j = 0; j < 4; j++) c.localGet(a[j]!).f32x4ConvertI32x4S().localSet(a[j]!);
      // [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d; then lanes [0,1] + [2,3]
      c.localGet(a[0]!).localGet(a[1]!).i32x4Shuffle([0, 4, 1, 5]).localGet(a[0]!).localGet(a[1]!).i32x4Shuffle([2, 6, 3, 7]).f32x4Add().localSet(t0);
      c.localGet(a[2]!).localGet(a[3]!).i32x4Shuffle([0, 4, 1, 5]).localGet(a[2]!).localGet(a[3]!).i32x4Shuffle([2, 6, 3, 7]).f32x4Add().localSet(t1);
      c.localGet(t0).localGet(t1).i32x4Shuffle([0, 1, 4, 5]).localGet(t0).localGet(t1).i32x4Shuffle([2, 3, 6, 7]).f32x4Add();
      c.localGet(rs[r]!).f32x4Mul().localGet(wp).v128Load().f32x4Mul().localSet(v);
      emitStore4(c, { v, fa, zero4, n, n1, b, act }, 0, () => yRow(r));
    }
    c.localGet(wp).i32Const(16).i32Add().localSet(wp); // past the scales: the next block
  });
}

function emitPanel(c: WasmCode, params: WasmLocal[], R: number): void {
  const [xq, sx, w, b, y, Kp, N, n0, n1, alpha, act] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const i32 = () => c.local('i32');
  const [n, panelBytes, xRowBytes, yRowBytes, wp, yn, xEnd] = Array.from({ length: 7 }, i32);
  const xp = Array.from({ length: R }, i32); // row r's x pointer, advanced one pair (4 bytes) per step
  const acc = Array.from({ length: R }, () => [c.local('v128'), c.local('v128')] as const); // outputs 0..3, 4..7
  const wlo = c.local('v128'), whi = c.local('v128'), xb = c.local('v128'), v = c.local('v128');
  const rs = Array.from({ length: R }, () => c.local('v128')); // splat(sx[r] · alpha)
  const zero4 = c.local('v128');
  const fa = c.local('f32');

  c.localGet(Kp).i32Const(8).i32Mul().i32Const(32).i32Add().localSet(panelBytes);
  c.localGet(Kp).i32Const(2).i32Mul().localSet(xRowBytes);
  c.localGet(N).i32Const(4).i32Mul().localSet(yRowBytes);
  for (let r = 0; r < R; r++) c.localGet(sx).f32Load(4 * r).localGet(alpha).f32Mul().f32x4Splat().localSet(rs[r]!);

  // One panel of 8 outputs per iteration: n = n0, n0 + 8, ... < n1 (n0 is a multiple of 8).
  c.localGet(w).localGet(n0).i32Const(3).i32ShrU().localGet(panelBytes).i32Mul().i32Add().localSet(wp);
  c.for(n, () => c.localGet(n0), () => c.localGet(n1), 8, () => {
    for (let r = 0; r < R; r++) {
      c.localGet(zero4).localSet(acc[r]![0]);
      c.localGet(zero4).localSet(acc[r]![1]);
      if (r === 0) c.localGet(xq).localSet(xp[0]!);
      else c.localGet(xp[r - 1]!).localGet(xRowBytes).i32Add().localSet(xp[r]!);
    }
    c.localGet(xq).localGet(xRowBytes).i32Add().localSet(xEnd);
    // Kp/2 pairs (Kp >= 8)
    c.loop((top) => {
      c.localGet(wp).v128Load8x8S(0).localSet(wlo);
      c.localGet(wp).v128Load8x8S(8).localSet(whi);
      for (let r = 0; r < R; r++) {
        c.localGet(xp[r]!).v128Load32Splat().localSet(xb);
        c.localGet(acc[r]![0]).localGet(xb).localGet(wlo).i32x4DotI16x8S().i32x4Add().localSet(acc[r]![0]);
        c.localGet(acc[r]![1]).localGet(xb).localGet(whi).i32x4DotI16x8S().i32x4Add().localSet(acc[r]![1]);
      }
      c.localGet(wp).i32Const(16).i32Add().localSet(wp);
      for (let r = 1; r < R; r++) c.localGet(xp[r]!).i32Const(4).i32Add().localSet(xp[r]!);
      c.localGet(xp[0]!).i32Const(4).i32Add().localTee(xp[0]!).localGet(xEnd).i32LtU().brIf(top);
    });
    // wp is at the panel's 8 scales: y[r, n + 4h ..] = acc · sx[r] · alpha · s + b, per half h
    c.localGet(y).localGet(n).i32Const(4).i32Mul().i32Add().localSet(yn);
    for (let r = 0; r < R; r++) {
      for (let h = 0; h < 2; h++) {
        c.localGet(acc[r]![h]).f32x4ConvertI32x4S().localGet(rs[r]!).f32x4Mul().localGet(wp).v128Load(16 * h).f32x4Mul().localSet(v);
        emitStore4(c, { v, fa, zero4, n, n1, b, act }, 4 * h, () => c.localGet(yn));
      }
      if (r + 1 < R) c.localGet(yn).localGet(yRowBytes).i32Add().localSet(yn);
    }
    c.localGet(wp).i32Const(32).i32Add().localSet(wp); // past the scales: the next panel
  });
}

/**
 * The kernels' epilogue for four outputs: `v` holds columns n + first .. n + first + 3 of a row, scaled; adds the bias
 * (b = 0: none), applies relu when `act` says so and stores them at the address `yAddr` pushes plus 4·first bytes —
 * as one vector when all four are below n1, else lane by lane for those that are (the last, partial group when N is
 * not a multiple of the group).
 */
function emitStore4(
  c: WasmCode, l: { v: WasmLocal; fa: WasmLocal; zero4: WasmLocal; n: WasmLocal; n1: WasmLocal; b: WasmLocal; act: WasmLocal }, first: number, yAddr: () => void,
): void {
  const { v, fa, zero4, n, n1, b, act } = l;
  const bias = () => c.localGet(b).localGet(n).i32Const(4).i32Mul().i32Add();
  c.localGet(n).i32Const(first + 4).i32Add().localGet(n1).i32LeS().if(
    () => {
      c.localGet(b).if(() => {
        c.localGet(v);
        bias();
        c.v128Load(4 * first).f32x4Add().localSet(v);
      });
      c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(zero4).localGet(v).f32x4Pmax().localSet(v)); // pmax(0, v): -0 → +0
      yAddr();
      c.localGet(v).v128Store(4 * first);
    },
    () => {
      for (let j = 0; j < 4; j++) {
        c.localGet(n).i32Const(first + j).i32Add().localGet(n1).i32LtS().if(() => {
          c.localGet(v).f32x4ExtractLane(j).localSet(fa);
          c.localGet(b).if(() => {
            c.localGet(fa);
            bias();
            c.f32Load(4 * (first + j)).f32Add().localSet(fa);
          });
          c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(fa).f32Const(0).f32Max().localSet(fa));
          yAddr();
          c.localGet(fa).f32Store(4 * (first + j));
        });
      }
    },
  );
}
