import { type WasmCode, type WasmLocal, type MemoryLimits, WasmModuleBuilder, type WasmMemoryLike, webAssembly } from './wasm-emitter.js';

/*
 * The small-M matmul kernels, assembled at startup over a memory they import (tfjs-wasm's heap), so they read and
 * write tensors where they lie:
 *
 *   y[R, N] = epilogue(alpha · x[R, K] · W[K, N] + b[N])      for a fixed R (rows) per exported function
 *
 * Decoding multiplies one to a few rows by a large weight, so the time is reading W once from memory. The loop order
 * keeps W reads sequential: for each group of `kUnroll` rows of W read side by side (several sequential streams keep more loads in flight than one), add
 * x[m, k+j] · W[k+j, n:n+4] into y[m, n:n+4] for every row m — each W vector loaded once serves all R rows. x values
 * sit splatted in locals for the whole pass over the columns.
 *
 * bf16 weights are packed two per i32 (element 2i in the low half, 2i+1 in the high half — the order the bytes have in
 * memory); a 16-byte load holds 8 of them. `i32x4.shl 16` turns the low halves (the even columns) into f32s and
 * `v128.and 0xffff0000` the high halves (the odd columns): two ops per 8 weights, where extend_{low,high}_i16x8_u + shl
 * would take four. The vector loop therefore leaves each full group of 8 columns of y as [0 2 4 6 | 1 3 5 7]; one
 * shuffle pass per column block (O(N), not O(K·N)) puts them back before the epilogue.
 */

/** What the epilogue applies after `alpha · x·W + b`. Codes are part of the kernel ABI; append, never renumber. */
export const MATMUL_EPILOGUE = { none: 0, relu: 1 } as const;
export type MatMulEpilogue = keyof typeof MATMUL_EPILOGUE;

/** Weight formats a kernel reads. */
export type WeightFormat = 'f32' | 'bf16';

/** Shape of the generated loops (measured choices are in DEFAULT_VARIANT). */
export interface MatMulVariant {
  /** Largest row count with its own function; more rows run in blocks of this many (W is read once per block). */
  readonly maxRows: number;
  /** Rows of W read side by side per pass over the columns, by the function's row count (index R-1). */
  readonly kUnroll: readonly number[];
  /** Vectors (4 f32 columns, or 8 bf16 columns) per inner-loop iteration. */
  readonly nUnroll: number;
  /** Columns per block (the R×colBlock slab of y is reused while W streams past); measured best: no blocking. */
  readonly colBlock: number;
  /** Multiply-add with f32x4.relaxed_madd (one fused op where the CPU has FMA); needs relaxed SIMD in the engine. */
  readonly fma?: boolean;
}

/**
 * Measured (process CPU time, best of 15) on this repo's 2-core AMD EPYC (Zen 3) box over [M, 4096]·[4096, 4096],
 * M = 1..8, against kUnroll 4/8/16, nUnroll 1/2/4, colBlock 1024/2048/4096/8192 and maxRows 1/2/4/6/8: 8 W rows
 * per pass at M = 1 (4 was ~8% slower, 16 spills
 * ~2x slower), no column blocking (blocks of 4096 columns: 20% slower at N = 11008, 512-2048 up to 2x slower at
 * N = 4096 — W rows read in pieces stream worse, and a y row in L2 costs less than that), and row blocks of 4 (6 and 8
 * run out of the 16 vector registers). Also tried and dropped: x splats loaded inside the loop instead of held in locals, and summing the
 * 8 products as a tree before adding to y (shorter dependency chains) — no gain.
 */
export const DEFAULT_VARIANT: MatMulVariant = { maxRows: 4, kUnroll: [8, 4, 3, 2], nUnroll: 2, colBlock: 1 << 20 };

/**
 * The same with f32x4.relaxed_madd, used where the engine has relaxed SIMD (Node 20 with
 * `--experimental-wasm-relaxed-simd`; on by default in later V8): with FMA, 20-30% faster than DEFAULT_VARIANT from 4
 * rows ([4, 4096]·[4096, 4096]: 5.4 vs 6.6 ms CPU), where the kernel is compute-bound; 3 W rows per pass for 4 rows.
 */
export const FMA_VARIANT: MatMulVariant = { maxRows: 4, kUnroll: [8, 4, 3, 3], nUnroll: 1, colBlock: 1 << 20, fma: true };

/** Whether this engine accepts relaxed SIMD (f32x4.relaxed_madd), checked once by validating a one-op module. */
export function relaxedSimdAvailable(): boolean {
  if (relaxedSimd === undefined) {
    const m = new WasmModuleBuilder();
    m.func('madd', { params: ['v128', 'v128', 'v128'], results: ['v128'] }, (c, [a, b, d]) => c.localGet(a!).localGet(b!).localGet(d!).f32x4RelaxedMadd());
    relaxedSimd = (webAssembly() as unknown as { validate(bytes: Uint8Array): boolean }).validate(m.encode());
  }
  return relaxedSimd;
}
let relaxedSimd: boolean | undefined;

/** Signature of every exported kernel: pointers are byte offsets into the imported memory; `bias` 0 means none. */
export type MatMulFn = (x: number, w: number, bias: number, y: number, K: number, N: number, alpha: number, epilogue: number) => void;

/** An instantiated kernel module: `f32[R]` / `bf16[R]` handle exactly R rows (index 0 unused). */
export interface MatMulModule {
  readonly f32: readonly MatMulFn[];
  readonly bf16: readonly MatMulFn[];
  readonly variant: MatMulVariant;
  readonly bytes: number;
}

/**
 * The kernel module's bytes: `f32_r{R}` and `bf16_r{R}` for R = 1..maxRows, importing `env.memory` with `memory`'s
 * limits (a shared memory must be declared shared, with its maximum). For instantiating elsewhere (a worker).
 *
 * ```ts
 * const bytes = matMulModuleBytes(DEFAULT_VARIANT, { initial: pages, maximum: pages, shared: true });
 * ```
 */
export function matMulModuleBytes(variant: MatMulVariant = DEFAULT_VARIANT, memory: MemoryLimits = { initial: 1 }): Uint8Array {
  const colBlock = variant.colBlock;
  if (colBlock % 16 !== 0 || colBlock <= 0) throw new Error(`buildMatMulModule: colBlock ${colBlock} must be a positive multiple of 16`);
  if (variant.kUnroll.length < variant.maxRows) throw new Error(`buildMatMulModule: kUnroll needs ${variant.maxRows} entries, got ${variant.kUnroll.length}`);
  const m = new WasmModuleBuilder().importMemory('env', 'memory', memory);
  for (const format of ['f32', 'bf16'] as const) {
    for (let rows = 1; rows <= variant.maxRows; rows++) {
      m.func(`${format}_r${rows}`, { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32'], results: [] }, (c, p) =>
        emitMatMul(c, p, format, { rows, kUnroll: variant.kUnroll[rows - 1]!, nUnroll: variant.nUnroll, colBlock, fma: variant.fma ?? false }),
      );
    }
  }
  return m.encode();
}

/** The exported kernels of an instance, by format and row count. */
export function matMulFunctions(exports: Record<string, unknown>, variant: MatMulVariant): Pick<MatMulModule, 'f32' | 'bf16'> {
  const list = (format: WeightFormat) => [undefined, ...Array.from({ length: variant.maxRows }, (_, r) => exports[`${format}_r${r + 1}`])] as MatMulFn[];
  return { f32: list('f32'), bf16: list('bf16') };
}

/**
 * Assembles and instantiates the kernels over `memory`.
 *
 * ```ts
 * const mod = buildMatMulModule((tf.backend() as any).wasm.asm.memory);
 * mod.f32[1](xOffset, wOffset, 0, yOffset, K, N, 1, MATMUL_EPILOGUE.none); // y[1, N] = x[1, K] · W[K, N]
 * ```
 */
export function buildMatMulModule(memory: WasmMemoryLike, variant: MatMulVariant = DEFAULT_VARIANT, limits: MemoryLimits = { initial: 1 }): MatMulModule {
  const bytes = matMulModuleBytes(variant, limits);
  const instance = new (webAssembly().Instance)(new (webAssembly().Module)(bytes), { env: { memory } });
  return { ...matMulFunctions(instance.exports, variant), variant, bytes: bytes.length };
}

interface Shape {
  rows: number;
  kUnroll: number;
  nUnroll: number;
  colBlock: number;
  fma: boolean;
}

function emitMatMul(c: WasmCode, params: WasmLocal[], format: WeightFormat, s: Shape): void {
  const [x, w, b, y, K, N, alpha, act] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const R = s.rows;
  const bf16 = format === 'bf16';
  const vw = bf16 ? 8 : 4; // columns per vector unit
  const wElem = bf16 ? 2 : 4; // bytes of W per column
  const i32 = () => c.local('i32');
  const [nb, nEnd, k, n, limit, kEnd, wRow, yRow, xRow, o, oLimit, xk] = Array.from({ length: 12 }, i32);
  // One pointer per W row and per y row in flight: addresses are then pointer + immediate, no add per load.
  const wp = Array.from({ length: s.kUnroll }, i32);
  const yp = Array.from({ length: R }, i32);
  const xRowOff = Array.from({ length: R }, (_, r) => (r === 0 ? undefined : i32()));
  const yRowOff = Array.from({ length: R }, (_, r) => (r === 0 ? undefined : i32()));
  const wRowOff = Array.from({ length: s.kUnroll }, (_, j) => (j === 0 ? undefined : i32()));
  const splat = Array.from({ length: R }, () => Array.from({ length: s.kUnroll }, () => c.local('v128')));
  const acc = Array.from({ length: R }, () => [c.local('v128'), c.local('v128')]);
  const wv = [c.local('v128'), c.local('v128')]; // one W vector (f32) or its even and odd columns (bf16)
  const v = c.local('v128');
  const alpha4 = c.local('v128');
  const zero4 = c.local('v128');
  const fa = c.local('f32'), fb = c.local('f32');
  const wi = c.local('i32');
  const oddMask = c.local('v128');
  const vecEnd = c.local('i32');

  // Strides (bytes) and per-row offsets, once.
  c.localGet(N).i32Const(wElem).i32Mul().localSet(wRow);
  c.localGet(N).i32Const(4).i32Mul().localSet(yRow);
  c.localGet(K).i32Const(4).i32Mul().localSet(xRow);
  for (let r = 1; r < R; r++) {
    c.localGet(yRow).i32Const(r).i32Mul().localSet(yRowOff[r]!);
    c.localGet(xRow).i32Const(r).i32Mul().localSet(xRowOff[r]!);
  }
  for (let j = 1; j < s.kUnroll; j++) c.localGet(wRow).i32Const(j).i32Mul().localSet(wRowOff[j]!);
  c.localGet(alpha).f32x4Splat().localSet(alpha4);
  if (bf16) c.v128ConstI32x4([0xffff0000, 0xffff0000, 0xffff0000, 0xffff0000]).localSet(oddMask);

  /** Pushes the address of y row r at byte pointer `ptr`. */
  const yAt = (ptr: WasmLocal, r: number) => (r > 0 ? c.localGet(ptr).localGet(yRowOff[r]!).i32Add() : c.localGet(ptr));
  /** Pushes the address of W row k+j at the current column. */
  const wAt = (j: number) => c.localGet(wp[j]!);
  /** Pushes the address of y row r at the current column. */
  const ypAt = (r: number) => c.localGet(yp[r]!);

  /** Runs `vector()` over y[nb:nEnd) 4 floats at a time and `scalar()` over the rest; both address by byte offset `o`. */
  const overBlock = (vector: () => void, scalar: () => void) => {
    c.localGet(nEnd).i32Const(4).i32Mul().localSet(oLimit);
    c.for(o, () => c.localGet(nb).i32Const(4).i32Mul(), () => c.localGet(oLimit).i32Const(12).i32Sub(), 16, vector);
    c.for(o, () => c.localGet(o), () => c.localGet(oLimit), 4, scalar);
  };

  /** One pass over the block's columns adding x[:, k..k+ku) · W[k..k+ku, :] into y. */
  const kGroup = (ku: number) => {
    // Splat x[r, k+j] for every row r and j < ku.
    c.localGet(x).localGet(k).i32Const(4).i32Mul().i32Add().localSet(xk);
    const xAt = (r: number) => (r > 0 ? c.localGet(xk).localGet(xRowOff[r]!).i32Add() : c.localGet(xk));
    for (let r = 0; r < R; r++) for (let j = 0; j < ku; j++) xAt(r).v128Load32Splat(j * 4).localSet(splat[r]![j]!);
    c.localGet(w).localGet(k).localGet(wRow).i32Mul().i32Add().localGet(nb).i32Const(wElem).i32Mul().i32Add().localSet(wp[0]!);
    for (let j = 1; j < ku; j++) c.localGet(wp[0]!).localGet(wRowOff[j]!).i32Add().localSet(wp[j]!);
    c.localGet(y).localGet(nb).i32Const(4).i32Mul().i32Add().localSet(yp[0]!);
    for (let r = 1; r < R; r++) c.localGet(yp[0]!).localGet(yRowOff[r]!).i32Add().localSet(yp[r]!);
    const advance = (wBytes: number, yBytes: number) => {
      for (let j = 0; j < ku; j++) c.localGet(wp[j]!).i32Const(wBytes).i32Add().localSet(wp[j]!);
      for (let r = 0; r < R; r++) c.localGet(yp[r]!).i32Const(yBytes).i32Add().localSet(yp[r]!);
    };

    /** Loads W row j's vector at unit u into locals: f32 one; bf16 two (even columns, odd columns). */
    const loadW = (j: number, u: number, into: readonly WasmLocal[]) => {
      if (!bf16) return void wAt(j).v128Load(16 * u).localSet(into[0]!);
      // shl 16 puts the low halves (even columns) in the top of each lane; masking keeps the odd columns.
      wAt(j).v128Load(16 * u).localTee(v).i32Const(16).i32x4Shl().localSet(into[0]!);
      c.localGet(v).localGet(oddMask).v128And().localSet(into[1]!);
    };
    const halves = bf16 ? 2 : 1;
    const vectorBody = (units: number) => () => {
      for (let u = 0; u < units; u++) {
        // acc[r][h] += x[r, k+j] · W[k+j] for j in order; each W vector is loaded once and used for every row.
        for (let r = 0; r < R; r++) for (let h = 0; h < halves; h++) ypAt(r).v128Load(16 * (halves * u + h)).localSet(acc[r]![h]!);
        for (let j = 0; j < ku; j++) {
          loadW(j, u, wv);
          for (let r = 0; r < R; r++) {
            for (let h = 0; h < halves; h++) {
              if (s.fma) c.localGet(splat[r]![j]!).localGet(wv[h]!).localGet(acc[r]![h]!).f32x4RelaxedMadd().localSet(acc[r]![h]!);
              else c.localGet(acc[r]![h]!).localGet(splat[r]![j]!).localGet(wv[h]!).f32x4Mul().f32x4Add().localSet(acc[r]![h]!);
            }
          }
        }
        for (let r = 0; r < R; r++) for (let h = 0; h < halves; h++) ypAt(r).localGet(acc[r]![h]!).v128Store(16 * (halves * u + h));
      }
      advance(16 * units, 16 * units * (vw / 4));
    };
    // n runs over columns; the W and y pointers advance with it.
    c.localGet(nEnd).i32Const(vw * s.nUnroll - 1).i32Sub().localSet(limit);
    c.for(n, () => c.localGet(nb), () => c.localGet(limit), vw * s.nUnroll, vectorBody(s.nUnroll));
    if (s.nUnroll > 1) {
      c.localGet(nEnd).i32Const(vw - 1).i32Sub().localSet(limit);
      c.for(n, () => c.localGet(n), () => c.localGet(limit), vw, vectorBody(1));
    }
    // Tail columns one by one (f32) or by pairs (bf16: N is even, so pairs never straddle).
    c.for(n, () => c.localGet(n), () => c.localGet(nEnd), bf16 ? 2 : 1, () => {
      for (let r = 0; r < R; r++) {
        ypAt(r).f32Load(0).localSet(fa);
        if (bf16) ypAt(r).f32Load(4).localSet(fb);
        for (let j = 0; j < ku; j++) {
          if (!bf16) {
            c.localGet(fa).localGet(splat[r]![j]!).f32x4ExtractLane(0);
            wAt(j).f32Load(0).f32Mul().f32Add().localSet(fa);
          } else {
            wAt(j).i32Load(0).localSet(wi);
            c.localGet(fa).localGet(splat[r]![j]!).f32x4ExtractLane(0);
            c.localGet(wi).i32Const(16).i32Shl().f32ReinterpretI32().f32Mul().f32Add().localSet(fa);
            c.localGet(fb).localGet(splat[r]![j]!).f32x4ExtractLane(0);
            c.localGet(wi).i32Const(0xffff0000).i32And().f32ReinterpretI32().f32Mul().f32Add().localSet(fb);
          }
        }
        ypAt(r).localGet(fa).f32Store(0);
        if (bf16) ypAt(r).localGet(fb).f32Store(4);
      }
      advance(4, bf16 ? 8 : 4);
    });
  };

  // for each column block [nb, nEnd)
  c.for(nb, () => c.i32Const(0), () => c.localGet(N), s.colBlock, () => {
    c.localGet(nb).i32Const(s.colBlock).i32Add().localGet(N);
    c.localGet(nb).i32Const(s.colBlock).i32Add().localGet(N).i32LtS().select().localSet(nEnd);

    // y[:, block] = 0
    for (let r = 0; r < R; r++) {
      overBlock(
        () => yAt(y, r).localGet(o).i32Add().localGet(zero4).v128Store(0),
        () => yAt(y, r).localGet(o).i32Add().f32Const(0).f32Store(0),
      );
    }
    // k in groups of kUnroll, then the rest one row at a time
    c.localGet(K).i32Const(s.kUnroll - 1).i32Sub().localSet(kEnd);
    c.for(k, () => c.i32Const(0), () => c.localGet(kEnd), s.kUnroll, () => kGroup(s.kUnroll));
    if (s.kUnroll > 1) c.for(k, () => c.localGet(k), () => c.localGet(K), 1, () => kGroup(1));

    if (bf16) {
      // The vector loop left each full group of 8 columns as [0 2 4 6 | 1 3 5 7]: interleave back to column order.
      c.localGet(nEnd).localGet(nEnd).localGet(nb).i32Sub().i32Const(7).i32And().i32Sub().i32Const(4).i32Mul().i32Const(28).i32Sub().localSet(vecEnd);
      for (let r = 0; r < R; r++) {
        c.for(o, () => c.localGet(nb).i32Const(4).i32Mul(), () => c.localGet(vecEnd), 32, () => {
          yAt(y, r).localGet(o).i32Add().v128Load(0).localSet(wv[0]!);
          yAt(y, r).localGet(o).i32Add().v128Load(16).localSet(v);
          yAt(y, r).localGet(o).i32Add().localGet(wv[0]!).localGet(v).i32x4Shuffle([0, 4, 1, 5]).v128Store(0);
          yAt(y, r).localGet(o).i32Add().localGet(wv[0]!).localGet(v).i32x4Shuffle([2, 6, 3, 7]).v128Store(16);
        });
      }
    }
    // epilogue: y = act(alpha · y + b)
    for (let r = 0; r < R; r++) {
      overBlock(
        () => {
          yAt(y, r).localGet(o).i32Add().v128Load(0).localGet(alpha4).f32x4Mul().localSet(v);
          c.localGet(b).if(() => c.localGet(v).localGet(b).localGet(o).i32Add().v128Load(0).f32x4Add().localSet(v));
          c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(v).localGet(zero4).f32x4Pmax().localSet(v));
          yAt(y, r).localGet(o).i32Add().localGet(v).v128Store(0);
        },
        () => {
          yAt(y, r).localGet(o).i32Add().f32Load(0).localGet(alpha).f32Mul().localSet(fa);
          c.localGet(b).if(() => c.localGet(fa).localGet(b).localGet(o).i32Add().f32Load(0).f32Add().localSet(fa));
          c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(fa).f32Const(0).f32Max().localSet(fa));
          yAt(y, r).localGet(o).i32Add().localGet(fa).f32Store(0);
        },
      );
    }
  });
}
