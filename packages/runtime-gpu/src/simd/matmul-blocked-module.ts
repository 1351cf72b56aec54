import { type WasmCode, type WasmLocal, type MemoryLimits, WasmModuleBuilder, type WasmMemoryLike, webAssembly } from './wasm-emitter.js';
import { MATMUL_EPILOGUE, type WeightFormat } from './matmul-module.js';

/*
 * The many-row kernels (4..16 rows: a batch of decoding sessions), float32 and bf16 weights, one function each for any M:
 *
 *   y[M, N] = epilogue(alpha · x[M, K] · W[K, N] + b[N])
 *
 * With 4+ rows the work is the multiply-adds, not reading W (matmul-module.ts's kernels run such M as blocks of 4 rows,
 * each a full pass over W that loads and stores y for every few rows of W). Here accumulators for a block of
 * `rowBlock` rows × `nUnroll` column vectors stay in registers over a panel of `kPanel` rows of W: each W vector is
 * loaded once per row block, each x value is splatted straight from memory (v128.load32_splat) as it is used, and y
 * is touched once per panel. Loop order: panel (W[k0 : k0+kPanel, :]) → column group → row block, so the row blocks
 * after the first find the group's W lines in L1, and W is read from memory once per call whatever M is. Across
 * column groups each W row of the panel is read sequentially (kPanel streams, as the prefetchers like them).
 *
 * Two scratch layouts keep every address in the inner loop a pointer plus a constant (no per-row pointers, no adds):
 *   xP[block][K][rowBlock]     x packed so row block b's x[·, k] values are adjacent (the last block's are padded);
 *   yP[block][N/4][rowBlock][4] the partial sums, so a block's accumulators for a column vector are adjacent.
 * The epilogue writes y = act(alpha · yP + b) in y's own layout; the last N mod 4 columns are a scalar loop.
 *
 * bf16 weights (packed two per i32 as in matmul-module.ts) go in groups of 8 columns: one 16-byte load, widened
 * with `i32x4.shl 16` (even columns) and `v128.and 0xffff0000` (odd columns) into two accumulator vectors per row, so
 * a group's sums sit as [0 2 4 6 | 1 3 5 7]; the epilogue shuffles them back. The last N mod 8 columns are scalar.
 * The scratch (`blockedScratchBytes`) is the caller's: a temporary on tfjs-wasm's heap.
 */

/** Loop shape of the blocked kernel (measured choices in BLOCKED_VARIANT). */
export interface BlockedMatMulVariant {
  /** Rows of x whose accumulators sit in registers together (rowBlock × nUnroll of the 16 vector registers). */
  readonly rowBlock: number;
  /** Rows of W per panel: the accumulators stay in registers across them. */
  readonly kPanel: number;
  /** Column vectors (4 columns each) per register block. */
  readonly nUnroll: number;
  /** f32x4.relaxed_madd instead of mul + add (needs relaxed SIMD in the engine). */
  readonly fma?: boolean;
}

/**
 * Signature of the blocked kernel: pointers are byte offsets into the imported memory; `bias` 0 means none; `scratch`
 * points at blockedScratchBytes(variant, M, K, N) bytes (8-byte aligned) the kernel may overwrite.
 */
export type BlockedMatMulFn = (x: number, w: number, bias: number, y: number, M: number, K: number, N: number, alpha: number, epilogue: number, scratch: number) => void;

/**
 * Measured (process CPU time, best of 9, machine busy, one run) over [M, 4096]·[4096, 4096] and
 * [M, 1024]·[1024, 3072], M = 4, 8, 16 (and 5, 6, 9, 13), against rowBlock 2/3/4/5/6/8 × nUnroll 1-4 (4 × 2 best:
 * 8 accumulators + 2 W vectors + a splat + a product fit the 16 registers; 3 × 3, 5 × 2, 6 × 2 and 8 × 1 spill or
 * waste rows, 10-60% slower), kPanel 4/6/8/16/32 (8; from 16 the panel's W lines, N·4 bytes apart, collide in L1's
 * sets: 40% slower at N = 4096), W panels packed into scratch first (sequential, but the copy is one more pass over
 * W: 50% slower at 4 rows), and 2 or 4 k steps per loop iteration (TurboFan hoists their loads to the top again:
 * 25-50% slower).
 */
export const BLOCKED_VARIANT: BlockedMatMulVariant = { rowBlock: 4, kPanel: 8, nUnroll: 2 };

/** The same with fused multiply-add, for engines with relaxed SIMD. */
export const BLOCKED_FMA_VARIANT: BlockedMatMulVariant = { ...BLOCKED_VARIANT, fma: true };

/** Bytes of scratch the blocked kernel needs for M rows: x packed (padded to whole row blocks) and the partial sums. */
export function blockedScratchBytes(variant: BlockedMatMulVariant, M: number, K: number, N: number): number {
  const mPad = Math.ceil(M / variant.rowBlock) * variant.rowBlock;
  return 4 * mPad * (K + (N & ~3));
}

/** The blocked kernels of one instance: float32 W [K, N], and bf16 W packed [K, N/2] (int32). */
export interface BlockedMatMul {
  readonly f32: BlockedMatMulFn;
  readonly bf16: BlockedMatMulFn;
}

/**
 * The blocked kernels' module bytes: exports `f32_blocked` and `bf16_blocked`, importing `env.memory` with `memory`'s limits.
 *
 * ```ts
 * const bytes = blockedMatMulModuleBytes(BLOCKED_VARIANT, { initial: 1 });
 * ```
 */
export function blockedMatMulModuleBytes(variant: BlockedMatMulVariant = BLOCKED_VARIANT, memory: MemoryLimits = { initial: 1 }): Uint8Array {
  for (const [name, v] of [['rowBlock', variant.rowBlock], ['kPanel', variant.kPanel], ['nUnroll', variant.nUnroll]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 64) throw new Error(`blockedMatMulModuleBytes: ${name} must be an integer in 1..64, got ${v}`);
  }
  const m = new WasmModuleBuilder().importMemory('env', 'memory', memory);
  for (const format of ['f32', 'bf16'] as const) {
    m.func(`${format}_blocked`, { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32', 'i32', 'i32'], results: [] }, (c, p) => emitBlocked(c, p, variant, format));
  }
  return m.encode();
}

/**
 * Assembles and instantiates the blocked kernels over `memory`.
 *
 * ```ts
 * const kernels = buildBlockedMatMul((tf.backend() as any).wasm.asm.memory);
 * // y[8, N] = x[8, K] · W[K, N], with blockedScratchBytes(BLOCKED_VARIANT, 8, K, N) bytes at `scratch`
 * kernels.f32(xOffset, wOffset, 0, yOffset, 8, K, N, 1, MATMUL_EPILOGUE.none, scratch);
 * ```
 */
export function buildBlockedMatMul(memory: WasmMemoryLike, variant: BlockedMatMulVariant = BLOCKED_VARIANT, limits: MemoryLimits = { initial: 1 }): BlockedMatMul {
  const wasm = webAssembly();
  const { exports } = new wasm.Instance(new wasm.Module(blockedMatMulModuleBytes(variant, limits)), { env: { memory } });
  return { f32: exports.f32_blocked as BlockedMatMulFn, bf16: exports.bf16_blocked as BlockedMatMulFn };
}

function emitBlocked(c: WasmCode, params: WasmLocal[], s: BlockedMatMulVariant, format: WeightFormat): void {
  const [x, w, b, y, M, K, N, alpha, act, scratch] = params as [WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal, WasmLocal];
  const bf16 = format === 'bf16';
  // Columns per W load and accumulator vectors per W load; bf16 runs one load (8 columns) per group.
  const vw = bf16 ? 8 : 4, halves = bf16 ? 2 : 1, wElem = bf16 ? 2 : 4;
  const R = s.rowBlock, KP = s.kPanel, NU = bf16 ? 1 : s.nUnroll;
  const i32 = () => c.local('i32');
  const [fullBlocks, tailRows, xj, wEnd, mPad, blocks, n4, xP, yP, k0, kEnd, g, gEnd, blk, xb, yb, wk, wj, m, k, o, src, dst, wRow, yRow, wi] = Array.from({ length: 26 }, i32);
  const blockBytes = i32();
  const acc = Array.from({ length: R }, () => Array.from({ length: NU * halves }, () => c.local('v128')));
  const wv = Array.from({ length: NU * halves }, () => c.local('v128'));
  const v2 = c.local('v128');
  const sv = c.local('v128');
  const v = c.local('v128');
  const alpha4 = c.local('v128');
  const zero4 = c.local('v128');
  const fa = c.local('f32');

  c.localGet(M).i32Const(R - 1).i32Add().i32Const(R).i32DivU().localTee(blocks).i32Const(R).i32Mul().localSet(mPad);
  c.localGet(M).i32Const(R).i32DivU().localSet(fullBlocks);
  c.localGet(M).i32Const(R).i32RemU().localSet(tailRows);
  c.localGet(N).i32Const(-vw).i32And().localSet(n4); // columns the vector loops cover
  c.localGet(N).i32Const(wElem).i32Mul().localSet(wRow);
  c.localGet(N).i32Const(4).i32Mul().localSet(yRow);
  c.localGet(scratch).localSet(xP);
  c.localGet(scratch).localGet(mPad).localGet(K).i32Mul().i32Const(4).i32Mul().i32Add().localSet(yP);
  c.localGet(n4).i32Const(R * 4).i32Mul().localSet(blockBytes); // one block's slab of yP

  // xP[m / R][k][m % R] = x[m, k], zero for the padding rows
  c.for(m, () => c.i32Const(0), () => c.localGet(mPad), 1, () => {
    c.localGet(xP).localGet(m).i32Const(R).i32DivU().localGet(K).i32Mul().i32Const(R).i32Mul().localGet(m).i32Const(R).i32RemU().i32Add().i32Const(4).i32Mul().i32Add().localSet(dst);
    c.localGet(x).localGet(m).localGet(K).i32Mul().i32Const(4).i32Mul().i32Add().localSet(src);
    c.for(k, () => c.i32Const(0), () => c.localGet(K), 1, () => {
      c.localGet(dst);
      c.localGet(m).localGet(M).i32LtS().if(() => c.localGet(src).f32Load(0).localSet(fa), () => c.f32Const(0).localSet(fa));
      c.localGet(fa).f32Store(0);
      c.localGet(src).i32Const(4).i32Add().localSet(src);
      c.localGet(dst).i32Const(4 * R).i32Add().localSet(dst);
    });
  });
  // yP = 0
  c.for(o, () => c.i32Const(0), () => c.localGet(mPad).localGet(n4).i32Mul().i32Const(4).i32Mul(), 16, () => c.localGet(yP).localGet(o).i32Add().localGet(zero4).v128Store(0));

  /**
   * acc[block, g..g+nu) += xP[block, k0..k0+kp) · W[k0..k0+kp, g..g+nu); xb, yb, wk point at the block's data.
   * The k steps are a real loop, not unrolled: TurboFan hoists every load of straight-line code to its top, and with
   * kp·(R + nu) loads in flight the accumulators no longer fit in registers (measured: 2-4x slower).
   */
  const registerBlock = (kp: number, units: number, rows: number) => {
    const nu = units * halves; // accumulator vectors per row
    for (let r = 0; r < rows; r++) for (let u = 0; u < nu; u++) c.localGet(yb).v128Load(16 * (u * R + r)).localSet(acc[r]![u]!);
    c.localGet(xb).localSet(xj);
    c.localGet(wk).i32Const(kp).localGet(wRow).i32Mul().i32Add().localSet(wEnd);
    c.localGet(wk).localSet(wj);
    // kp >= 1: test at the bottom
    c.loop((top) => {
      for (let u = 0; u < units; u++) {
        if (!bf16) c.localGet(wj).v128Load(16 * u).localSet(wv[u]!);
        else {
          // shl 16 puts the low halves (even columns) in the top of each lane; the mask keeps the odd columns
          c.localGet(wj).v128Load(16 * u).localTee(v2).i32Const(16).i32x4Shl().localSet(wv[2 * u]!);
          c.localGet(v2).v128ConstI32x4([0xffff0000, 0xffff0000, 0xffff0000, 0xffff0000]).v128And().localSet(wv[2 * u + 1]!);
        }
      }
      for (let r = 0; r < rows; r++) {
        c.localGet(xj).v128Load32Splat(4 * r).localSet(sv);
        for (let u = 0; u < nu; u++) {
          if (s.fma) c.localGet(sv).localGet(wv[u]!).localGet(acc[r]![u]!).f32x4RelaxedMadd().localSet(acc[r]![u]!);
          else c.localGet(acc[r]![u]!).localGet(sv).localGet(wv[u]!).f32x4Mul().f32x4Add().localSet(acc[r]![u]!);
        }
      }
      c.localGet(xj).i32Const(4 * R).i32Add().localSet(xj);
      c.localGet(wj).localGet(wRow).i32Add().localTee(wj).localGet(wEnd).i32LtU().brIf(top);
    });
    for (let r = 0; r < rows; r++) for (let u = 0; u < nu; u++) c.localGet(yb).localGet(acc[r]![u]!).v128Store(16 * (u * R + r));
  };

  /** One panel of kp rows of W at k0: column groups of nu vectors (then single vectors), every row block. */
  const panel = (kp: number) => {
    const groups = (nu: number, from: () => void) => {
      c.localGet(n4).i32Const(vw * nu - 1).i32Sub().localSet(gEnd);
      c.for(g, from, () => c.localGet(gEnd), vw * nu, () => {
        c.localGet(w).localGet(k0).localGet(wRow).i32Mul().i32Add().localGet(g).i32Const(wElem).i32Mul().i32Add().localSet(wk);
        c.localGet(xP).localGet(k0).i32Const(4 * R).i32Mul().i32Add().localSet(xb);
        c.localGet(yP).localGet(g).i32Const(4 * R).i32Mul().i32Add().localSet(yb);
        c.for(blk, () => c.i32Const(0), () => c.localGet(fullBlocks), 1, () => {
          registerBlock(kp, nu, R);
          c.localGet(xb).localGet(K).i32Const(4 * R).i32Mul().i32Add().localSet(xb);
          c.localGet(yb).localGet(blockBytes).i32Add().localSet(yb);
        });
        // The last M mod R rows: a block with fewer accumulators (computing padding rows would cost a whole block).
        for (let rows = 1; rows < R; rows++) c.localGet(tailRows).i32Const(rows).i32Eq().if(() => registerBlock(kp, nu, rows));
      });
    };
    groups(NU, () => c.i32Const(0));
    if (NU > 1) groups(1, () => c.localGet(g));
  };
  c.localGet(K).i32Const(KP - 1).i32Sub().localSet(kEnd);
  c.for(k0, () => c.i32Const(0), () => c.localGet(kEnd), KP, () => panel(KP));
  if (KP > 1) c.for(k0, () => c.localGet(k0), () => c.localGet(K), 1, () => panel(1));

  // Set only now: a vector live across the panel loop would take one of the accumulators' registers.
  c.localGet(alpha).f32x4Splat().localSet(alpha4);
  // Epilogue: y[m, n] = act(alpha · sum + b[n]); the sums of the first n4 columns are in yP, the rest are summed here.
  /** y[m, o/4 .. o/4+4) = act(alpha · v + b) for the vector in `v`, at byte offset `o` (+ `plus`) of the row. */
  const finish = (plus: number) => {
    c.localGet(v).localGet(alpha4).f32x4Mul().localSet(v);
    c.localGet(b).if(() => c.localGet(v).localGet(b).localGet(o).i32Add().v128Load(plus).f32x4Add().localSet(v));
    c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(v).localGet(zero4).f32x4Pmax().localSet(v));
    c.localGet(dst).localGet(o).i32Add().localGet(v).v128Store(plus);
  };
  c.for(m, () => c.i32Const(0), () => c.localGet(M), 1, () => {
    c.localGet(y).localGet(m).localGet(yRow).i32Mul().i32Add().localSet(dst);
    // yb: this row's first vector in yP; a group's vectors are R·16 bytes apart, groups vw·R·4 bytes
    c.localGet(yP).localGet(m).i32Const(R).i32DivU().localGet(blockBytes).i32Mul().i32Add().localGet(m).i32Const(R).i32RemU().i32Const(16).i32Mul().i32Add().localSet(yb);
    c.for(o, () => c.i32Const(0), () => c.localGet(n4).i32Const(4).i32Mul(), 4 * vw, () => {
      if (!bf16) {
        c.localGet(yb).v128Load(0).localSet(v);
        finish(0);
      } else {
        // [0 2 4 6] and [1 3 5 7] back to column order
        c.localGet(yb).v128Load(0).localGet(yb).v128Load(16 * R).i32x4Shuffle([2, 6, 3, 7]).localSet(v2);
        c.localGet(yb).v128Load(0).localGet(yb).v128Load(16 * R).i32x4Shuffle([0, 4, 1, 5]).localSet(v);
        finish(0);
        c.localGet(v2).localSet(v);
        finish(16);
      }
      c.localGet(yb).i32Const(16 * R * halves).i32Add().localSet(yb);
    });
    c.for(o, () => c.localGet(n4).i32Const(4).i32Mul(), () => c.localGet(yRow), 4, () => {
      c.f32Const(0).localSet(fa);
      c.localGet(x).localGet(m).localGet(K).i32Mul().i32Const(4).i32Mul().i32Add().localSet(src);
      // this column's W element (bf16: the i32 holding its pair)
      if (bf16) c.localGet(w).localGet(o).i32Const(3).i32ShrU().i32Const(2).i32Shl().i32Add().localSet(wj);
      else c.localGet(w).localGet(o).i32Add().localSet(wj);
      c.for(k, () => c.i32Const(0), () => c.localGet(K), 1, () => {
        c.localGet(fa).localGet(src).f32Load(0);
        if (!bf16) c.localGet(wj).f32Load(0);
        else {
          // even column: the low half, shifted up; odd: the high half, masked
          c.localGet(wj).i32Load(0).localTee(wi).i32Const(0xffff0000).i32And();
          c.localGet(wi).i32Const(16).i32Shl();
          c.localGet(o).i32Const(4).i32And().select().f32ReinterpretI32();
        }
        c.f32Mul().f32Add().localSet(fa);
        c.localGet(src).i32Const(4).i32Add().localSet(src);
        c.localGet(wj).localGet(wRow).i32Add().localSet(wj);
      });
      c.localGet(fa).localGet(alpha).f32Mul().localSet(fa);
      c.localGet(b).if(() => c.localGet(fa).localGet(b).localGet(o).i32Add().f32Load(0).f32Add().localSet(fa));
      c.localGet(act).i32Const(MATMUL_EPILOGUE.relu).i32Eq().if(() => c.localGet(fa).f32Const(0).f32Max().localSet(fa));
      c.localGet(dst).localGet(o).i32Add().localGet(fa).f32Store(0);
    });
  });
}
