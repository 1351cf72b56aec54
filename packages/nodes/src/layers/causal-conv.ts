import * as tf from '@tensorflow/tfjs-core';
import {
  heapOffset, int8WeightShape, MATMUL_EPILOGUE, runInt8Product, wasmHeap, type Checkpoint, type Int8Packing, type WasmBackendInternals,
} from '@omniflow/runtime-gpu';
import { matMulWeight, packWeight, type WeightDtype } from './linear.js';
import type { StreamState } from './stream-state.js';

/*
 * Causal 1-D convolutions, channels-last ([1, L, C]) and streamable: each function takes an optional
 * StreamState and a layer name, reads the left context the previous chunk left there and stages the
 * context the next chunk needs. Without a state the input is the whole signal (zero left context),
 * exactly like the reference's left zero padding.
 */

/**
 * A causal Conv1d (stride 1): left-pad `(k-1)·dilation` zeros, no right pad, so length is preserved. Exactly one of
 * `filter`, `pointwise`, `im2col` holds the weight.
 */
export interface CausalConv1d {
  /** tfjs conv2d filter [1, k, in, out] (the conv runs as a 1 × L image); float32 k > 1 only. */
  readonly filter?: tf.Tensor4D;
  /** [in, out] (float32, or an int8 weight from packWeight), only for k = 1, which runs as a matmul. */
  readonly pointwise?: tf.Tensor2D;
  /**
   * k > 1 with int8 weights: the kernel as one [k·in, out] matrix packed int8 (row t·in + i holds tap t, input i), so
   * the conv is one product of the k dilated shifts of x side by side ([L, k·in], im2col) with it.
   */
  readonly im2col?: tf.Tensor2D;
  readonly bias: tf.Tensor1D;
  readonly kernelSize: number;
  readonly dilation: number;
  readonly inChannels: number;
  readonly outChannels: number;
}

/**
 * Loads `${prefix}.conv.weight` ([out, in, k], PyTorch layout) and `${prefix}.conv.bias`. `format` 'int8' packs the
 * weight per output column (packWeight) and runs the conv as im2col + the int8 product: on wasm 1.4-2.3x faster than
 * XNNPACK's float32 conv at Code2Wav's decoder shapes (k = 7, 96-1536 channels, 4-1920 rows; slower only for a
 * single output channel), with the int8 product's error (~0.4% rms with uniform random weights); `packing` 'panels'
 * for convs that see many rows per call (runtime-gpu's Int8Packing: ~1.3x the 'rows' kernel there). Other formats keep
 * float32 (a conv sees many rows per call, where bf16 does not pay).
 *
 * ```ts
 * const conv = loadCausalConv1d(ckpt, 'code2wav.decoder.0', 1024, 1536, 7);
 * const y = causalConv1d(x, conv); // [1, L, 1024] -> [1, L, 1536]
 * const conv8 = loadCausalConv1d(ckpt, 'code2wav.decoder.0', 1024, 1536, 7, 1, 'int8', 'panels'); // a quarter of the bytes
 * ```
 */
export function loadCausalConv1d(
  ckpt: Checkpoint, prefix: string, inChannels: number, outChannels: number, kernelSize: number, dilation = 1, format: WeightDtype = 'float32', packing: Int8Packing = 'rows',
): CausalConv1d {
  const w = ckpt.get(`${prefix}.conv.weight`, [outChannels, inChannels, kernelSize]).data as Float32Array;
  const bias = tf.tensor1d(ckpt.get(`${prefix}.conv.bias`, [outChannels]).data as Float32Array);
  const base = { bias, kernelSize, dilation, inChannels, outChannels };
  // [out, in, k] -> [k, in, out] on the host: row (t·in + i), column o.
  const m = new Float32Array(w.length);
  for (let o = 0; o < outChannels; o++) {
    for (let i = 0; i < inChannels; i++) {
      for (let t = 0; t < kernelSize; t++) m[(t * inChannels + i) * outChannels + o] = w[(o * inChannels + i) * kernelSize + t];
    }
  }
  const int8 = format === 'int8';
  // A pointwise conv is a plain matmul, faster than conv2d on wasm.
  if (kernelSize === 1) return { ...base, pointwise: packWeight(m, inChannels, outChannels, int8 ? 'int8' : 'float32', packing) };
  // [k, in, out] read as [k·in, out] is the im2col weight: tap-major rows, as the shifted slices are concatenated.
  if (int8) return { ...base, im2col: packWeight(m, kernelSize * inChannels, outChannels, 'int8', packing) };
  return { ...base, filter: tf.tensor4d(m, [1, kernelSize, inChannels, outChannels]) };
}

/** Left context (samples) a causal conv needs from the previous chunk. */
export const causalContext = (conv: { kernelSize: number; dilation: number }): number => (conv.kernelSize - 1) * conv.dilation;

/** y = causal_conv(x) for x [1, L, in] -> [1, L, out]; with `state`, continues the previous chunk. */
export function causalConv1d(x: tf.Tensor3D, conv: CausalConv1d, state?: StreamState, name = ''): tf.Tensor3D {
  return tf.tidy(() => {
    const length = x.shape[1], inC = conv.inChannels;
    if (conv.pointwise) return tf.reshape(matMulRows(tf.reshape(x, [length, inC]), conv.pointwise, conv.bias), [1, length, conv.outChannels]);
    const padded = withLeftContext(x, causalContext(conv), state, name);
    if (conv.im2col) {
      // Row l of the im2col matrix is [x[l], x[l + d], ..., x[l + (k-1)·d]] of the padded input: each output row is
      // one product row, so it depends on its own input rows only (int8 quantizes x per row: chunking cannot change it).
      const rows = tf.reshape(padded, [padded.shape[1], inC]) as tf.Tensor2D;
      if (im2colInt8Applies(rows, conv.im2col)) return tf.reshape(im2colInt8(rows, conv.im2col, conv.kernelSize, conv.dilation, conv.bias), [1, length, conv.outChannels]);
      const y = matMulWeight(im2col(rows, conv.kernelSize, conv.dilation), conv.im2col, { bias: conv.bias });
      return tf.reshape(y, [1, length, conv.outChannels]);
    }
    // The bias rides in the conv (fused): one pass less over the output than conv1d + add.
    const y = tf.fused.conv2d({
      x: tf.reshape(padded, [1, 1, padded.shape[1], inC]) as tf.Tensor4D, filter: conv.filter!, strides: 1, pad: 'valid', dilations: [1, conv.dilation], bias: conv.bias,
    });
    return tf.reshape(y, [1, length, conv.outChannels]);
  });
}

/** A causal depthwise Conv1d (groups = channels), as in ConvNeXt's `dwconv`. */
export interface CausalDepthwiseConv1d {
  /** tfjs depthwiseConv2d filter [1, k, C, 1]. */
  readonly filter: tf.Tensor4D;
  readonly bias: tf.Tensor1D;
  readonly kernelSize: number;
  readonly dilation: number;
  readonly channels: number;
}

/**
 * Loads `${prefix}.conv.weight` ([C, 1, k]) and `${prefix}.conv.bias`.
 *
 * ```ts
 * const dw = loadCausalDepthwiseConv1d(ckpt, 'code2wav.upsample.0.1.dwconv', 1024, 7);
 * const y = causalDepthwiseConv1d(x, dw);
 * ```
 */
export function loadCausalDepthwiseConv1d(ckpt: Checkpoint, prefix: string, channels: number, kernelSize: number, dilation = 1): CausalDepthwiseConv1d {
  const w = ckpt.get(`${prefix}.conv.weight`, [channels, 1, kernelSize]).data as Float32Array;
  const filter = tf.tidy(() => tf.reshape(tf.transpose(tf.tensor2d(w, [channels, kernelSize])), [1, kernelSize, channels, 1]) as tf.Tensor4D);
  return { filter, bias: tf.tensor1d(ckpt.get(`${prefix}.conv.bias`, [channels]).data as Float32Array), kernelSize, dilation, channels };
}

export function causalDepthwiseConv1d(x: tf.Tensor3D, conv: CausalDepthwiseConv1d, state?: StreamState, name = ''): tf.Tensor3D {
  return tf.tidy(() => {
    const length = x.shape[1];
    const padded = withLeftContext(x, causalContext(conv), state, name);
    const y = tf.depthwiseConv2d(tf.reshape(padded, [1, 1, padded.shape[1], conv.channels]) as tf.Tensor4D, conv.filter, 1, 'valid', 'NHWC', [1, conv.dilation]);
    return tf.reshape(tf.add(y, conv.bias), [1, length, conv.channels]);
  });
}

/**
 * A causal ConvTranspose1d as the reference's CausalTransConvNet: ConvTranspose1d(k, stride s) with no
 * padding, then `k - s` samples trimmed from both ends. Two shapes occur in Code2Wav:
 * - k = s (the upsampling stages): no overlap, no trim; L inputs give L·s outputs;
 * - k = 2s (the decoder blocks): each input writes two blocks of s samples, the second overlapping the
 *   next input's first; trimming leaves (L-1)·s samples, and output block j needs inputs j and j+1 (one
 *   input of look-ahead).
 *
 * Both run as one matmul. For k = 2s, output block j is x[j]·W[:, :, 0:s] + x[j-1]·W[:, :, s:2s]: a two-tap
 * polyphase conv, so the rows [x[j-1], x[j]] (2·in wide) are multiplied by the two kernel halves stacked,
 * [2·in, s·out], giving s samples per row. On wasm this is about 10x faster than conv2dTranspose and 2x faster
 * than one matmul to k·out columns followed by an overlap-add of the halves (notes/code2wav-on-wasm.md).
 */
export interface CausalTransConv1d {
  /**
   * k = s: [in, s·out], column t·out + o holds the PyTorch weight [i, o, t].
   * k = 2s: [2·in, s·out], row i holds W[i, o, s + t] (the tap on the previous input), row in + i holds W[i, o, t].
   * float32, packed bf16 (int32 [rows, s·out/2]) or int8 (packInt8's marked int32 tensor), see packWeight.
   */
  readonly weight: tf.Tensor2D;
  readonly bias: tf.Tensor1D;
  /** The bias repeated for each of the s samples of a row, [s·out]. */
  readonly phaseBias: tf.Tensor1D;
  readonly kernelSize: number;
  readonly stride: number;
  readonly inChannels: number;
  readonly outChannels: number;
}

/**
 * Loads `${prefix}.conv.weight` ([in, out, k], PyTorch ConvTranspose1d layout) and `${prefix}.conv.bias`. With
 * `format` 'bf16' the weight is kept packed (packWeight): worth it where a call sees one or two rows, so the product
 * streams its weights (Code2Wav's upsampling while streaming); exact on a bf16 checkpoint. 'int8' packs the joined
 * polyphase matrix per output column (after joining: the packed layout groups outputs), faster at any row count;
 * `packing` as for loadCausalConv1d.
 *
 * ```ts
 * const up = loadCausalTransConv1d(ckpt, 'code2wav.decoder.1.block.1', 1536, 768, 16, 8);
 * const y = causalTransConv1d(x, up); // [1, L, 1536] -> [1, (L-1)·8, 768]
 * ```
 */
export function loadCausalTransConv1d(
  ckpt: Checkpoint, prefix: string, inChannels: number, outChannels: number, kernelSize: number, stride: number, format: WeightDtype = 'float32', packing: Int8Packing = 'rows',
): CausalTransConv1d {
  if (kernelSize !== stride && kernelSize !== 2 * stride) {
    throw new Error(`${prefix}: causal transposed conv with kernel ${kernelSize} and stride ${stride} is not supported (kernel must be stride or 2·stride)`);
  }
  const w = ckpt.get(`${prefix}.conv.weight`, [inChannels, outChannels, kernelSize]).data as Float32Array;
  const s = stride, out = outChannels, cols = s * out;
  // k = s: row i, column t·out + o = w[i, o, t]. k = 2s: rows [0, in) take the taps s..2s-1 (they act on x[j-1]),
  // rows [in, 2·in) the taps 0..s-1 (on x[j]).
  const rows = kernelSize === s ? inChannels : 2 * inChannels;
  const m = new Float32Array(rows * cols);
  for (let i = 0; i < inChannels; i++) {
    for (let o = 0; o < out; o++) {
      for (let t = 0; t < kernelSize; t++) {
        const v = w[(i * out + o) * kernelSize + t];
        if (t < s) m[(kernelSize === s ? i : inChannels + i) * cols + t * out + o] = v;
        else m[i * cols + (t - s) * out + o] = v;
      }
    }
  }
  const weight = packWeight(m, rows, cols, format, packing);
  const bias = tf.tensor1d(ckpt.get(`${prefix}.conv.bias`, [outChannels]).data as Float32Array);
  const phaseBias = tf.tidy(() => tf.tile(bias, [s]) as tf.Tensor1D);
  return { weight, bias, phaseBias, kernelSize, stride, inChannels, outChannels };
}

/**
 * x [1, L, in] -> [1, L·s, out] (k = s) or [1, (L-1)·s, out] (k = 2s; with a state holding the previous
 * chunk's last input, L·s: the block that input was waiting for comes out first).
 */
export function causalTransConv1d(x: tf.Tensor3D, conv: CausalTransConv1d, state?: StreamState, name = ''): tf.Tensor3D {
  return tf.tidy(() => {
    const length = x.shape[1];
    const s = conv.stride, inC = conv.inChannels, out = conv.outChannels;
    const rows = tf.reshape(x, [length, inC]) as tf.Tensor2D;
    if (conv.kernelSize === s) return tf.reshape(matMulRows(rows, conv.weight, conv.phaseBias), [1, length * s, out]);
    const previous = state?.get(name) as tf.Tensor2D | undefined; // the previous chunk's last input, [1, in]
    state?.set(name, tf.slice(rows, [length - 1, 0], [1, inC]));
    // Block j pairs x[j-1] with x[j]; the first input has no predecessor here unless the state holds one (the block
    // the reference trims).
    const before = previous ? (length > 1 ? tf.concat([previous, tf.slice(rows, [0, 0], [length - 1, inC])], 0) : previous) : tf.slice(rows, [0, 0], [length - 1, inC]);
    const n = before.shape[0];
    if (n === 0) return tf.zeros([1, 0, out]) as tf.Tensor3D; // a lone first input only fills the trimmed block
    const after = previous ? rows : tf.slice(rows, [1, 0], [n, inC]);
    const y = matMulRows(tf.concat([before, after], 1) as tf.Tensor2D, conv.weight, conv.phaseBias); // [n, s·out]
    return tf.reshape(y, [1, n * s, out]);
  });
}

/**
 * Rows up to which a float32 product runs omniflow's SIMD kernel rather than tfjs's matMul (XNNPACK). Measured on
 * Code2Wav's shapes ([1024, 4096], [4096, 1024], [3072, 6144]): the kernel is 1.3–1.8x faster at 1–2 rows, but at 4 rows
 * XNNPACK is 1.1–1.7x faster (the kernel turns compute-bound there).
 */
export const KERNEL_MAX_ROWS = 2;

/**
 * a·W + bias for a weight from packWeight: packed bf16 through its kernel (matMulWeight), float32 through the SIMD
 * kernel up to KERNEL_MAX_ROWS rows and through tfjs's fused matMul (bias in the same pass) beyond.
 *
 * ```ts
 * const y = matMulRows(x, conv.pointwise!, conv.bias); // [L, in] -> [L, out]
 * ```
 */
export function matMulRows(a: tf.Tensor2D, weight: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor2D {
  if (weight.dtype === 'int32' || a.shape[0] <= KERNEL_MAX_ROWS) return matMulWeight(a, weight, { bias });
  return tf.fused.matMul({ a, b: weight, bias }) as tf.Tensor2D;
}

/**
 * End of stream for a k = 2s transposed conv: the last input's second half alone (the block the reference
 * trims from the right), [1, s, out]; undefined when nothing is pending.
 */
export function causalTransConv1dTail(conv: CausalTransConv1d, state: StreamState, name: string): tf.Tensor3D | undefined {
  const last = state.get(name) as tf.Tensor2D | undefined;
  if (!last || conv.kernelSize === conv.stride) return undefined;
  return tf.tidy(() => {
    // The taps on the previous input alone: [x_last, 0] against both stacked halves (one product for either format).
    const a = tf.concat([last, tf.zerosLike(last)], 1) as tf.Tensor2D;
    return tf.reshape(matMulRows(a, conv.weight, conv.phaseBias), [1, conv.stride, conv.outChannels]);
  });
}

/**
 * The im2col matrix of a 1-D conv: for x [L + (k-1)·d, C] (left context included), row l is [x[l], x[l + d], ...,
 * x[l + (k-1)·d]], [L, k·C]. On wasm one kernel copies the rows within the heap (`copyWithin`, a memmove per tap and
 * row): tfjs's concat of k slices along channels copies element-wise in JS, 12 ms for Code2Wav's last block
 * ([1920, 7·96]) against about 1 ms.
 *
 * ```ts
 * im2col(tf.tensor2d([[1], [2], [3], [4]]), 3, 1); // [[1, 2, 3], [2, 3, 4]]
 * ```
 */
export function im2col(x: tf.Tensor2D, kernelSize: number, dilation: number): tf.Tensor2D {
  const [rows, C] = x.shape, length = rows - (kernelSize - 1) * dilation;
  if (length < 0) throw new Error(`im2col: ${rows} rows are fewer than the ${(kernelSize - 1) * dilation} of left context a k ${kernelSize}, dilation ${dilation} conv needs`);
  if (tf.getBackend() === 'wasm' && x.dtype === 'float32') {
    if (!tf.getKernel(IM2COL, 'wasm')) tf.registerKernel({ kernelName: IM2COL, backendName: 'wasm', kernelFunc: im2colWasm as unknown as tf.KernelFunc });
    return tf.engine().runKernel(IM2COL, { x }, { kernelSize, dilation } as unknown as tf.NamedAttrMap) as tf.Tensor2D;
  }
  return tf.tidy(() => tf.concat(Array.from({ length: kernelSize }, (_, t) => tf.slice(x, [t * dilation, 0], [length, C])), 1) as tf.Tensor2D);
}

const IM2COL = 'OmniflowIm2col';

function im2colWasm(args: { inputs: { x: tf.TensorInfo }; backend: WasmBackendInternals; attrs: { kernelSize: number; dilation: number } }): tf.TensorInfo {
  const { backend, attrs: { kernelSize: k, dilation: d } } = args;
  const x = args.inputs.x, [rows, C] = x.shape;
  const length = rows - (k - 1) * d;
  const out = backend.makeOutput([length, k * C], 'float32');
  // The view after makeOutput: allocating may grow the heap, which detaches views taken before.
  const heap = new Float32Array(wasmHeap(backend).buffer);
  const src = heapOffset(backend, x, 'x') / 4, dst = heapOffset(backend, out, 'im2col') / 4;
  for (let l = 0, o = dst; l < length; l++) {
    for (let t = 0, i = src + (l + t * d) * C; t < k; t++, i += d * C, o += C) heap.copyWithin(o, i, i + C);
  }
  return out;
}

const IM2COL_INT8 = 'OmniflowIm2colInt8';

/** Whether im2colInt8 runs here: the wasm backend, float32 x and an int8 weight (packInt8, either packing). */
export function im2colInt8Applies(x: tf.Tensor2D, weight: tf.Tensor2D): boolean {
  return tf.getBackend() === 'wasm' && x.dtype === 'float32' && int8WeightShape(weight) !== undefined;
}

/**
 * `matMulInt8(im2col(x, k, d), weight, { bias })` with the im2col matrix never built in float32: runtime-gpu's int8
 * quantizer reads each im2col row's k taps straight from x (which stays in L2), takes their max |x| and writes the row
 * quantized to int16 (the same values and scale it gives the float im2col row, so the output is identical); then the
 * weight's packing's row blocks. At Code2Wav's narrow end this skips writing and re-reading the [L, k·C] float32
 * matrix (5 MB for the last block's [1920, 672]). Check im2colInt8Applies first.
 *
 * ```ts
 * const y = im2colInt8(padded, conv.im2col!, 7, 9, conv.bias); // padded [L + 54, 96] -> [L, 96]
 * ```
 */
export function im2colInt8(x: tf.Tensor2D, weight: tf.Tensor2D, kernelSize: number, dilation: number, bias?: tf.Tensor1D): tf.Tensor2D {
  const [rows, C] = x.shape, shape = int8WeightShape(weight);
  if (!shape || shape.K !== kernelSize * C) throw new Error(`im2colInt8: weight must be an int8 [${kernelSize * C}, N] weight for k ${kernelSize} over ${C} channels, got [${weight.shape}]`);
  if (rows < (kernelSize - 1) * dilation) throw new Error(`im2colInt8: ${rows} rows are fewer than the ${(kernelSize - 1) * dilation} of left context a k ${kernelSize}, dilation ${dilation} conv needs`);
  if (bias && (bias.rank !== 1 || bias.shape[0] !== shape.N)) throw new Error(`im2colInt8: bias must be [${shape.N}], got [${bias.shape}]`);
  if (!tf.getKernel(IM2COL_INT8, 'wasm')) tf.registerKernel({ kernelName: IM2COL_INT8, backendName: 'wasm', kernelFunc: im2colInt8Wasm as unknown as tf.KernelFunc });
  const inputs: tf.NamedTensorMap = bias ? { x, w: weight, bias } : { x, w: weight };
  return tf.engine().runKernel(IM2COL_INT8, inputs, { kernelSize, dilation, N: shape.N, packing: shape.packing } as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

function im2colInt8Wasm(args: { inputs: { x: tf.TensorInfo; w: tf.TensorInfo; bias?: tf.TensorInfo }; backend: WasmBackendInternals; attrs: { kernelSize: number; dilation: number; N: number; packing: Int8Packing } }): tf.TensorInfo {
  const { backend, attrs: { kernelSize: k, dilation: d, N, packing } } = args;
  const { x, w, bias } = args.inputs;
  const [rows, C] = x.shape as [number, number];
  const L = rows - (k - 1) * d;
  const out = backend.makeOutput([L, N], 'float32');
  if (L > 0) runInt8Product(backend, { x: heapOffset(backend, x, 'x'), rows: L, channels: C, taps: k, tapStride: d * C * 4 }, w, bias, out, N, packing, 1, MATMUL_EPILOGUE.none);
  return out;
}

/** Disposes every tensor of a conv (filter, pointwise, weight, biases). */
export function disposeConv(conv: object): void {
  for (const v of Object.values(conv)) if (v instanceof tf.Tensor) v.dispose();
}

/** concat(previous left context or zeros, x) along time, staging the new left context. */
function withLeftContext(x: tf.Tensor3D, context: number, state: StreamState | undefined, name: string): tf.Tensor3D {
  if (context === 0) return x;
  const channels = x.shape[2];
  const previous = (state?.get(name) as tf.Tensor3D | undefined) ?? tf.zeros([1, context, channels]);
  const padded = tf.concat([previous, x], 1) as tf.Tensor3D;
  state?.set(name, tf.slice(padded, [0, padded.shape[1] - context, 0], [1, context, channels]));
  return padded;
}
