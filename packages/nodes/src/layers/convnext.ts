import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import { loadLinear, disposeLinear, type Linear, type WeightDtype } from './linear.js';
import { gelu } from './gelu.js';
import { loadLayerNorm, layerNorm, disposeLayerNorm, type LayerNorm } from './layer-norm.js';
import { loadCausalDepthwiseConv1d, causalDepthwiseConv1d, disposeConv, matMulRows, type CausalDepthwiseConv1d } from './causal-conv.js';
import type { StreamState } from './stream-state.js';

/**
 * A causal ConvNeXt block (Code2Wav's upsampling stages): depthwise causal conv k=7 -> LayerNorm over
 * channels (eps 1e-6) -> Linear(C->4C) -> exact GELU -> Linear(4C->C) -> x gamma -> residual add.
 */
export interface ConvNeXtBlock {
  readonly dwconv: CausalDepthwiseConv1d;
  readonly norm: LayerNorm;
  readonly pwconv1: Linear;
  readonly pwconv2: Linear;
  readonly gamma: tf.Tensor1D;
}

/**
 * Loads `${prefix}.{dwconv.conv, norm, pwconv1, pwconv2, gamma}`; `format` 'bf16' packs the two pointwise layers
 * (packWeight), for blocks that see one or two rows per call; 'int8' quantizes them (faster at any row count). The
 * depthwise conv stays float32.
 *
 * ```ts
 * const block = loadConvNeXtBlock(ckpt, 'code2wav.upsample.0.1', 1024);
 * const y = convNeXtBlock(x, block); // [1, L, 1024] -> [1, L, 1024]
 * ```
 */
export function loadConvNeXtBlock(ckpt: Checkpoint, prefix: string, dim: number, kernelSize = 7, eps = 1e-6, format: WeightDtype = 'float32'): ConvNeXtBlock {
  const vec = (key: string) => tf.tensor1d(ckpt.get(`${prefix}.${key}`, [dim]).data as Float32Array);
  return {
    dwconv: loadCausalDepthwiseConv1d(ckpt, `${prefix}.dwconv`, dim, kernelSize),
    norm: loadLayerNorm(ckpt, `${prefix}.norm`, dim, eps),
    pwconv1: loadLinear(ckpt, `${prefix}.pwconv1`, dim, 4 * dim, true, format),
    pwconv2: loadLinear(ckpt, `${prefix}.pwconv2`, 4 * dim, dim, true, format),
    gamma: vec('gamma'),
  };
}

/** x [1, L, C] -> [1, L, C]; with `state`, the depthwise conv continues the previous chunk. */
export function convNeXtBlock(x: tf.Tensor3D, block: ConvNeXtBlock, state?: StreamState, name = ''): tf.Tensor3D {
  return tf.tidy(() => {
    const h = causalDepthwiseConv1d(x, block.dwconv, state, `${name}.dwconv`);
    const rows = (t: tf.Tensor) => tf.reshape(t, [-1, t.shape[t.rank - 1]]) as tf.Tensor2D;
    const hidden = gelu(matMulRows(rows(layerNorm(h, block.norm)), block.pwconv1.weight, block.pwconv1.bias));
    const y = tf.reshape(matMulRows(hidden as tf.Tensor2D, block.pwconv2.weight, block.pwconv2.bias), x.shape);
    return tf.add(x, tf.mul(y, block.gamma)) as tf.Tensor3D;
  });
}

export function disposeConvNeXtBlock(block: ConvNeXtBlock): void {
  disposeConv(block.dwconv);
  disposeLayerNorm(block.norm);
  disposeLinear(block.pwconv1);
  disposeLinear(block.pwconv2);
  block.gamma.dispose();
}
