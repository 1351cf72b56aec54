import * as tf from '@tensorflow/tfjs-core';
import { buildMatMulModule, DEFAULT_VARIANT, FMA_VARIANT, relaxedSimdAvailable, MATMUL_EPILOGUE, type MatMulEpilogue, type MatMulFn, type MatMulModule } from './matmul-module.js';
import { unpackBf16 } from './bf16.js';
import { BLOCKED_FMA_VARIANT, BLOCKED_VARIANT, blockedScratchBytes, buildBlockedMatMul } from './matmul-blocked-module.js';
import type { MemoryLimits, WasmMemoryLike } from './wasm-emitter.js';

/** Kernel names registered for the 'wasm' backend. */
export const OMNIFLOW_MATMUL = 'OmniflowMatMul';
export const OMNIFLOW_MATMUL_BF16 = 'OmniflowMatMulBf16';

/**
 * Up to this many rows (x's leading axes flattened) matMulSmall runs omniflow's SIMD kernels on wasm; above it,
 * tf.matMul. 1-3 rows run the streaming kernels of matmul-module.ts (bandwidth-bound: one pass over W), 4-16 the
 * register-blocked kernel (compute-bound; from BLOCKED_MIN_ROWS). Measured (process CPU time, best of 9, one run,
 * machine busy), [M, 4096]·[4096, 4096], blocked kernel vs tf.matMul: 6.0 vs 6.5 ms at M = 4, 11.2 vs 12.3 at 8,
 * 20.1 vs 24.8 at 16; [M, 1024]·[1024, 3072]: 1.05 vs 1.35, 2.02 vs 2.34, 3.75 vs 4.58. Above 16 rows not measured.
 * matMulBf16 uses the blocked kernel from 4 rows as well (bf16 variant: [8, 4096]·[4096, 4096] 12.6 vs 13.8 ms for
 * the streaming bf16 kernel).
 */
export const SIMD_MATMUL_MAX_ROWS = 16;

/** From this many rows the f32 kernel is the register-blocked one (below: the streaming row kernels). */
export const BLOCKED_MIN_ROWS = 4;

/**
 * The row limit matMulSmall applies (SIMD_MATMUL_MAX_ROWS, with or without relaxed SIMD: where the engine has it,
 * both kernels use fused multiply-add, [8, 4096]·[4096, 4096] 8.9 vs 12.3 ms CPU for tf.matMul).
 */
export function simdMatMulMaxRows(): number {
  return SIMD_MATMUL_MAX_ROWS;
}

/** Options of matMulSmall / matMulBf16: y = activation(alpha · x·W + bias). */
export interface MatMulSmallOptions {
  /** [N], added after scaling by alpha. */
  readonly bias?: tf.Tensor1D;
  /** Scales x·W before the bias (default 1). */
  readonly alpha?: number;
  /** Applied last (default 'linear'). */
  readonly activation?: 'linear' | MatMulEpilogue;
}

interface KernelAttrs {
  alpha: number;
  activation: 'linear' | MatMulEpilogue;
}

/** The pieces of tfjs-backend-wasm's backend object the kernels use (not part of its typed API). */
export interface WasmBackendInternals {
  wasm: { asm?: Record<string, unknown>; wasmMemory?: WasmMemoryLike };
  dataIdMap: { get(dataId: object): { memoryOffset: number } | undefined };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  disposeData(dataId: object, force?: boolean): boolean;
}

/**
 * `build` memoized per tfjs-wasm backend: it runs once per backend, on first use, with the backend's heap and the
 * import limits a module needs to link against it (heapImportLimits); every kernel that assembles its own wasm module
 * over the heap gets it this way.
 *
 * ```ts
 * const moduleFor = perWasmBackend((heap, limits) => buildInt8MatMul(heap, INT8_VARIANT, limits));
 * moduleFor(backend).rows[1](...); // built on the first call, the same instance after
 * ```
 */
export function perWasmBackend<T>(build: (heap: WasmMemoryLike, limits: MemoryLimits) => T): (backend: WasmBackendInternals) => T {
  const built = new WeakMap<object, T>();
  return (backend) => {
    let value = built.get(backend);
    if (value === undefined) {
      const heap = wasmHeap(backend);
      value = build(heap, heapImportLimits(heap));
      built.set(backend, value);
    }
    return value;
  };
}

/** The blocked kernels over this backend's heap, built on first use. */
const blockedFor = perWasmBackend((heap, limits) => {
  const variant = relaxedSimdAvailable() ? BLOCKED_FMA_VARIANT : BLOCKED_VARIANT;
  return { kernels: buildBlockedMatMul(heap, variant, limits), variant };
});

/** The kernel module over this backend's heap, built on first use (about a millisecond). */
const moduleFor = perWasmBackend((heap, limits): MatMulModule => buildMatMulModule(heap, relaxedSimdAvailable() ? FMA_VARIANT : DEFAULT_VARIANT, limits));

/**
 * How a module must declare the import of `memory`: unshared with no maximum (tfjs-wasm's single-threaded builds), or
 * shared with the largest maximum (the threaded builds' heap is shared; an import links when the memory's own maximum
 * is at most the declared one).
 */
export function heapImportLimits(memory: WasmMemoryLike): MemoryLimits {
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  return shared ? { initial: 1, maximum: 65536, shared: true } : { initial: 1 };
}

/** tfjs-wasm's WebAssembly.Memory: exported by its Emscripten module as `memory` (older builds: `wasmMemory`). */
export function wasmHeap(backend: WasmBackendInternals): WasmMemoryLike {
  const Memory = (globalThis as unknown as { WebAssembly: { Memory: new (...a: never[]) => object } }).WebAssembly.Memory;
  const asm = backend.wasm.asm ?? {};
  const found = asm.memory ?? backend.wasm.wasmMemory ?? Object.values(asm).find((v) => v instanceof Memory);
  if (!(found instanceof Memory)) throw new Error('SIMD matmul: cannot find the WebAssembly.Memory of the tfjs-wasm backend (wasm.asm.memory)');
  return found as unknown as WasmMemoryLike;
}

/** A tensor's byte offset in the wasm heap (for kernels that work on tensors in place). */
export function heapOffset(backend: WasmBackendInternals, t: tf.TensorInfo, name: string): number {
  const entry = backend.dataIdMap.get(t.dataId);
  if (!entry) throw new Error(`SIMD matmul: tensor '${name}' [${t.shape}] has no data on the wasm heap`);
  return entry.memoryOffset;
}

/** Runs `fns` (one per row count) over M rows: blocks of the largest row count, then one call for the rest. */
function runRows(fns: readonly MatMulFn[], x: number, w: number, bias: number, y: number, M: number, K: number, N: number, alpha: number, act: number): void {
  const maxRows = fns.length - 1;
  for (let r0 = 0; r0 < M; r0 += maxRows) {
    const rows = Math.min(maxRows, M - r0);
    fns[rows]!(x + r0 * K * 4, w, bias, y + r0 * N * 4, K, N, alpha, act);
  }
}

function simdKernel(format: 'f32' | 'bf16') {
  return (args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo => {
    const backend = args.backend as WasmBackendInternals;
    const { x, w, bias } = args.inputs as { x: tf.TensorInfo; w: tf.TensorInfo; bias?: tf.TensorInfo };
    const { alpha, activation } = args.attrs as unknown as KernelAttrs;
    const [M, K] = x.shape as [number, number];
    const N = format === 'f32' ? w.shape[1]! : 2 * w.shape[1]!;
    const out = backend.makeOutput([M, N], 'float32');
    if (M === 0 || N === 0) return out;
    const act = activation === 'linear' ? MATMUL_EPILOGUE.none : MATMUL_EPILOGUE[activation];
    const b = bias ? heapOffset(backend, bias, 'bias') : 0;
    if (M >= BLOCKED_MIN_ROWS) {
      const blocked = blockedFor(backend);
      // Scratch on the tfjs heap (packed x, partial sums), freed before returning. Allocated after `out`, and offsets
      // read after both: an allocation can grow the heap, but offsets stay valid.
      const scratch = backend.makeOutput([blockedScratchBytes(blocked.variant, M, K, N) / 4 + 1], 'float32');
      try {
        blocked.kernels[format](heapOffset(backend, x, 'x'), heapOffset(backend, w, 'w'), b, heapOffset(backend, out, 'y'), M, K, N, alpha, act, heapOffset(backend, scratch, 'scratch'));
      } finally {
        backend.disposeData(scratch.dataId);
      }
      return out;
    }
    const mod = moduleFor(backend);
    runRows(mod[format], heapOffset(backend, x, 'x'), heapOffset(backend, w, 'w'), b, heapOffset(backend, out, 'y'), M, K, N, alpha, act);
    return out;
  };
}

let registered = false;

/**
 * Registers OmniflowMatMul (float32 W [K, N]) and OmniflowMatMulBf16 (packed W [K, N/2] int32) for the 'wasm'
 * backend, and the float32 kernel's gradient. matMulSmall/matMulBf16 call this themselves; call it directly only to
 * run the kernels through `tf.engine().runKernel`.
 *
 * ```ts
 * registerSimdKernels();
 * const y = tf.engine().runKernel('OmniflowMatMul', { x, w }, { alpha: 1, activation: 'linear' }) as tf.Tensor2D;
 * ```
 */
export function registerSimdKernels(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: OMNIFLOW_MATMUL, backendName: 'wasm', kernelFunc: simdKernel('f32') as unknown as tf.KernelFunc });
  tf.registerKernel({ kernelName: OMNIFLOW_MATMUL_BF16, backendName: 'wasm', kernelFunc: simdKernel('bf16') as unknown as tf.KernelFunc });
  tf.registerGradient({
    kernelName: OMNIFLOW_MATMUL,
    inputsToSave: ['x', 'w'],
    outputsToSave: [true],
    // y = act(alpha·x·W + b): with g = dy·act'(y), dx = alpha·g·Wᵀ, dW = alpha·xᵀ·g, db = Σ_rows g. Transposes are
    // explicit copies: the wasm backend runs transposed matMuls as a scalar loop (see wasm-gradient-kernels.ts).
    gradFunc: ((dy: tf.Tensor, saved: tf.Tensor[], attrs: KernelAttrs) => {
      const [x, w, y] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
      const g = attrs.activation === 'relu' ? tf.mul(dy, tf.step(y)) : dy;
      const scaled = () => (attrs.alpha === 1 ? g : tf.mul(g, tf.scalar(attrs.alpha)));
      return {
        x: () => tf.matMul(scaled(), tf.transpose(w)),
        w: () => tf.matMul(tf.transpose(x), scaled()),
        bias: () => tf.sum(g, 0),
      };
    }) as unknown as tf.GradFunc,
  });
}

function check(op: string, x: tf.Tensor, K: number, N: number, options: MatMulSmallOptions): { alpha: number; activation: 'linear' | MatMulEpilogue } {
  if (x.dtype !== 'float32') throw new Error(`${op}: x must be float32, got ${x.dtype} [${x.shape}]`);
  if (x.rank < 1 || x.shape[x.rank - 1] !== K) throw new Error(`${op}: x's last axis must match W's ${K} rows, got x [${x.shape}] and W [${K}, ${N}]`);
  const { bias } = options;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== N || bias.dtype !== 'float32')) {
    throw new Error(`${op}: bias must be float32 [${N}] for W [${K}, ${N}], got ${bias.dtype} [${bias.shape}]`);
  }
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new Error(`${op}: alpha must be a finite number, got ${alpha}`);
  const activation = options.activation ?? 'linear';
  if (activation !== 'linear' && !(activation in MATMUL_EPILOGUE)) throw new Error(`${op}: activation '${activation}' is not one of linear, ${Object.keys(MATMUL_EPILOGUE).filter((e) => e !== 'none').join(', ')}`);
  return { alpha, activation: activation === 'none' ? 'linear' : activation };
}

/** tf.matMul + scale + bias + activation: the exact-ops path for other backends and large M. */
function reference(x2: tf.Tensor2D, w: tf.Tensor2D, options: MatMulSmallOptions, attrs: KernelAttrs): tf.Tensor2D {
  return tf.tidy(() => {
    let y: tf.Tensor2D = tf.matMul(x2, w);
    if (attrs.alpha !== 1) y = tf.mul(y, tf.scalar(attrs.alpha));
    if (options.bias) y = tf.add(y, options.bias);
    if (attrs.activation === 'relu') y = tf.relu(y);
    return y;
  });
}

function overRows(x: tf.Tensor, K: number, N: number, f: (x2: tf.Tensor2D) => tf.Tensor2D): tf.Tensor {
  if (x.rank === 2) return f(x as tf.Tensor2D);
  return tf.tidy(() => tf.reshape(f(tf.reshape(x, [-1, K]) as tf.Tensor2D), [...x.shape.slice(0, -1), N]));
}

let simdFloat32 = true;

/**
 * Turns omniflow's SIMD kernel for float32 weights off (every float32 product through plain tf.matMul and friends, as
 * before the kernel existed) or back on (the default). For A/B measurements such as bench/talker.bench.ts's tfjs
 * baseline; packed bf16 weights always use their kernel on wasm.
 *
 * ```ts
 * useSimdMatMul(false); const tfjsMs = time(step); useSimdMatMul(true);
 * ```
 */
export function useSimdMatMul(enabled: boolean): void {
  simdFloat32 = enabled;
}

/**
 * Whether matMulSmall runs omniflow's kernel for `rows` rows now: on the wasm backend, at most simdMatMulMaxRows()
 * rows, and not turned off by useSimdMatMul(false). Callers that pick between the kernel and another backend op
 * (fusedLinear) ask here so the rule lives in one place.
 *
 * ```ts
 * simdMatMulApplies(1); // true on wasm
 * ```
 */
export function simdMatMulApplies(rows: number): boolean {
  return simdFloat32 && tf.getBackend() === 'wasm' && rows <= simdMatMulMaxRows();
}

/**
 * `activation(alpha · x·W + bias)` over x's last axis, W float32 [K, N] (`[in, out]`, as layers/linear.ts stores it).
 * On the wasm backend with at most `simdMatMulMaxRows()` rows (16) it runs omniflow's SIMD kernels (bias and activation
 * fused; 1-3 rows stream W once, 4-16 the register-blocked kernel); otherwise tf.matMul and friends. Differentiable on both paths.
 *
 * ```ts
 * const y = matMulSmall(h, w, { bias: b, activation: 'relu' }); // h [1, 4096], w [4096, 4096] → y [1, 4096]
 * ```
 */
export function matMulSmall(x: tf.Tensor, w: tf.Tensor2D, options: MatMulSmallOptions = {}): tf.Tensor {
  if (w.rank !== 2 || w.dtype !== 'float32') throw new Error(`matMulSmall: W must be float32 [K, N], got ${w.dtype} [${w.shape}]`);
  const [K, N] = w.shape;
  const attrs = check('matMulSmall', x, K, N, options);
  return overRows(x, K, N, (x2) => {
    if (!simdMatMulApplies(x2.shape[0])) return reference(x2, w, options, attrs);
    registerSimdKernels();
    const inputs: tf.NamedTensorMap = options.bias ? { x: x2, w, bias: options.bias } : { x: x2, w };
    return tf.engine().runKernel(OMNIFLOW_MATMUL, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
  });
}

/**
 * Like matMulSmall over bf16 weights packed by `packBf16` (int32 [K, N/2]): reads half the bytes, so a batch-1 matvec
 * takes about 0.7x the float32 time. On wasm the kernel runs for any number of rows (level with tf.matMul on float32
 * weights up to 64 rows, measured; unpacking W per call would cost more than the matmul). On other backends the weight
 * is unpacked for the call. Not differentiable (inference weights).
 *
 * ```ts
 * const packed = packBf16(w); // once, at load
 * const y = matMulBf16(h, packed, { bias: b }); // h [1, K] → y [1, N]
 * ```
 */
export function matMulBf16(x: tf.Tensor, packed: tf.Tensor2D, options: MatMulSmallOptions = {}): tf.Tensor {
  if (packed.rank !== 2 || packed.dtype !== 'int32') throw new Error(`matMulBf16: W must be packed bf16, int32 [K, N/2] from packBf16, got ${packed.dtype} [${packed.shape}]`);
  const K = packed.shape[0], N = 2 * packed.shape[1];
  const attrs = check('matMulBf16', x, K, N, options);
  return overRows(x, K, N, (x2) => {
    if (tf.getBackend() !== 'wasm') {
      const w = unpackBf16(packed);
      try {
        return reference(x2, w, options, attrs);
      } finally {
        w.dispose();
      }
    }
    registerSimdKernels();
    const inputs: tf.NamedTensorMap = options.bias ? { x: x2, w: packed, bias: options.bias } : { x: x2, w: packed };
    return tf.engine().runKernel(OMNIFLOW_MATMUL_BF16, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
  });
}
