import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import type { StreamState } from './stream-state.js';

/*
 * Causal 1-D convolutions, channels-last ([1, L, C]) and streamable: each function takes an optional
 * StreamState and a layer name, reads the left context the previous chunk left there and stages the
 * context the next chunk needs. Without a state the input is the whole signal (zero left context),
 * exactly like the reference's left zero padding.
 */

/** A causal Conv1d (stride 1): left-pad `(k-1)·dilation` zeros, no right pad, so length is preserved. */
export interface CausalConv1d {
  /** tfjs conv1d filter [k, in, out]; undefined for k = 1, which runs as a matmul. */
  readonly filter?: tf.Tensor3D;
  /** [in, out], only for k = 1. */
  readonly pointwise?: tf.Tensor2D;
  readonly bias: tf.Tensor1D;
  readonly kernelSize: number;
  readonly dilation: number;
  readonly inChannels: number;
  readonly outChannels: number;
}

/**
 * Loads `${prefix}.conv.weight` ([out, in, k], PyTorch layout) and `${prefix}.conv.bias`.
 *
 * ```ts
 * const conv = loadCausalConv1d(ckpt, 'code2wav.decoder.0', 1024, 1536, 7);
 * const y = causalConv1d(x, conv); // [1, L, 1024] -> [1, L, 1536]
 * ```
 */
export function loadCausalConv1d(
  ckpt: Checkpoint, prefix: string, inChannels: number, outChannels: number, kernelSize: number, dilation = 1,
): CausalConv1d {
  const w = ckpt.get(`${prefix}.conv.weight`, [outChannels, inChannels, kernelSize]).data as Float32Array;
  const bias = tf.tensor1d(ckpt.get(`${prefix}.conv.bias`, [outChannels]).data as Float32Array);
  const base = { bias, kernelSize, dilation, inChannels, outChannels };
  if (kernelSize === 1) {
    // [out, in, 1] -> [in, out]: a pointwise conv is a plain matmul, faster than conv1d on wasm.
    const pointwise = tf.tidy(() => tf.transpose(tf.tensor2d(w, [outChannels, inChannels])) as tf.Tensor2D);
    return { ...base, pointwise };
  }
  const filter = tf.tidy(() => tf.transpose(tf.tensor3d(w, [outChannels, inChannels, kernelSize]), [2, 1, 0]) as tf.Tensor3D);
  return { ...base, filter };
}

/** Left context (samples) a causal conv needs from the previous chunk. */
export const causalContext = (conv: { kernelSize: number; dilation: number }): number => (conv.kernelSize - 1) * conv.dilation;

/** y = causal_conv(x) for x [1, L, in] -> [1, L, out]; with `state`, continues the previous chunk. */
export function causalConv1d(x: tf.Tensor3D, conv: CausalConv1d, state?: StreamState, name = ''): tf.Tensor3D {
  return tf.tidy(() => {
    const length = x.shape[1];
    if (conv.pointwise) {
      const y = tf.add(tf.matMul(tf.reshape(x, [length, conv.inChannels]), conv.pointwise), conv.bias);
      return tf.reshape(y, [1, length, conv.outChannels]);
    }
    const padded = withLeftContext(x, causalContext(conv), state, name);
    const y = tf.conv1d(padded, conv.filter!, 1, 'valid', 'NWC', conv.dilation);
    return tf.add(y, conv.bias) as tf.Tensor3D;
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
 * It runs as one matmul [L, in] x [in, k·out] plus an overlap-add of the two halves: on wasm this is about
 * 10x faster than conv2dTranspose (notes/code2wav-on-wasm.md).
 */
export interface CausalTransConv1d {
  /** [in, k·out], column t·out + o holds the PyTorch weight [i, o, t]. */
  readonly weight: tf.Tensor2D;
  readonly bias: tf.Tensor1D;
  readonly kernelSize: number;
  readonly stride: number;
  readonly inChannels: number;
  readonly outChannels: number;
}

/**
 * Loads `${prefix}.conv.weight` ([in, out, k], PyTorch ConvTranspose1d layout) and `${prefix}.conv.bias`.
 *
 * ```ts
 * const up = loadCausalTransConv1d(ckpt, 'code2wav.decoder.1.block.1', 1536, 768, 16, 8);
 * const y = causalTransConv1d(x, up); // [1, L, 1536] -> [1, (L-1)·8, 768]
 * ```
 */
export function loadCausalTransConv1d(
  ckpt: Checkpoint, prefix: string, inChannels: number, outChannels: number, kernelSize: number, stride: number,
): CausalTransConv1d {
  if (kernelSize !== stride && kernelSize !== 2 * stride) {
    throw new Error(`${prefix}: causal transposed conv with kernel ${kernelSize} and stride ${stride} is not supported (kernel must be stride or 2·stride)`);
  }
  const w = ckpt.get(`${prefix}.conv.weight`, [inChannels, outChannels, kernelSize]).data as Float32Array;
  const weight = tf.tidy(() =>
    tf.reshape(tf.transpose(tf.tensor3d(w, [inChannels, outChannels, kernelSize]), [0, 2, 1]), [inChannels, kernelSize * outChannels]) as tf.Tensor2D);
  const bias = tf.tensor1d(ckpt.get(`${prefix}.conv.bias`, [outChannels]).data as Float32Array);
  return { weight, bias, kernelSize, stride, inChannels, outChannels };
}

/**
 * x [1, L, in] -> [1, L·s, out] (k = s) or [1, (L-1)·s, out] (k = 2s; with a state holding the previous
 * chunk's last input, L·s: the block that input was waiting for comes out first).
 */
export function causalTransConv1d(x: tf.Tensor3D, conv: CausalTransConv1d, state?: StreamState, name = ''): tf.Tensor3D {
  return tf.tidy(() => {
    const length = x.shape[1];
    const s = conv.stride, out = conv.outChannels;
    const y = tf.matMul(tf.reshape(x, [length, conv.inChannels]), conv.weight); // [L, k·out]
    if (conv.kernelSize === s) return tf.reshape(tf.add(tf.reshape(y, [length * s, out]), conv.bias), [1, length * s, out]);
    const halves = tf.reshape(y, [length, 2, s, out]);
    const first = tf.reshape(tf.slice(halves, [0, 0, 0, 0], [length, 1, s, out]), [length, s, out]);
    const second = tf.reshape(tf.slice(halves, [0, 1, 0, 0], [length, 1, s, out]), [length, s, out]);
    const pending = state?.get(name) as tf.Tensor3D | undefined; // previous chunk's last second half, [1, s, out]
    if (!pending && length === 1) {
      state?.set(name, second);
      return tf.zeros([1, 0, out]) as tf.Tensor3D; // a lone first input only fills the trimmed block
    }
    // Block j = first[j] + second[j-1]; block 0 has no predecessor and is the one the reference trims.
    const earlier = tf.slice(second, [0, 0, 0], [length - 1, s, out]);
    const blocks = pending
      ? tf.add(first, tf.concat([pending, earlier], 0))
      : tf.add(tf.slice(first, [1, 0, 0], [length - 1, s, out]), earlier);
    state?.set(name, tf.slice(second, [length - 1, 0, 0], [1, s, out]));
    const n = blocks.shape[0];
    return tf.reshape(tf.add(tf.reshape(blocks, [n * s, out]), conv.bias), [1, n * s, out]);
  });
}

/**
 * End of stream for a k = 2s transposed conv: the last input's second half alone (the block the reference
 * trims from the right), [1, s, out]; undefined when nothing is pending.
 */
export function causalTransConv1dTail(conv: CausalTransConv1d, state: StreamState, name: string): tf.Tensor3D | undefined {
  const pending = state.get(name);
  if (!pending || conv.kernelSize === conv.stride) return undefined;
  return tf.tidy(() => tf.add(pending, conv.bias) as tf.Tensor3D);
}

export function disposeConv(conv: { filter?: tf.Tensor; pointwise?: tf.Tensor; weight?: tf.Tensor; bias: tf.Tensor }): void {
  conv.filter?.dispose();
  conv.pointwise?.dispose();
  conv.weight?.dispose();
  conv.bias.dispose();
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
