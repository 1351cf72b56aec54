import os from 'node:os';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { BLOCKED_FMA_VARIANT, BLOCKED_VARIANT, blockedScratchBytes, blockedMatMulModuleBytes, type BlockedMatMulFn } from './matmul-blocked-module.js';
import { DEFAULT_VARIANT, FMA_VARIANT, MATMUL_EPILOGUE, matMulFunctions, matMulModuleBytes, relaxedSimdAvailable, type MatMulFn, type MatMulEpilogue } from './matmul-module.js';
import { webAssembly, type MemoryLimits, type WasmMemoryLike } from './wasm-emitter.js';

/*
 * One weight matrix W [K, N] multiplied on several cores: W is cut by columns into `threads` slices [K, N_t], each
 * stored contiguously in a WebAssembly.Memory shared with threads-1 worker_threads (tfjs-wasm's heap is not shared,
 * so workers cannot see tensors there). A call copies x into the shared memory once; every thread runs the same
 * kernels as matMulSmall (matmul-module.ts's streaming kernels for 1-3 rows, the register-blocked kernel from 4) on its
 * own slice, into its own y slice with its own scratch; the calling thread runs slice 0 and then waits for the
 * others, and y is assembled from the slices (M·N floats: small next to the K·N multiply-adds).
 *
 * Threads meet over an Int32Array at the start of the memory: the caller writes the job (M, alpha, epilogue, bias,
 * kernel) and bumps SEQ with Atomics (sequentially consistent, so the job's fields are visible to a worker that sees the
 * new SEQ), a worker wakes from Atomics.wait on SEQ, runs its slice and publishes DONE[t] = SEQ. Waits have a timeout
 * loop, so a worker that died mid-job makes apply throw instead of hanging (its 'exit' event cannot run while the
 * caller blocks; it is seen at the next call).
 */

/** Int32 slots of the control block. */
const CTL = { seq: 0, stop: 1, rows: 2, alpha: 3, epilogue: 4, bias: 5, blocked: 6 } as const;
/** Per-thread slots follow: READY[t], DONE[t], STATUS[t] (1 = failed, the message is on the thread's port). */
const CTL_THREADS = 8;
/** Bytes of the control block: CTL_THREADS + 3·MAX_THREADS int32 slots. */
const CTL_BYTES = 256;
const MAX_THREADS = 16;
const ALIGN = 64;

/**
 * From this many rows `ParallelMatMul.apply` splits the product across threads; fewer rows run on the calling thread
 * alone (over every slice in turn). Measured (process CPU and wall time, [M, 4096]·[4096, 4096], 2 threads, machine
 * shared): one row streams W at the single core's share of memory bandwidth, and a second core streaming the other half
 * adds nothing but its wake-up (3.1 vs 3.2 ms wall); from 4 rows the product is compute-bound and halves (see
 * docs/runtime.md, "Two threads for batched products").
 */
export const PARALLEL_MIN_ROWS = 4;

/** Options of `new ParallelMatMul(w, options)`. */
export interface ParallelMatMulOptions {
  /** Threads including the caller's (default `defaultMatMulThreads()`: the cores, at most 2); 1 runs no workers. */
  readonly threads?: number;
  /** Rows per run (x, y and scratch are sized for it); more rows go in chunks of this many. Default 16. */
  readonly maxRows?: number;
  /** From this many rows the work is split across threads (default PARALLEL_MIN_ROWS). */
  readonly parallelFromRows?: number;
  /** How long the caller waits for a worker's slice (or its start) before apply throws (default 10 000 ms). */
  readonly timeoutMs?: number;
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
 * The default thread count: the cores this process may use, at most 2 (measured on this 2-core machine; more threads
 * than cores only adds wake-ups).
 *
 * ```ts
 * defaultMatMulThreads(); // 2 on a 2-core machine
 * ```
 */
export function defaultMatMulThreads(): number {
  return Math.max(1, Math.min(2, os.availableParallelism()));
}

/** Byte offsets of one thread's slice in the shared memory. */
interface Slice {
  /** First column of W (and y) the slice holds, and its width. */
  readonly n0: number;
  readonly n: number;
  readonly w: number;
  readonly bias: number;
  readonly y: number;
  readonly scratch: number;
}

/** The kernels as one thread runs them over its slice (the worker's copy of this is in WORKER_SOURCE). */
function runSlice(kernels: { rows: readonly MatMulFn[]; blocked: BlockedMatMulFn }, x: number, s: Slice, K: number, M: number, alpha: number, act: number, bias: boolean, blocked: boolean): void {
  if (s.n === 0 || M === 0) return;
  const b = bias ? s.bias : 0;
  if (blocked) return kernels.blocked(x, s.w, b, s.y, M, K, s.n, alpha, act, s.scratch);
  const maxRows = kernels.rows.length - 1;
  for (let r0 = 0; r0 < M; r0 += maxRows) {
    const rows = Math.min(maxRows, M - r0);
    kernels.rows[rows]!(x + r0 * K * 4, s.w, b, s.y + r0 * s.n * 4, K, s.n, alpha, act);
  }
}

/**
 * A worker: plain JS (no tsx, no tfjs), run with `eval`. It instantiates the kernel modules over the shared memory,
 * reports READY, and serves jobs until STOP. Errors (a trap, a failed start) go to its port and STATUS, so the caller
 * sees them without its event loop.
 */
const WORKER_SOURCE = `
// getBuiltinModule: an eval'd worker is ESM (no require) when the process runs with --input-type=module.
const { workerData } = process.getBuiltinModule ? process.getBuiltinModule('node:worker_threads') : require('node:worker_threads');
const { memory, rowsBytes, blockedBytes, streamingMaxRows, format, index, threads, K, x, slice, port } = workerData;
const CTL = ${JSON.stringify(CTL)}, T0 = ${CTL_THREADS};
const READY = T0 + index, DONE = T0 + threads + index, STATUS = T0 + 2 * threads + index;
const ctl = new Int32Array(memory.buffer, 0, ${CTL_BYTES / 4});
const ctlF = new Float32Array(memory.buffer, 0, ${CTL_BYTES / 4});
const finish = (slot, status, error) => {
  if (error) port.postMessage(String((error && error.stack) || error));
  Atomics.store(ctl, STATUS, status);
  Atomics.store(ctl, slot, slot === READY ? 1 : Atomics.load(ctl, CTL.seq));
  Atomics.notify(ctl, slot);
};
// Read before READY: the caller may post the first job as soon as it sees READY.
let seen = Atomics.load(ctl, CTL.seq);
let rows, blocked;
try {
  const env = { env: { memory } };
  const r = new WebAssembly.Instance(new WebAssembly.Module(rowsBytes), env).exports;
  rows = [undefined];
  for (let i = 1; i <= streamingMaxRows; i++) rows.push(r[format + '_r' + i]);
  blocked = new WebAssembly.Instance(new WebAssembly.Module(blockedBytes), env).exports[format + '_blocked'];
  finish(READY, 0);
} catch (e) {
  finish(READY, 1, e);
  throw e;
}
for (;;) {
  Atomics.wait(ctl, CTL.seq, seen);
  if (Atomics.load(ctl, CTL.stop)) break;
  const seq = Atomics.load(ctl, CTL.seq);
  if (seq === seen) continue;
  seen = seq;
  try {
    const M = ctl[CTL.rows], alpha = ctlF[CTL.alpha], act = ctl[CTL.epilogue], b = ctl[CTL.bias] ? slice.bias : 0;
    if (slice.n > 0 && M > 0) {
      if (ctl[CTL.blocked]) blocked(x, slice.w, b, slice.y, M, K, slice.n, alpha, act, slice.scratch);
      else for (let r0 = 0; r0 < M; r0 += streamingMaxRows) {
        const n = Math.min(streamingMaxRows, M - r0);
        rows[n](x + r0 * K * 4, slice.w, b, slice.y + r0 * slice.n * 4, K, slice.n, alpha, act);
      }
    }
    finish(DONE, 0);
  } catch (e) {
    finish(DONE, 1, e);
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
 * WebAssembly.Memory), for batched decoding: from PARALLEL_MIN_ROWS rows (compute-bound) the columns are split across
 * threads, fewer rows run on the calling thread. Synchronous; works whatever tfjs backend is active (the kernels are
 * omniflow's own wasm SIMD kernels, not tfjs's). W is float32 [K, N], or packed bf16 (int32 [K, N/2] from
 * `packBf16`); it is copied into memory the object owns, so the tensor may be disposed after construction.
 *
 * ```ts
 * const mm = new ParallelMatMul(w);                  // w [4096, 4096] float32; 2 threads
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
  /** Rows per run; more rows go in chunks. */
  readonly maxRows: number;
  /** From this many rows the work is split across threads. */
  readonly parallelFromRows: number;

  private memory: WasmMemoryLike | undefined;
  private readonly ctl: Int32Array;
  private readonly ctlF: Float32Array;
  private readonly slices: Slice[];
  private readonly xOffset: number;
  private readonly kernels: { rows: readonly MatMulFn[]; blocked: BlockedMatMulFn };
  private readonly workers: WorkerHandle[] = [];
  private readonly timeoutMs: number;
  private ready = false;
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
    const threads = (this.threads = options.threads ?? defaultMatMulThreads());
    if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) throw new Error(`ParallelMatMul: threads must be an integer in 1..${MAX_THREADS}, got ${threads}`);
    const maxRows = (this.maxRows = options.maxRows ?? 16);
    if (!Number.isInteger(maxRows) || maxRows < 1) throw new Error(`ParallelMatMul: maxRows must be a positive integer, got ${maxRows}`);
    this.parallelFromRows = options.parallelFromRows ?? PARALLEL_MIN_ROWS;
    if (!(this.parallelFromRows >= 1)) throw new Error(`ParallelMatMul: parallelFromRows must be at least 1, got ${this.parallelFromRows}`);
    this.timeoutMs = options.timeoutMs ?? 10_000;
    if (!(this.timeoutMs > 0)) throw new Error(`ParallelMatMul: timeoutMs must be positive, got ${this.timeoutMs}`);

    const fma = relaxedSimdAvailable();
    const rowsVariant = fma ? FMA_VARIANT : DEFAULT_VARIANT;
    const blockedVariant = fma ? BLOCKED_FMA_VARIANT : BLOCKED_VARIANT;

    // Layout: control block, x [maxRows, K], then per thread W slice [K, n], bias [n], y [maxRows, n], scratch.
    // Slices are whole groups of 8 columns (one blocked register block; bf16 packs pairs), the last takes the rest.
    const align = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;
    let end = CTL_BYTES;
    this.xOffset = end;
    end = align(end + maxRows * K * 4);
    const width = Math.ceil(N / threads / 8) * 8;
    this.slices = [];
    for (let t = 0; t < threads; t++) {
      const n0 = Math.min(N, t * width), n = Math.min(N, n0 + width) - n0;
      const w0 = end;
      const bias = align(w0 + K * n * (bf16 ? 2 : 4));
      const y = align(bias + n * 4);
      const scratch = align(y + maxRows * n * 4);
      end = align(scratch + blockedScratchBytes(blockedVariant, maxRows, K, n) + 8);
      this.slices.push({ n0, n, w: w0, bias, y, scratch });
    }
    const pages = Math.ceil(end / 65536);
    if (pages > 65536) throw new Error(`ParallelMatMul: W [${K}, ${N}] ${this.format} with maxRows ${maxRows} needs ${(end / 2 ** 30).toFixed(2)} GiB, above wasm32's 4 GiB`);
    const limits: MemoryLimits = { initial: pages, maximum: pages, shared: true };
    const memory = (this.memory = new (webAssembly().Memory)(limits));
    this.ctl = new Int32Array(memory.buffer, 0, CTL_BYTES / 4);
    this.ctlF = new Float32Array(memory.buffer, 0, CTL_BYTES / 4);

    // W into its slices, row by row.
    const src = w.dataSync();
    for (const s of this.slices) {
      if (bf16) {
        const dst = new Int32Array(memory.buffer, s.w, (K * s.n) / 2), rowIn = N / 2, c0 = s.n0 / 2, c = s.n / 2;
        for (let k = 0; k < K; k++) dst.set((src as Int32Array).subarray(k * rowIn + c0, k * rowIn + c0 + c), k * c);
      } else {
        const dst = new Float32Array(memory.buffer, s.w, K * s.n);
        for (let k = 0; k < K; k++) dst.set((src as Float32Array).subarray(k * N + s.n0, k * N + s.n0 + s.n), k * s.n);
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
        workerData: { memory, rowsBytes, blockedBytes, streamingMaxRows: rowsVariant.maxRows, format: kf, index: t, threads, K, x: this.xOffset, slice: this.slices[t], port: port2 },
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
    this.checkWorkers();

    const M = x.size / K;
    const out = new Float32Array(M * N);
    if (bias) this.copyBias(bias);
    const xs = x.dataSync() as Float32Array;
    const xHeap = new Float32Array(memory.buffer, this.xOffset, this.maxRows * K);
    for (let r0 = 0; r0 < M; r0 += this.maxRows) {
      const rows = Math.min(this.maxRows, M - r0);
      xHeap.set(xs.subarray(r0 * K, (r0 + rows) * K));
      this.run(rows, alpha, act, bias !== undefined);
      for (const s of this.slices) {
        const y = new Float32Array(memory.buffer, s.y, rows * s.n);
        for (let m = 0; m < rows; m++) out.set(y.subarray(m * s.n, (m + 1) * s.n), (r0 + m) * N + s.n0);
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

  /** Bias into each slice's copy; skipped when it is the tensor copied last time (tfjs tensors are immutable). */
  private copyBias(bias: tf.Tensor1D): void {
    if (this.lastBias === bias) return;
    const b = bias.dataSync() as Float32Array;
    for (const s of this.slices) new Float32Array(this.memory!.buffer, s.bias, s.n).set(b.subarray(s.n0, s.n0 + s.n));
    this.lastBias = bias;
  }

  /** Why apply cannot run: a worker that exited or failed, or an earlier timeout. */
  private checkWorkers(): void {
    if (this.broken) throw new Error(`ParallelMatMul.apply: ${this.broken}; dispose() it and make a new one`);
    this.workers.forEach((h, i) => {
      if (h.exit) throw new Error(`ParallelMatMul.apply: worker thread ${i + 1} ${h.exit}${this.portMessage(h)}; dispose() it and make a new one`);
    });
  }

  private portMessage(h: WorkerHandle): string {
    const m = receiveMessageOnPort(h.port) as { message: unknown } | undefined;
    return m ? `: ${String(m.message)}` : '';
  }

  /** Runs one chunk of at most maxRows rows already in x: slice 0 here, the others on the workers. */
  private run(M: number, alpha: number, act: number, bias: boolean): void {
    const blocked = M >= 4;
    if (M < this.parallelFromRows || this.workers.length === 0) {
      for (const s of this.slices) runSlice(this.kernels, this.xOffset, s, this.K, M, alpha, act, bias, blocked);
      return;
    }
    const { ctl } = this;
    const T0 = CTL_THREADS, T = this.threads;
    if (!this.ready) {
      for (let t = 1; t < T; t++) this.await(T0 + t, 0, `worker thread ${t} did not start`);
      this.ready = true;
    }
    ctl[CTL.rows] = M;
    this.ctlF[CTL.alpha] = alpha;
    ctl[CTL.epilogue] = act;
    ctl[CTL.bias] = bias ? 1 : 0;
    ctl[CTL.blocked] = blocked ? 1 : 0;
    const previous = Atomics.load(ctl, CTL.seq);
    const seq = (previous + 1) | 0;
    Atomics.store(ctl, CTL.seq, seq);
    Atomics.notify(ctl, CTL.seq);
    runSlice(this.kernels, this.xOffset, this.slices[0]!, this.K, M, alpha, act, bias, blocked);
    for (let t = 1; t < T; t++) this.await(T0 + T + t, previous, `worker thread ${t} did not finish its slice`);
  }

  /** Waits until ctl[slot] leaves `from`, in steps, until timeoutMs; then checks the thread's STATUS. */
  private await(slot: number, from: number, what: string): void {
    const { ctl } = this;
    const t = (slot - CTL_THREADS) % this.threads;
    const deadline = performance.now() + this.timeoutMs;
    while (Atomics.load(ctl, slot) === from) {
      const left = deadline - performance.now();
      if (left <= 0) {
        this.broken = `${what} within ${this.timeoutMs} ms (its thread died or is stuck)`;
        throw new Error(`ParallelMatMul.apply: ${this.broken}`);
      }
      Atomics.wait(ctl, slot, from, Math.min(left, 50));
    }
    if (Atomics.load(ctl, CTL_THREADS + 2 * this.threads + t) !== 0) {
      throw new Error(`ParallelMatMul.apply: worker thread ${t} failed${this.portMessage(this.workers[t - 1]!)}`);
    }
  }
}
