import os from 'node:os';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { BLOCKED_FMA_VARIANT, BLOCKED_VARIANT, blockedScratchBytes, blockedMatMulModuleBytes, type BlockedMatMulFn } from './matmul-blocked-module.js';
import { DEFAULT_VARIANT, FMA_VARIANT, MATMUL_EPILOGUE, matMulFunctions, matMulModuleBytes, relaxedSimdAvailable, type MatMulFn, type MatMulEpilogue } from './matmul-module.js';
import { webAssembly, type MemoryLimits, type WasmMemoryLike } from './wasm-emitter.js';

/*
 * One weight matrix W [K, N] multiplied on several cores. W is cut by columns into chunks [K, n_c], each stored
 * contiguously in a WebAssembly.Memory shared with threads-1 worker_threads (tfjs-wasm's heap is not shared, so
 * workers cannot see tensors there). A call copies x into the shared memory once; then every thread, the caller
 * included, claims chunks one at a time and runs the same kernels as matMulSmall on them (matmul-module.ts's
 * streaming kernels for 1-3 rows, the register-blocked kernel from 4) into the chunk's own y, with its own scratch;
 * y is assembled from the chunks (M·N floats: small next to the K·N multiply-adds).
 *
 * Chunks are claimed, not assigned: on this shared 2-core machine a worker is often not running when a job starts, and
 * with fixed halves the caller would wait for it (measured: up to 1.5x slower than one thread while other processes
 * ran). With claims, the caller takes whatever the worker has not started, so a busy machine costs at most one chunk
 * of waiting, and the caller's extra work (copying x in and y out) is balanced too.
 *
 * Threads meet over an Int32Array at the start of the memory. The caller writes the job (rows, alpha, epilogue, bias,
 * kernel), resets COMPLETED, opens CLAIM = (job tag << 8 | next chunk) and bumps SEQ, all with Atomics (sequentially
 * consistent: a thread that sees the new values sees the job's fields). A worker wakes from Atomics.wait on SEQ and
 * claims chunks by compare-exchange on CLAIM; the tag makes a worker that wakes late for a finished job claim nothing
 * of the next one. Each finished chunk adds one to COMPLETED; the caller waits for all of them with a timeout loop, so a
 * worker that died holding a chunk makes apply throw instead of hanging (a worker's 'exit' event cannot run while the
 * caller blocks; it is seen at the next call, which then throws).
 */

/** Int32 slots of the control block; READY[t] of worker t at CTL_READY + t, chunks thread t ran at CTL_RAN + t. */
const CTL = { seq: 0, stop: 1, rows: 2, alpha: 3, epilogue: 4, bias: 5, blocked: 6, claim: 7, completed: 8, failed: 9 } as const;
const CTL_READY = 10;
const CTL_RAN = 32;
const CTL_BYTES = 256;
const MAX_THREADS = 16;
/** The chunk counter is the low 8 bits of CLAIM. */
const MAX_CHUNKS = 255;
const ALIGN = 64;

/**
 * From this many rows `ParallelMatMul.apply` splits the product across threads; fewer rows run on the calling thread
 * alone (over every chunk in turn). One row streams W at the whole machine's memory bandwidth from one core, so a
 * second core adds nothing but its wake-up; from 4 rows the product is compute-bound and splits (measured numbers in
 * docs/runtime.md, "Two threads for batched products").
 */
export const PARALLEL_MIN_ROWS = 4;

/** Options of `new ParallelMatMul(w, options)`. */
export interface ParallelMatMulOptions {
  /** Threads including the caller's (default `defaultMatMulThreads()`: the cores, at most 2); 1 runs no workers. */
  readonly threads?: number;
  /**
   * Column chunks per thread, of equal width, instead of the default (`defaultChunkWidths`: one wide chunk per thread
   * and a few narrow ones to balance). More chunks balance better on a busy machine; wider chunks run faster.
   */
  readonly chunksPerThread?: number;
  /** The chunks' widths in columns instead (summing to N; multiples of 8 but the last, for bf16 even): e.g. wide first, narrow last. */
  readonly chunkWidths?: readonly number[];
  /** Rows per run (x, y and scratch are sized for it); more rows go in runs of this many. Default 16. */
  readonly maxRows?: number;
  /** From this many rows the work is split across threads (default PARALLEL_MIN_ROWS). */
  readonly parallelFromRows?: number;
  /** How long the caller waits for a chunk a worker holds before apply throws (default 10 000 ms). */
  readonly timeoutMs?: number;
  /**
   * Whether the calling thread claims chunks too (default true). false leaves split jobs to the workers, the caller
   * only waiting: for tests of the workers' path and for measurements.
   */
  readonly callerRuns?: boolean;
}

/** Options of `apply`: y = activation(alpha · x·W + bias), as matMulSmall. */
export interface ParallelMatMulApplyOptions {
  /** [N], added after scaling by alpha. */
  readonly bias?: tf.Tensor1D;
  /** Scales x·W before the bias (default 1). */
  readonly alpha?: number;
  /** Applied last (default 'linear'). */
  readonly activation?: 'linear' | MatMulEpilogue;
}

/**
 * The default thread count: the cores this process may use, at most 2 (what was measured, on a 2-core machine).
 *
 * ```ts
 * defaultMatMulThreads(); // 2 on a 2-core machine
 * ```
 */
export function defaultMatMulThreads(): number {
  return Math.max(1, Math.min(2, os.availableParallelism()));
}

/** One column chunk: its first column and width, and byte offsets of its W, bias and y in the shared memory. */
interface Chunk {
  readonly n0: number;
  readonly n: number;
  readonly w: number;
  readonly bias: number;
  readonly y: number;
}

/** A job as every thread reads it from the control block. */
interface Job {
  readonly rows: number;
  readonly alpha: number;
  readonly act: number;
  readonly bias: boolean;
  readonly blocked: boolean;
}

interface Kernels {
  readonly rows: readonly MatMulFn[];
  readonly blocked: BlockedMatMulFn;
}

/**
 * The default chunks: one wide chunk per thread covering 7/8 of the columns, then `threads` narrow ones, so a thread
 * that starts late or runs slower leaves only narrow chunks to the others. Narrow chunks cost more per column (W's
 * rows are short streams; the blocked kernel repacks x per chunk): measured CPU time, [M, 4096]·[4096, 4096], 2
 * threads, against halves (2 × 2048): 1 row +8% (the single-thread path), 4 rows +4%, 8 rows +1.5%; equal chunks of
 * 1024 columns +14%, +11%, +7%; of 512 +45%, +25%, +11%.
 *
 * ```ts
 * defaultChunkWidths(4096, 2); // [1792, 1792, 256, 256]
 * ```
 */
export function defaultChunkWidths(N: number, threads: number): number[] {
  const wide = Math.floor((N * 7) / 8 / threads / 8) * 8;
  if (wide < 64) return equalParts(N, threads);
  const rest = N - wide * threads;
  return [...Array.from({ length: threads }, () => wide), ...equalParts(rest, threads)];
}

/** Widths of `width` columns, the last the rest. */
/** N columns in at most `parts` chunks of equal width (a multiple of 8, at least 8; the last takes the rest). */
function equalParts(N: number, parts: number): number[] {
  const width = Math.max(8, Math.ceil(N / parts / 8) * 8);
  return Array.from({ length: Math.ceil(N / width) }, (_, i) => Math.min(width, N - i * width));
}

function checkWidths(widths: readonly number[], N: number): void {
  const sum = widths.reduce((a, b) => a + b, 0);
  const bad = widths.findIndex((n, i) => !Number.isInteger(n) || n < 1 || (i < widths.length - 1 && n % 8 !== 0));
  if (bad >= 0 || sum !== N || widths.length > MAX_CHUNKS) {
    throw new Error(`ParallelMatMul: chunkWidths must be 1..${MAX_CHUNKS} widths, multiples of 8 but the last, summing to N = ${N}; got [${widths.join(', ')}]`);
  }
}

/** One chunk as the caller runs it (WORKER_SOURCE has the worker's copy of these lines). */
function runChunk(kernels: Kernels, x: number, c: Chunk, K: number, scratch: number, job: Job): void {
  const b = job.bias ? c.bias : 0;
  if (job.blocked) return kernels.blocked(x, c.w, b, c.y, job.rows, K, c.n, job.alpha, job.act, scratch);
  const maxRows = kernels.rows.length - 1;
  for (let r0 = 0; r0 < job.rows; r0 += maxRows) {
    const rows = Math.min(maxRows, job.rows - r0);
    kernels.rows[rows]!(x + r0 * K * 4, c.w, b, c.y + r0 * c.n * 4, K, c.n, job.alpha, job.act);
  }
}

/**
 * A worker: plain JS (no tsx, no tfjs), run with `eval`. It instantiates the kernel modules over the shared memory,
 * reports READY, and claims chunks of each job until STOP. A failed chunk is reported on its port and in FAILED (and
 * still counted), so the caller sees it without its event loop.
 */
const WORKER_SOURCE = `
// getBuiltinModule: an eval'd worker is ESM (no require) when the process runs with --input-type=module.
const { workerData } = process.getBuiltinModule ? process.getBuiltinModule('node:worker_threads') : require('node:worker_threads');
const { memory, rowsBytes, blockedBytes, streamingMaxRows, format, index, K, x, chunks, scratch, port } = workerData;
const CTL = ${JSON.stringify(CTL)};
const ctl = new Int32Array(memory.buffer, 0, ${CTL_BYTES / 4});
const ctlF = new Float32Array(memory.buffer, 0, ${CTL_BYTES / 4});
const env = { env: { memory } };
const r = new WebAssembly.Instance(new WebAssembly.Module(rowsBytes), env).exports;
const rows = [undefined];
for (let i = 1; i <= streamingMaxRows; i++) rows.push(r[format + '_r' + i]);
const blocked = new WebAssembly.Instance(new WebAssembly.Module(blockedBytes), env).exports[format + '_blocked'];
function runChunk(c) {
  const M = ctl[CTL.rows], alpha = ctlF[CTL.alpha], act = ctl[CTL.epilogue], b = ctl[CTL.bias] ? c.bias : 0;
  if (ctl[CTL.blocked]) return blocked(x, c.w, b, c.y, M, K, c.n, alpha, act, scratch);
  for (let r0 = 0; r0 < M; r0 += streamingMaxRows) {
    const n = Math.min(streamingMaxRows, M - r0);
    rows[n](x + r0 * K * 4, c.w, b, c.y + r0 * c.n * 4, K, c.n, alpha, act);
  }
}
// 0, not the current SEQ: a job posted before this worker started is still open to it (the caller does not wait for
// workers to start), and the claim tag keeps it from taking anything of a job that is over.
let seen = 0;
Atomics.store(ctl, ${CTL_READY} + index, 1);
Atomics.notify(ctl, ${CTL_READY} + index);
for (;;) {
  Atomics.wait(ctl, CTL.seq, seen);
  if (Atomics.load(ctl, CTL.stop)) break;
  const seq = Atomics.load(ctl, CTL.seq);
  if (seq === seen) continue;
  seen = seq;
  const tag = (seq & 0x7fffff) << 8;
  for (;;) {
    const v = Atomics.load(ctl, CTL.claim);
    if ((v & ~0xff) !== tag || (v & 0xff) >= chunks.length) break;
    if (Atomics.compareExchange(ctl, CTL.claim, v, v + 1) !== v) continue;
    try {
      runChunk(chunks[v & 0xff]);
    } catch (e) {
      if (Atomics.compareExchange(ctl, CTL.failed, 0, index + 1) === 0) port.postMessage(String((e && e.stack) || e));
    }
    Atomics.add(ctl, ${CTL_RAN} + index, 1);
    if (Atomics.add(ctl, CTL.completed, 1) + 1 === chunks.length) Atomics.notify(ctl, CTL.completed);
  }
}
port.close();
`;

interface WorkerHandle {
  readonly worker: Worker;
  /** Our end of the worker's error channel, read synchronously (receiveMessageOnPort). */
  readonly port: MessagePort;
  exit?: string;
}

/**
 * `activation(alpha · x·W + bias)` for one weight W [K, N] on several cores (worker_threads over a shared
 * WebAssembly.Memory), for batched decoding: from PARALLEL_MIN_ROWS rows (compute-bound) column chunks are shared out
 * among the threads, fewer rows run on the calling thread. Synchronous; works whatever tfjs backend is active (the
 * kernels are omniflow's own wasm SIMD kernels, not tfjs's). W is float32 [K, N], or packed bf16 (int32 [K, N/2] from
 * `packBf16`); it is copied into memory the object owns, so the tensor may be disposed after construction.
 *
 * ```ts
 * const mm = new ParallelMatMul(w);                       // w [4096, 4096] float32; 2 threads
 * const y = mm.apply(x, { bias: b, activation: 'relu' }); // x [8, 4096] → y [8, 4096]
 * mm.dispose();
 * ```
 */
export class ParallelMatMul {
  /** W's rows (x's last axis) and columns (y's last axis). */
  readonly K: number;
  readonly N: number;
  /** Threads including the caller's. */
  readonly threads: number;
  readonly format: 'float32' | 'bf16';
  /** Rows per run; more rows go in runs of this many. */
  readonly maxRows: number;
  /** From this many rows the work is split across threads. */
  readonly parallelFromRows: number;
  /** How many column chunks W is cut into. */
  readonly chunkCount: number;

  private memory: WasmMemoryLike | undefined;
  private readonly ctl: Int32Array;
  private readonly ctlF: Float32Array;
  private readonly chunks: Chunk[] = [];
  private readonly xOffset: number;
  private readonly scratch: number;
  private readonly kernels: Kernels;
  private readonly workers: WorkerHandle[] = [];
  private readonly timeoutMs: number;
  private readonly callerRuns: boolean;
  private broken: string | undefined;
  private lastBias: tf.Tensor1D | undefined;

  constructor(w: tf.Tensor2D, options: ParallelMatMulOptions = {}) {
    if (w.rank !== 2 || (w.dtype !== 'float32' && w.dtype !== 'int32')) {
      throw new Error(`ParallelMatMul: W must be float32 [K, N] or packed bf16 int32 [K, N/2] (packBf16), got ${w.dtype} [${w.shape}]`);
    }
    const bf16 = w.dtype === 'int32';
    this.format = bf16 ? 'bf16' : 'float32';
    const K = (this.K = w.shape[0]);
    const N = (this.N = bf16 ? 2 * w.shape[1] : w.shape[1]);
    if (K < 1 || N < 1) throw new Error(`ParallelMatMul: W must have at least one row and column, got [${w.shape}]`);
    const int = (name: string, v: number, lo: number, hi: number) => {
      if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`ParallelMatMul: ${name} must be an integer in ${lo}..${hi}, got ${v}`);
      return v;
    };
    const threads = (this.threads = int('threads', options.threads ?? defaultMatMulThreads(), 1, MAX_THREADS));
    const chunksPerThread = options.chunksPerThread === undefined ? undefined : int('chunksPerThread', options.chunksPerThread, 1, Math.floor(MAX_CHUNKS / threads));
    const maxRows = (this.maxRows = int('maxRows', options.maxRows ?? 16, 1, 1 << 16));
    this.parallelFromRows = int('parallelFromRows', options.parallelFromRows ?? PARALLEL_MIN_ROWS, 1, Number.MAX_SAFE_INTEGER);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    if (!(this.timeoutMs > 0)) throw new Error(`ParallelMatMul: timeoutMs must be positive, got ${this.timeoutMs}`);
    this.callerRuns = options.callerRuns ?? true;
    if (!this.callerRuns && threads === 1) throw new Error('ParallelMatMul: callerRuns false needs threads >= 2 (no worker would run the chunks)');

    const fma = relaxedSimdAvailable();
    const rowsVariant = fma ? FMA_VARIANT : DEFAULT_VARIANT;
    const blockedVariant = fma ? BLOCKED_FMA_VARIANT : BLOCKED_VARIANT;

    // Layout: control block, x [maxRows, K], per chunk W [K, n] + bias [n] + y [maxRows, n], per thread scratch.
    // Chunks are whole groups of 8 columns (one blocked register block; bf16 packs pairs), the last takes the rest.
    const align = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;
    let end = CTL_BYTES;
    this.xOffset = end;
    end = align(end + maxRows * K * 4);
    const widths = options.chunkWidths ?? (chunksPerThread ? equalParts(N, threads * chunksPerThread) : defaultChunkWidths(N, threads));
    checkWidths(widths, N);
    let n0 = 0;
    for (const n of widths) {
      const w0 = end, bias = align(w0 + K * n * (bf16 ? 2 : 4)), y = align(bias + n * 4);
      end = align(y + maxRows * n * 4);
      this.chunks.push({ n0, n, w: w0, bias, y });
      n0 += n;
    }
    this.chunkCount = this.chunks.length;
    const scratchBytes = align(blockedScratchBytes(blockedVariant, maxRows, K, Math.max(...widths)) + 8);
    this.scratch = end;
    end += threads * scratchBytes;
    const pages = Math.ceil(end / 65536);
    if (pages > 65536) throw new Error(`ParallelMatMul: W [${K}, ${N}] ${this.format} with maxRows ${maxRows} needs ${(end / 2 ** 30).toFixed(2)} GiB, above wasm32's 4 GiB`);
    const limits: MemoryLimits = { initial: pages, maximum: pages, shared: true };
    const memory = (this.memory = new (webAssembly().Memory)(limits));
    this.ctl = new Int32Array(memory.buffer, 0, CTL_BYTES / 4);
    this.ctlF = new Float32Array(memory.buffer, 0, CTL_BYTES / 4);

    // W into its chunks, row by row.
    const src = w.dataSync();
    for (const c of this.chunks) {
      if (bf16) {
        const dst = new Int32Array(memory.buffer, c.w, (K * c.n) / 2), rowIn = N / 2, p0 = c.n0 / 2, p = c.n / 2;
        for (let k = 0; k < K; k++) dst.set((src as Int32Array).subarray(k * rowIn + p0, k * rowIn + p0 + p), k * p);
      } else {
        const dst = new Float32Array(memory.buffer, c.w, K * c.n);
        for (let k = 0; k < K; k++) dst.set((src as Float32Array).subarray(k * N + c.n0, k * N + c.n0 + c.n), k * c.n);
      }
    }

    const rowsBytes = matMulModuleBytes(rowsVariant, limits);
    const blockedBytes = blockedMatMulModuleBytes(blockedVariant, limits);
    const wasm = webAssembly();
    const env = { env: { memory } };
    const kf = bf16 ? 'bf16' : 'f32';
    this.kernels = {
      rows: matMulFunctions(new wasm.Instance(new wasm.Module(rowsBytes), env).exports, rowsVariant)[kf],
      blocked: new wasm.Instance(new wasm.Module(blockedBytes), env).exports[`${kf}_blocked`] as BlockedMatMulFn,
    };
    for (let t = 1; t < threads; t++) {
      const { port1, port2 } = new MessageChannel();
      const worker = new Worker(WORKER_SOURCE, {
        eval: true,
        // No loaders (tsx) or flags of the parent: the worker is plain JS and should start in milliseconds.
        execArgv: [],
        workerData: { memory, rowsBytes, blockedBytes, streamingMaxRows: rowsVariant.maxRows, format: kf, index: t, K, x: this.xOffset, chunks: this.chunks, scratch: this.scratch + t * scratchBytes, port: port2 },
        transferList: [port2],
      });
      // A forgotten dispose() must not keep the process alive.
      worker.unref();
      port1.unref();
      const handle: WorkerHandle = { worker, port: port1 };
      worker.on('error', (e: Error) => (handle.exit ??= `failed: ${e.message}`));
      worker.on('exit', (code: number) => (handle.exit ??= `exited with code ${code}`));
      this.workers.push(handle);
    }
  }

  /**
   * Waits (up to timeoutMs) until every worker thread has started and can take chunks. Optional: apply never waits
   * for a worker to start (the caller takes the chunks it does not); call this before timing, or to fail early.
   *
   * ```ts
   * const mm = new ParallelMatMul(w); mm.waitReady();
   * ```
   */
  waitReady(): this {
    this.checkWorkers('ParallelMatMul.waitReady');
    const deadline = performance.now() + this.timeoutMs;
    this.workers.forEach((h, i) => {
      while (Atomics.load(this.ctl, CTL_READY + i + 1) === 0) {
        const left = deadline - performance.now();
        if (left <= 0) throw new Error(`ParallelMatMul.waitReady: worker thread ${i + 1} did not start within ${this.timeoutMs} ms`);
        Atomics.wait(this.ctl, CTL_READY + i + 1, 0, Math.min(left, 50));
      }
    });
    return this;
  }

  /**
   * How many chunks each thread has run since construction (index 0: the calling thread): how the work was shared.
   *
   * ```ts
   * mm.apply(x8); mm.chunksRun(); // e.g. [4, 4]: the worker took half
   * ```
   */
  chunksRun(): number[] {
    return Array.from({ length: this.threads }, (_, t) => Atomics.load(this.ctl, CTL_RAN + t));
  }

  /**
   * `activation(alpha · x·W + bias)` over x's last axis (K; any leading shape), as a new float32 tensor [..., N] that
   * the caller owns.
   *
   * ```ts
   * const y = mm.apply(tf.randomNormal([8, 4096]), { alpha: 0.5 }); // [8, 4096]
   * ```
   */
  apply(x: tf.Tensor, options: ParallelMatMulApplyOptions = {}): tf.Tensor {
    const memory = this.memory;
    if (!memory) throw new Error('ParallelMatMul.apply: used after dispose()');
    const { K, N } = this;
    if (x.dtype !== 'float32') throw new Error(`ParallelMatMul.apply: x must be float32, got ${x.dtype} [${x.shape}]`);
    if (x.rank < 1 || x.shape[x.rank - 1] !== K) throw new Error(`ParallelMatMul.apply: x's last axis must match W's ${K} rows, got x [${x.shape}] and W [${K}, ${N}]`);
    const { bias } = options;
    if (bias && (bias.rank !== 1 || bias.shape[0] !== N || bias.dtype !== 'float32')) {
      throw new Error(`ParallelMatMul.apply: bias must be float32 [${N}] for W [${K}, ${N}], got ${bias.dtype} [${bias.shape}]`);
    }
    if (bias?.isDisposed) throw new Error('ParallelMatMul.apply: bias is disposed');
    const alpha = options.alpha ?? 1;
    if (!Number.isFinite(alpha)) throw new Error(`ParallelMatMul.apply: alpha must be a finite number, got ${alpha}`);
    const activation = options.activation ?? 'linear';
    if (activation !== 'linear' && !(activation in MATMUL_EPILOGUE)) throw new Error(`ParallelMatMul.apply: activation '${activation}' is not one of linear, relu`);
    const act = activation === 'linear' ? MATMUL_EPILOGUE.none : MATMUL_EPILOGUE[activation];
    this.checkWorkers('ParallelMatMul.apply');

    const M = x.size / K;
    const out = new Float32Array(M * N);
    if (bias) this.copyBias(bias);
    const xs = x.dataSync() as Float32Array;
    const xHeap = new Float32Array(memory.buffer, this.xOffset, this.maxRows * K);
    for (let r0 = 0; r0 < M; r0 += this.maxRows) {
      const rows = Math.min(this.maxRows, M - r0);
      xHeap.set(xs.subarray(r0 * K, (r0 + rows) * K));
      this.run({ rows, alpha, act, bias: bias !== undefined, blocked: rows >= 4 });
      for (const c of this.chunks) {
        const y = new Float32Array(memory.buffer, c.y, rows * c.n);
        for (let m = 0; m < rows; m++) out.set(y.subarray(m * c.n, (m + 1) * c.n), (r0 + m) * N + c.n0);
      }
    }
    return tf.tensor(out, [...x.shape.slice(0, -1), N], 'float32');
  }

  /**
   * Stops the workers and drops the shared memory; apply throws afterwards. Idempotent.
   *
   * ```ts
   * mm.dispose();
   * ```
   */
  dispose(): void {
    if (!this.memory) return;
    Atomics.store(this.ctl, CTL.stop, 1);
    Atomics.add(this.ctl, CTL.seq, 1);
    Atomics.notify(this.ctl, CTL.seq);
    for (const h of this.workers) {
      void h.worker.terminate();
      h.port.close();
    }
    this.workers.length = 0;
    this.memory = undefined;
    this.lastBias = undefined;
  }

  /** Bias into each chunk's copy; skipped when it is the tensor copied last time (tfjs tensors are immutable). */
  private copyBias(bias: tf.Tensor1D): void {
    if (this.lastBias === bias) return;
    const b = bias.dataSync() as Float32Array;
    for (const c of this.chunks) new Float32Array(this.memory!.buffer, c.bias, c.n).set(b.subarray(c.n0, c.n0 + c.n));
    this.lastBias = bias;
  }

  /** Throws if a worker exited or failed (seen by its events since the last call), or an earlier call timed out. */
  private checkWorkers(op: string): void {
    if (this.broken) throw new Error(`${op}: ${this.broken}; dispose() it and make a new one`);
    this.workers.forEach((h, i) => {
      if (h.exit) throw new Error(`${op}: worker thread ${i + 1} ${h.exit}${this.portMessage(h)}; dispose() it and make a new one`);
    });
  }

  private portMessage(h: WorkerHandle): string {
    const m = receiveMessageOnPort(h.port) as { message: unknown } | undefined;
    return m ? `: ${String(m.message)}` : '';
  }

  /** Runs one job over rows already in x: every chunk, the workers claiming alongside this thread. */
  private run(job: Job): void {
    if (job.rows < this.parallelFromRows || this.workers.length === 0) {
      for (const c of this.chunks) runChunk(this.kernels, this.xOffset, c, this.K, this.scratch, job);
      Atomics.add(this.ctl, CTL_RAN, this.chunks.length);
      return;
    }
    const { ctl } = this;
    const C = this.chunks.length;
    ctl[CTL.rows] = job.rows;
    this.ctlF[CTL.alpha] = job.alpha;
    ctl[CTL.epilogue] = job.act;
    ctl[CTL.bias] = job.bias ? 1 : 0;
    ctl[CTL.blocked] = job.blocked ? 1 : 0;
    Atomics.store(ctl, CTL.completed, 0);
    Atomics.store(ctl, CTL.failed, 0);
    const seq = (Atomics.load(ctl, CTL.seq) + 1) | 0;
    const tag = (seq & 0x7fffff) << 8;
    Atomics.store(ctl, CTL.claim, tag);
    Atomics.store(ctl, CTL.seq, seq);
    Atomics.notify(ctl, CTL.seq);
    // Claim like a worker (the same compare-exchange), so a chunk runs exactly once whoever takes it.
    while (this.callerRuns) {
      const v = Atomics.load(ctl, CTL.claim);
      if ((v & 0xff) >= C) break;
      if (Atomics.compareExchange(ctl, CTL.claim, v, v + 1) !== v) continue;
      runChunk(this.kernels, this.xOffset, this.chunks[v & 0xff]!, this.K, this.scratch, job);
      Atomics.add(ctl, CTL_RAN, 1);
      Atomics.add(ctl, CTL.completed, 1);
    }
    // The chunks workers hold: wait for them to finish.
    const deadline = performance.now() + this.timeoutMs;
    for (let done = Atomics.load(ctl, CTL.completed); done < C; done = Atomics.load(ctl, CTL.completed)) {
      const left = deadline - performance.now();
      if (left <= 0) {
        this.broken = `a worker thread did not finish its chunk within ${this.timeoutMs} ms (its thread died or is stuck)`;
        throw new Error(`ParallelMatMul.apply: ${this.broken}`);
      }
      Atomics.wait(ctl, CTL.completed, done, Math.min(left, 50));
    }
    const failed = Atomics.load(ctl, CTL.failed);
    if (failed) throw new Error(`ParallelMatMul.apply: worker thread ${failed} failed${this.portMessage(this.workers[failed - 1]!)}`);
  }
}
