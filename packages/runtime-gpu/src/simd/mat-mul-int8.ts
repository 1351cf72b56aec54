import * as tf from '@tensorflow/tfjs-core';
import { int8PackedShape, int8PaddedK, int8WeightShape, unpackInt8, type Int8Packing } from './int8.js';
import { heapOffset, perWasmBackend, type MatMulSmallOptions, type WasmBackendInternals } from './mat-mul-small.js';
import { MATMUL_EPILOGUE, type MatMulEpilogue } from './matmul-module.js';
import { buildInt8MatMul, INT8_VARIANT, int8ScratchBytes, int8XMax, type Int8MatMul } from './matmul-int8-module.js';

/**
 * Kernel name registered for the 'wasm' backend: x float32 [M, K], w an int8 weight from packInt8 (either packing, told
 * apart by its shape), optional bias.
 */
export const OMNIFLOW_MATMUL_INT8 = 'OmniflowMatMulInt8';

/**
 * Above the kernel's row block, columns run in tiles of about this many weight bytes, so every row block after the
 * first finds the tile in L2 (512 KiB per core here) and W is read from memory once per call.
 */
const TILE_BYTES = 256 * 1024;

interface Int8Attrs {
  /** Outputs (the packed tensor holds whole blocks of 4). */
  N: number;
  alpha: number;
  activation: 'linear' | MatMulEpilogue;
}

const kernelsFor = perWasmBackend((heap, limits): Int8MatMul => buildInt8MatMul(heap, INT8_VARIANT, limits));

function int8Kernel(args: { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap }): tf.TensorInfo {
  const backend = args.backend as WasmBackendInternals;
  const { x, w, bias } = args.inputs as { x: tf.TensorInfo; w: tf.TensorInfo; bias?: tf.TensorInfo };
  const { N, alpha, activation } = args.attrs as unknown as Int8Attrs;
  const [M, K] = x.shape as [number, number];
  const packing = int8PackingOf(w.shape as [number, number], K, N);
  if (!packing) {
    throw new Error(`${OMNIFLOW_MATMUL_INT8}: attr N = ${N} and packed w [${w.shape}] do not make an int8 weight for x [${x.shape}] (w must be int32 [ceil(N/4), ceil(K/16)·16 + 4] ('rows') or [ceil(N/8), 2·ceil(K/8)·8 + 8] ('panels'))`);
  }
  const out = backend.makeOutput([M, N], 'float32');
  if (M === 0 || N === 0) return out;
  runInt8Product(backend, { x: heapOffset(backend, x, 'x'), rows: M, channels: K, taps: 1, tapStride: 0 }, w, bias, out, N, packing, alpha, activation === 'linear' ? MATMUL_EPILOGUE.none : MATMUL_EPILOGUE[activation]);
  return out;
}

/** The packing whose shape `wShape` is for a [K, N] int8 weight, or undefined if neither fits. */
function int8PackingOf(wShape: [number, number], K: number, N: number): Int8Packing | undefined {
  if (!Number.isInteger(N) || N < 1) return undefined;
  return (['rows', 'panels'] as const).find((p) => {
    const [groups, words] = int8PackedShape(K, N, p);
    return wShape[0] === groups && wShape[1] === words;
  });
}

/**
 * Rows of x in the wasm heap, each k taps of C floats: a plain [M, K] matrix (taps 1, channels K), or the im2col rows
 * of a 1-D conv gathered from its input (row m's tap t at x + m·C·4 + t·tapStride bytes).
 */
export interface Int8Rows {
  /** Byte offset of the first row in the heap. */
  readonly x: number;
  readonly rows: number;
  readonly channels: number;
  readonly taps: number;
  readonly tapStride: number;
}

/**
 * y = epilogue(alpha · rows · dequant(W) + bias) into `out` ([rows, N] float32, already allocated) on the wasm backend:
 * quantizes the rows into scratch on the heap (freed before returning), then runs the packing's row blocks over
 * column tiles. For kernels built on the int8 product (matMulInt8's and a conv's im2col product).
 *
 * ```ts
 * runInt8Product(backend, { x: xOffset, rows: L, channels: C, taps: 7, tapStride: d * C * 4 }, w, bias, out, N, 'panels', 1, MATMUL_EPILOGUE.none);
 * ```
 */
export function runInt8Product(
  backend: WasmBackendInternals, src: Int8Rows, w: tf.TensorInfo, bias: tf.TensorInfo | undefined, out: tf.TensorInfo, N: number, packing: Int8Packing, alpha: number, epilogue: number,
): void {
  const M = src.rows, K = src.channels * src.taps, Kp = int8PaddedK(K, packing);
  const k = kernelsFor(backend);
  // Scratch for the quantized rows and their scales. Offsets are read after every allocation (an allocation can grow
  // the heap; offsets stay valid, views do not).
  const scratch = backend.makeOutput([Math.ceil(int8ScratchBytes(M, Kp) / 4)], 'int32');
  try {
    const xq = heapOffset(backend, scratch, 'scratch'), sx = xq + M * Kp * 2;
    const wOff = heapOffset(backend, w, 'w'), yOff = heapOffset(backend, out, 'y');
    const bOff = bias ? heapOffset(backend, bias, 'bias') : 0;
    k.quantize(src.x, M, src.channels, src.taps, src.tapStride, Kp, int8XMax(K, packing), xq, sx);
    const panels = packing === 'panels';
    const fns = panels ? k.panels : k.rows, maxRows = panels ? k.variant.panelRows : k.variant.maxRows;
    const block = (r0: number, n0: number, n1: number) => {
      fns[Math.min(maxRows, M - r0)]!(xq + r0 * Kp * 2, sx + 4 * r0, wOff, bOff, yOff + r0 * N * 4, Kp, N, n0, n1, alpha, epilogue);
    };
    if (M <= maxRows) {
      block(0, 0, N); // decode: one pass over W
    } else {
      // tiles of whole blocks or panels (g outputs, g·Kp + 4g bytes each)
      const g = panels ? 8 : 4;
      const tile = g * Math.max(1, Math.floor(TILE_BYTES / (g * Kp + 4 * g)));
      for (let n0 = 0; n0 < N; n0 += tile) for (let r0 = 0; r0 < M; r0 += maxRows) block(r0, n0, Math.min(N, n0 + tile));
    }
  } finally {
    backend.disposeData(scratch.dataId);
  }
}

let registered = false;

/**
 * Registers OmniflowMatMulInt8 for the 'wasm' backend (inference only: no gradient). matMulInt8 calls this itself.
 *
 * ```ts
 * registerInt8Kernel();
 * // w32 float32 [K, N]; the packed tensor holds whole blocks of 4 outputs, so N is an attr
 * const y = tf.engine().runKernel('OmniflowMatMulInt8', { x, w: packInt8(w32) }, { N, alpha: 1, activation: 'linear' });
 * ```
 */
export function registerInt8Kernel(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: OMNIFLOW_MATMUL_INT8, backendName: 'wasm', kernelFunc: int8Kernel as unknown as tf.KernelFunc });
}

/**
 * `activation(alpha · x·dequant(W) + bias)` over x's last axis, for a weight quantized by `packInt8` (int8, one scale
 * per output column; a quarter of float32's bytes). On wasm, omniflow's integer-dot kernel: x is quantized per row to
 * int16 for the call (off by at most max|x| / (2·int8XMax(K)) per value: 3e-5 of max|x| at K = 4096, small next to
 * the weights' own rounding), products accumulate exactly in int32. On other backends the weight is dequantized for
 * the call and tf.matMul runs on float x. Any number of rows; not differentiable (inference weights).
 *
 * ```ts
 * const packed = packInt8(w); // once, at load: w float32 [K, N]
 * const y = matMulInt8(h, packed, { bias: b, activation: 'relu' }); // h [1, K] → y [1, N]
 * ```
 */
export function matMulInt8(x: tf.Tensor, packed: tf.Tensor2D, options: MatMulSmallOptions = {}): tf.Tensor {
  const shape = int8WeightShape(packed);
  if (!shape) throw new Error(`matMulInt8: W must be an int8 weight from packInt8, got an unmarked ${packed.dtype} [${packed.shape}] tensor`);
  const { K, N } = shape;
  if (packed.isDisposed) throw new Error(`matMulInt8: the int8 weight [${K}, ${N}] is disposed`);
  if (x.dtype !== 'float32') throw new Error(`matMulInt8: x must be float32, got ${x.dtype} [${x.shape}]`);
  if (x.rank < 1 || x.shape[x.rank - 1] !== K) throw new Error(`matMulInt8: x's last axis must match W's ${K} rows, got x [${x.shape}] and W [${K}, ${N}] (int8)`);
  const { bias } = options;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== N || bias.dtype !== 'float32')) {
    throw new Error(`matMulInt8: bias must be float32 [${N}] for W [${K}, ${N}] (int8), got ${bias.dtype} [${bias.shape}]`);
  }
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new Error(`matMulInt8: alpha must be a finite number, got ${alpha}`);
  const activation = options.activation ?? 'linear';
  if (activation !== 'linear' && !(activation in MATMUL_EPILOGUE)) throw new Error(`matMulInt8: activation '${activation}' is not one of linear, ${Object.keys(MATMUL_EPILOGUE).filter((e) => e !== 'none').join(', ')}`);
  const attrs: Int8Attrs = { N, alpha, activation: activation === 'none' ? 'linear' : activation };

  const run = (x2: tf.Tensor2D): tf.Tensor2D => {
    if (tf.getBackend() === 'wasm') {
      registerInt8Kernel();
      const inputs: tf.NamedTensorMap = bias ? { x: x2, w: packed, bias } : { x: x2, w: packed };
      return tf.engine().runKernel(OMNIFLOW_MATMUL_INT8, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
    }
    return tf.tidy(() => {
      let y: tf.Tensor2D = tf.matMul(x2, unpackInt8(packed));
      if (alpha !== 1) y = tf.mul(y, tf.scalar(alpha));
      if (bias) y = tf.add(y, bias);
      return attrs.activation === 'relu' ? tf.relu(y) : y;
    });
  };
  if (x.rank === 2) return run(x as tf.Tensor2D);
  return tf.tidy(() => tf.reshape(run(tf.reshape(x, [-1, K]) as tf.Tensor2D), [...x.shape.slice(0, -1), N]));
}
