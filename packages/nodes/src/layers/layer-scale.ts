import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';

/** LayerScale: a learned per-channel gain on a residual branch (`x * scale`), as in CaiT / Code2Wav. */
export interface LayerScale {
  readonly scale: tf.Tensor1D;
}

/**
 * Loads `${prefix}.scale` ([C]).
 *
 * ```ts
 * const ls = loadLayerScale(ckpt, 'code2wav.pre_transformer.layers.0.mlp_layer_scale', 1024);
 * const y = layerScale(branch, ls);
 * ```
 */
export function loadLayerScale(ckpt: Checkpoint, prefix: string, channels: number): LayerScale {
  return { scale: tf.tensor1d(ckpt.get(`${prefix}.scale`, [channels]).data as Float32Array) };
}

export function layerScale(x: tf.Tensor, ls: LayerScale): tf.Tensor {
  return tf.mul(x, ls.scale);
}

export function disposeLayerScale(ls: LayerScale): void {
  ls.scale.dispose();
}
