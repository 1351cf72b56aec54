import { type WasmCode, type WasmLocal, type MemoryLimits, WasmModuleBuilder, type WasmMemoryLike, webAssembly } from './wasm-emitter.js';
import { MATMUL_EPILOGUE } from './matmul-module.js';

/*
 * The int8-weight kernels (weights from int8.ts: one output per row, Kp int8 then its f32 scale), over a memory they
 * import (tfjs-wasm's heap):
 *
 *   y[M, N] = epilogue(alpha · x[M, K] · dequant(W) + b[N])
 *
 * in two passes. `quantize` turns each x row into int16 (scratch [M, Kp], zero padded) with one scale per row,
 * sx = max|x| / xmax, where xmax keeps the i32 accumulators from overflowing: every accumulator lane adds K/4
 * products of at most 127 · xmax, so 127 · xmax · K/4 < 2^31 (xmax <= 32767, so the i16 dot never sees -32768²).
 * Then `int8_r{R}` computes R rows × output columns [n0, n1): per group of G = 4 outputs, each step of 16 weights
 * loads the R rows' x as two i16x8 vectors (once for the group), each output's 16 int8 weights (one load), widens
 * them to two i16x8 (extend_low/high_i8x16_s) and adds `i32x4.dot_i16x8_s` of each half into that output's
 * accumulator: 16 multiply-adds in 5 ops, no float conversion in the loop. The accumulators are converted to f32
 * and reduced across lanes at the end (a 4×4 transpose-add), then y = sum · sx[r] · s[n] · alpha + b[n].
 *
 * Decode (M <= 2) is one call over all columns: it streams W once, a quarter of float32's bytes. Larger M runs
 * row blocks over column tiles small enough to stay in L2, so W comes from memory once per tile whatever M is.
 * Addresses are compared unsigned (the heap may be above 2 GiB).
 */

/** Loop shape (measured choices in INT8_VARIANT). */
export interface Int8MatMulVariant {
  /** Largest row block with its own function (`int8_r1` .. `int8_r{maxRows}`). */
  readonly maxRows: number;
  /** Outputs per group (their accumulators stay in registers for the whole K loop), by row count (index R-1). */
  readonly group: readonly number[];
  /** Steps of 16 weights per loop iteration (immediate load offsets, one pointer update per iteration), by row count. */
  readonly kUnroll: readonly number[];
}

/** Measured choice; see docs/runtime.md ("int8 weights"). */
export const INT8_VARIANT: Int8MatMulVariant = { maxRows: 4, group: [4, 2, 2, 2], kUnroll: [1, 1, 1, 1] };

/** Signature of `quantize`: x [M, K] f32 → xq [M, Kp] int16 and sx [M] f32 (pointers are byte offsets). */
export type Int8QuantizeFn = (x: number, M: number, K: number, Kp: number, xmax: number, xq: number, sx: number) => void;

/**
 * Signature of `int8_r{R}`: R rows of xq (row stride Kp int16) and sx, the packed weight, output columns [n0, n1)
 * of y (row stride N floats); `bias` 0 means none.
 */
export type Int8MatMulFn = (xq: number, sx: number, w: number, bias: number, y: number, Kp: number, N: number, n0: number, n1: number, alpha: number, epilogue: number) => void;

/** An instantiated int8 module. */
export interface Int8MatMul {
  readonly quantize: Int8QuantizeFn;
  /** rows[R] handles exactly R rows (index 0 unused). */
  readonly rows: readonly Int8MatMulFn[];
  readonly variant: Int8MatMulVariant;
}

/**
 * The largest int16 magnitude x may be quantized to for a K-long dot product with int8 weights (see the header).
 *
 * ```ts
 * int8XMax(4096); // 16513
 * ```
 */
export function int8XMax(K: number): number {
  return Math.max(1, Math.min(32767, Math.floor((2 ** 31 - 1) / (127 * Math.ceil(Math.max(K, 4) / 4)))));
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
  if (!Number.isInteger(variant.maxRows) || variant.maxRows < 1 || variant.maxRows > 4) throw new Error(`int8MatMulModuleBytes: maxRows must be 1..4, got ${variant.maxRows}`);
  for (const key of ['group', 'kUnroll'] as const) {
    const v = variant[key];
    if (v.length < variant.maxRows || v.some((g) => !Number.isInteger(g) || g < 1 || g > 8)) throw new Error(`int8MatMulModuleBytes: ${key} needs ${variant.maxRows} entries in 1..8, got [${v}]`);
  }
  const m = new WasmModuleBuilder().importMemory('env', 'memory', memory);
  m.func('quantize', { params: ['i32', 'i32', 'i32', 'i32', 'f32', 'i32', 'i32'], results: [] }, emitQuantize);
  for (let R = 1; R <= variant.maxRows; R++) {
    m.func(`int8_r${R}`, { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32'], results: [] }, (c, p) => emitInt8(c, p, R, variant.group[R - 1]!, variant.kUnroll[R - 1]!));
  }
  return m.encode();
}

/**
 * Assembles and instantiates the int8 kernels over `memory`.
 *
 * ```ts
 * const k = buildInt8MatMul((tf.backend() as any).wasm.asm.memory);
 * k.quantize(x, 1, K, Kp, int8XMax(K), xq, sx);
 * k.rows[1](xq, sx, w, 0, y, Kp, N, 0, N, 1, MATMUL_EPILOGUE.none); // y[1, N] = x[1, K] · dequant(W)
 * ```
 */
export function buildInt8MatMul(memory: WasmMemoryLike, variant: Int8MatMulVariant = INT8_VARIANT, limits: MemoryLimits = { initial: 1 }): Int8MatMul {
  const wasm = webAssembly();
  const { exports } = new wasm.Instance(new wasm.Module(int8MatMulModuleBytes(variant, limits)), { env: { memory } });
  const rows = [undefined, ...Array.from({ length: variant.maxRows }, (_, r) => exports[`int8_r${r + 1}`])] as Int8MatMulFn[];
  return { quantize: exports.quantize as Int8QuantizeFn, rows, variant };
}

function emitQuantize(c: WasmCode, params: WasmLocal[]): void {
  const [x, M, K, Kp, xmax, xq, sx] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const i32 = () => c.local('i32');
  const [m, src, end, dst, dEnd, vEnd] = Array.from({ length: 6 }, i32);
  const mx = c.local('v128'), inv4 = c.local('v128');
  const amax = c.local('f32'), inv = c.local('f32');

  c.for(m, () => c.i32Const(0), () => c.localGet(M), 1, () => {
    c.localGet(x).localGet(m).localGet(K).i32Mul().i32Const(4).i32Mul().i32Add().localSet(src);
    c.localGet(src).localGet(K).i32Const(4).i32Mul().i32Add().localSet(end);
    // max |x| over the row: vectors of 4, then the tail
    c.f32Const(0).f32x4Splat().localSet(mx);
    c.localGet(end).i32Const(12).i32Sub().localSet(vEnd);
    c.localGet(src).localSet(dst);
    c.block((exit) => {
      c.localGet(K).i32Const(4).i32LtS().brIf(exit);
      c.loop((top) => {
        c.localGet(mx).localGet(dst).v128Load().f32x4Abs().f32x4Max().localSet(mx);
        c.localGet(dst).i32Const(16).i32Add().localTee(dst).localGet(vEnd).i32LtU().brIf(top);
      });
    });
    c.localGet(mx).f32x4ExtractLane(0).localGet(mx).f32x4ExtractLane(1).f32Max();
    c.localGet(mx).f32x4ExtractLane(2).localGet(mx).f32x4ExtractLane(3).f32Max().f32Max().localSet(amax);
    c.block((exit) => {
      c.loop((top) => {
        c.localGet(dst).localGet(end).i32GeU().brIf(exit);
        c.localGet(amax).localGet(dst).f32Load().f32Abs().f32Max().localSet(amax);
        c.localGet(dst).i32Const(4).i32Add().localSet(dst);
        c.br(top);
      });
    });
    // sx = max / xmax; x · (xmax / max) rounds to [-xmax, xmax]. An all-zero row quantizes to zeros with sx 0.
    c.localGet(sx).localGet(m).i32Const(4).i32Mul().i32Add().localGet(amax).localGet(xmax).f32Div().f32Store();
    c.f32Const(0).localGet(xmax).localGet(amax).f32Div().localGet(amax).f32Const(0).f32Eq().select().localSet(inv);
    c.localGet(inv).f32x4Splat().localSet(inv4);
    c.localGet(xq).localGet(m).localGet(Kp).i32Mul().i32Const(2).i32Mul().i32Add().localSet(dst);
    c.localGet(dst).localGet(Kp).i32Const(2).i32Mul().i32Add().localSet(dEnd);
    // 8 values per step: two f32x4 → rounded i32x4 → one i16x8
    c.localGet(end).i32Const(28).i32Sub().localSet(vEnd);
    c.block((exit) => {
      c.localGet(K).i32Const(8).i32LtS().brIf(exit);
      c.loop((top) => {
        c.localGet(dst);
        c.localGet(src).v128Load(0).localGet(inv4).f32x4Mul().f32x4Nearest().i32x4TruncSatF32x4S();
        c.localGet(src).v128Load(16).localGet(inv4).f32x4Mul().f32x4Nearest().i32x4TruncSatF32x4S();
        c.i16x8NarrowI32x4S().v128Store();
        c.localGet(dst).i32Const(16).i32Add().localSet(dst);
        c.localGet(src).i32Const(32).i32Add().localTee(src).localGet(vEnd).i32LtU().brIf(top);
      });
    });
    c.block((exit) => {
      c.loop((top) => {
        c.localGet(src).localGet(end).i32GeU().brIf(exit);
        c.localGet(dst).localGet(src).f32Load().localGet(inv).f32Mul().f32Nearest().i32TruncF32S().i32Store16();
        c.localGet(dst).i32Const(2).i32Add().localSet(dst);
        c.localGet(src).i32Const(4).i32Add().localSet(src);
        c.br(top);
      });
    });
    // zero padding up to Kp
    c.block((exit) => {
      c.loop((top) => {
        c.localGet(dst).localGet(dEnd).i32GeU().brIf(exit);
        c.localGet(dst).i32Const(0).i32Store16();
        c.localGet(dst).i32Const(2).i32Add().localSet(dst);
        c.br(top);
      });
    });
  });
}

function emitInt8(c: WasmCode, params: WasmLocal[], R: number, G: number, U: number): void {
  const [xq, sx, w, b, y, Kp, N, n0, n1, alpha, act] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const i32 = () => c.local('i32');
  const [n, rowBytes, xRowBytes, yRowBytes, xk, left, wn, lastFull] = Array.from({ length: 8 }, i32);
  const wp = Array.from({ length: G }, i32);
  const acc = Array.from({ length: R }, () => Array.from({ length: G }, () => c.local('v128')));
  const xa = Array.from({ length: R }, () => c.local('v128'));
  const xb = Array.from({ length: R }, () => c.local('v128'));
  const wv = c.local('v128'), lo = c.local('v128'), hi = c.local('v128'), t0 = c.local('v128'), t1 = c.local('v128');
  const rs = Array.from({ length: R }, () => c.local('f32')); // sx[r] · alpha
  const fa = c.local('f32');
  const zero4 = c.local('v128');

  c.localGet(Kp).i32Const(4).i32Add().localSet(rowBytes);
  c.localGet(Kp).i32Const(2).i32Mul().localSet(xRowBytes);
  c.localGet(N).i32Const(4).i32Mul().localSet(yRowBytes);
  for (let r = 0; r < R; r++) c.localGet(sx).f32Load(4 * r).localGet(alpha).f32Mul().localSet(rs[r]!);

  // Byte offsets of rows 1..R-1 in xq and y, once.
  const xOff = Array.from({ length: R }, (_, r) => (r === 0 ? undefined : i32()));
  const yOff = Array.from({ length: R }, (_, r) => (r === 0 ? undefined : i32()));
  for (let r = 1; r < R; r++) {
    c.localGet(xRowBytes).i32Const(r).i32Mul().localSet(xOff[r]!);
    c.localGet(yRowBytes).i32Const(r).i32Mul().localSet(yOff[r]!);
  }
  /** Pushes the address of row r of xq (stride xRowBytes) or y (stride yRowBytes) at `base`. */
  const rowAt = (base: WasmLocal, stride: WasmLocal, r: number) => {
    c.localGet(base);
    if (r > 0) c.localGet((stride === xRowBytes ? xOff : yOff)[r]!).i32Add();
  };

  /** One group of g outputs starting at column n: the K loop, then the epilogue. */
  const group = (g: number) => {
    c.localGet(w).localGet(n).localGet(rowBytes).i32Mul().i32Add().localSet(wn);
    for (let j = 0; j < g; j++) {
      if (j === 0) c.localGet(wn).localSet(wp[0]!);
      else c.localGet(wp[j - 1]!).localGet(rowBytes).i32Add().localSet(wp[j]!);
    }
    for (let r = 0; r < R; r++) for (let j = 0; j < g; j++) c.localGet(zero4).localSet(acc[r]![j]!);
    // u steps of 16 weights per loop iteration while at least u remain, then one at a time.
    const steps = (u: number) => {
      for (let st = 0; st < u; st++) {
        for (let r = 0; r < R; r++) {
          rowAt(xk, xRowBytes, r);
          c.v128Load(32 * st).localSet(xa[r]!);
          rowAt(xk, xRowBytes, r);
          c.v128Load(32 * st + 16).localSet(xb[r]!);
        }
        for (let j = 0; j < g; j++) {
          c.localGet(wp[j]!).v128Load(16 * st).localTee(wv).i16x8ExtendLowI8x16S().localSet(lo);
          c.localGet(wv).i16x8ExtendHighI8x16S().localSet(hi);
          for (let r = 0; r < R; r++) {
            c.localGet(acc[r]![j]!).localGet(lo).localGet(xa[r]!).i32x4DotI16x8S().i32x4Add();
            c.localGet(hi).localGet(xb[r]!).i32x4DotI16x8S().i32x4Add().localSet(acc[r]![j]!);
          }
        }
      }
      for (let j = 0; j < g; j++) c.localGet(wp[j]!).i32Const(16 * u).i32Add().localSet(wp[j]!);
      c.localGet(xk).i32Const(32 * u).i32Add().localSet(xk);
      c.localGet(left).i32Const(u).i32Sub().localSet(left);
    };
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
    // Epilogue: per row, the g accumulators → f32 sums → y[r, n + j] = sum · sx[r] · alpha · s[n + j] + b[n + j].
    for (let r = 0; r < R; r++) {
      for (let j = 0; j < g; j++) c.localGet(acc[r]![j]!).f32x4ConvertI32x4S().localSet(acc[r]![j]!);
      for (let j0 = 0; j0 < g; j0 += 4) {
        const a = (j: number) => (j0 + j < g ? acc[r]![j0 + j]! : zero4);
        if (g > 1) {
          // [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d; then lanes [0,1]+[2,3] → [a, b, c, d]
          c.localGet(a(0)).localGet(a(1)).i32x4Shuffle([0, 4, 1, 5]).localGet(a(0)).localGet(a(1)).i32x4Shuffle([2, 6, 3, 7]).f32x4Add().localSet(t0);
          c.localGet(a(2)).localGet(a(3)).i32x4Shuffle([0, 4, 1, 5]).localGet(a(2)).localGet(a(3)).i32x4Shuffle([2, 6, 3, 7]).f32x4Add().localSet(t1);
          c.localGet(t0).localGet(t1).i32x4Shuffle([0, 1, 4, 5]).localGet(t0).localGet(t1).i32x4Shuffle([2, 3, 6, 7]).f32x4Add().localSet(t0);
        }
        for (let j = j0; j < Math.min(g, j0 + 4); j++) {
          if (g > 1) c.localGet(t0).f32x4ExtractLane(j - j0);
          else c.localGet(acc[r]![0]!).f32x4ExtractLane(0).localGet(acc[r]![0]!).f32x4ExtractLane(1).f32Add().localGet(acc[r]![0]!).f32x4ExtractLane(2).localGet(acc[r]![0]!).f32x4ExtractLane(3).f32Add().f32Add();
          // the scale sits right after output (n + j)'s Kp weights
          c.localGet(rs[r]!).f32Mul().localGet(wn).localGet(Kp).i32Add().f32Load(0).f32Mul().localSet(fa);
          if (j < g - 1) c.localGet(wn).localGet(rowBytes).i32Add().localSet(wn);
          c.localGet(b).if(() => c.localGet(fa).localGet(b).localGet(n).i32Const(4).i32Mul().i32Add().f32Load(4 * j).f32Add().localSet(fa));
          c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(fa).f32Const(0).f32Max().localSet(fa));
          rowAt(y, yRowBytes, r);
          c.localGet(n).i32Const(4).i32Mul().i32Add().localGet(fa).f32Store(4 * j);
        }
      }
      // wn walked to output n+g-1 for this row; back to n for the next row's scales
      if (r < R - 1 && g > 1) c.localGet(wn).localGet(rowBytes).i32Const(g - 1).i32Mul().i32Sub().localSet(wn);
    }
  };

  c.localGet(n1).i32Const(G - 1).i32Sub().localSet(lastFull);
  c.for(n, () => c.localGet(n0), () => c.localGet(lastFull), G, () => group(G));
  c.for(n, () => c.localGet(n), () => c.localGet(n1), 1, () => group(1));
}
