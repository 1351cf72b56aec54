import * as tf from '@tensorflow/tfjs-core';
import { isInt8Weight, matMulBf16, matMulInt8, matMulSmall, packBf16Bits, packInt8, type Checkpoint, type Int8Packing } from '@omniflow/runtime-gpu';

// The A/B switch lives with the kernel's routing rule in the runtime; re-exported for model code and benches.
export { useSimdMatMul } from '@omniflow/runtime-gpu';

/**
 * Where layer loaders read weights: a `Checkpoint`, or anything with the same `get(name, expectedShape)` (e.g.
 * random weights built in memory for a benchmark).
 */
export type WeightSource = Pick<Checkpoint, 'get'>;

/**
 * How a model keeps its matmul weights. 'float32' (the default) is exact and trainable. 'bf16' rounds each weight to
 * bfloat16 and packs two per int32 (`[in, out / 2]`), halving the bytes every decode step reads; products still
 * accumulate in float32. The released checkpoint is stored in bf16, so for it the rounding changes nothing.
 * 'int8' quantizes each output column to int8 with its own scale (max |w| / 127; runtime-gpu's packInt8: a marked
 * int32 tensor `[ceil(out / 4), ceil(in / 16)·16 + 4]`, or `[ceil(out / 8), 2·ceil(in / 8)·8 + 8]` in the 'panels'
 * packing that convolutions use), a quarter of float32's bytes; on wasm the product quantizes
 * x to int16 per row and accumulates in int32. Each weight is off by up to half a step (1/254 of its column's largest
 * weight): measured relative rms error of a [4, 4096]·[4096, 1024] product 0.39% for uniform random weights, 0.86%
 * for Gaussian ones (bf16: 0.15%). Inference only (no gradients through packed weights).
 */
export type WeightDtype = 'float32' | 'bf16' | 'int8';

/**
 * A Linear layer with its weight stored as [in, out]: PyTorch checkpoints store [out, in], and the
 * wasm backend's transposeB matmul is about 6x slower, so the weight is transposed once at load.
 */
export interface Linear {
  /**
   * [in, out] float32; for a 'bf16' weight ({@link packWeight}) int32 [in, out / 2]; for an 'int8' weight the marked
   * int32 tensor from packInt8 ([ceil(out / 4), ceil(in / 16)·16 + 4]: use inFeatures / outFeatures, not its shape).
   */
  readonly weight: tf.Tensor2D;
  readonly bias?: tf.Tensor1D; // [out]
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/**
 * Loads `${prefix}.weight` (and `${prefix}.bias` when `bias` is true) from a checkpoint, in the given weight format.
 *
 * ```ts
 * const q = loadLinear(ckpt, 'thinker.model.layers.0.self_attn.q_proj', 32, 64);
 * const y = linear(x, q); // x [..., 32] -> y [..., 64]
 * const q16 = loadLinear(ckpt, 'thinker.model.layers.0.self_attn.q_proj', 32, 64, false, 'bf16'); // half the bytes
 * const q8 = loadLinear(ckpt, 'thinker.model.layers.0.self_attn.q_proj', 32, 64, false, 'int8'); // a quarter
 * ```
 */
export function loadLinear(ckpt: WeightSource, prefix: string, inFeatures: number, outFeatures: number, bias = false, format: WeightDtype = 'float32'): Linear {
  const weight = packFromCheckpointLayout(ckpt.get(`${prefix}.weight`, [outFeatures, inFeatures]).data as Float32Array, inFeatures, outFeatures, format);
  const b = bias ? tf.tensor1d(ckpt.get(`${prefix}.bias`, [outFeatures]).data as Float32Array) : undefined;
  return { weight, bias: b, inFeatures, outFeatures };
}

/**
 * packWeight for a host matrix in the checkpoint's Linear layout, [out, in]: int8 packs it output-major as it is (no
 * transpose on the host), the other formats from its [in, out] transpose.
 *
 * ```ts
 * const w = packFromCheckpointLayout(ckpt.get('…q_proj.weight', [64, 32]).data as Float32Array, 32, 64, 'int8');
 * ```
 */
export function packFromCheckpointLayout(data: Float32Array, inFeatures: number, outFeatures: number, format: WeightDtype = 'float32'): tf.Tensor2D {
  return format === 'int8'
    ? packInt8(data, inFeatures, outFeatures, 'out-in')
    : packWeight(transposeHost(data, outFeatures, inFeatures), inFeatures, outFeatures, format);
}

/**
 * A weight matrix on the device from a host `[rows, cols]` float32 array (`[in, out]`), in `format`. A bf16 matrix
 * needs an even number of columns (two per int32); one with an odd width (e.g. the MoE shared-expert gate's single
 * column) stays float32, which every product below accepts. An int8 matrix takes any shape (packInt8: quantized per
 * column on the host, one tensor on the device), packed for products of a few rows ('rows', the default) or of many
 * ('panels': convolutions; runtime-gpu's Int8Packing).
 *
 * ```ts
 * const w = packWeight(new Float32Array(1024 * 2048), 1024, 2048, 'bf16'); // int32 [1024, 1024]
 * const y = matMulWeight(x, w); // x [m, 1024] -> [m, 2048]
 * const w8 = packWeight(new Float32Array(1024 * 2048), 1024, 2048, 'int8'); // int8 weight, int32 [512, 1028]
 * ```
 */
export function packWeight(data: Float32Array, rows: number, cols: number, format: WeightDtype = 'float32', packing: Int8Packing = 'rows'): tf.Tensor2D {
  if (data.length !== rows * cols) throw new Error(`packWeight: ${data.length} values for a [${rows}, ${cols}] matrix`);
  if (format === 'int8') return packInt8(data, rows, cols, 'in-out', packing);
  if (format === 'float32' || cols % 2 !== 0) return tf.tensor2d(data, [rows, cols]);
  // Packed on the host (round to nearest even, two per int32, see packBf16): no float32 copy on the device.
  return tf.tensor2d(packBf16Bits(new Uint32Array(data.buffer, data.byteOffset, data.length)), [rows, cols / 2], 'int32');
}

/**
 * x · W (+ bias) for a weight from {@link packWeight}: int8 (a weight packInt8 marked), else bf16-packed (int32), else
 * float32. Small-M float32 products (decode steps) run omniflow's wasm SIMD kernel, packed weights always do on wasm;
 * other backends fall back to tfjs.
 *
 * ```ts
 * const y = matMulWeight(x, mlp.down); // [m, intermediate] -> [m, hidden]
 * const scaled = matMulWeight(x, expert.down, { alpha: 0.25 }); // 0.25 · x·W in the same pass
 * ```
 */
export function matMulWeight(x: tf.Tensor2D, w: tf.Tensor2D, options: { bias?: tf.Tensor1D; alpha?: number } = {}): tf.Tensor2D {
  if (isInt8Weight(w)) return matMulInt8(x, w, options) as tf.Tensor2D;
  return (w.dtype === 'int32' ? matMulBf16(x, w, options) : matMulSmall(x, w, options)) as tf.Tensor2D;
}

/** y = x W (+ b) over the last axis of x; x may have any leading shape. */
export function linear(x: tf.Tensor, l: Linear): tf.Tensor {
  return tf.tidy(() => {
    const lead = x.shape.slice(0, -1);
    const x2 = x.rank === 2 ? (x as tf.Tensor2D) : tf.reshape(x, [-1, l.inFeatures]) as tf.Tensor2D;
    const y = matMulWeight(x2, l.weight, { bias: l.bias });
    return x.rank === 2 ? y : tf.reshape(y, [...lead, l.outFeatures]);
  });
}

export function disposeLinear(l: Linear): void {
  l.weight.dispose();
  l.bias?.dispose();
}

/**
 * PyTorch [out, in] → [in, out] on the host, so the device holds only the final layout.
 *
 * ```ts
 * transposeHost(Float32Array.of(1, 2, 3, 4, 5, 6), 2, 3); // [1, 4, 2, 5, 3, 6]
 * ```
 */
export function transposeHost(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c]!;
  return out;
}

