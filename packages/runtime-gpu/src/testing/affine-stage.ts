import * as tf from '@tensorflow/tfjs-core';

/**
 * A small worker stage for tests and benchmarks: y = relu(x W + b), with W and b built once in
 * `setup` from a seed so the main thread can rebuild the same numbers.
 */
let weights: { w: tf.Tensor2D; b: tf.Tensor1D } | undefined;

export function affineWeights(inF: number, outF: number): { w: Float32Array; b: Float32Array } {
  const w = new Float32Array(inF * outF), b = new Float32Array(outF);
  for (let i = 0; i < w.length; i++) w[i] = Math.sin(i * 0.37) / Math.sqrt(inF);
  for (let i = 0; i < outF; i++) b[i] = Math.cos(i) * 0.1;
  return { w, b };
}

export function setup(options: { inF: number; outF: number }): void {
  const { w, b } = affineWeights(options.inF, options.outF);
  weights = { w: tf.tensor2d(w, [options.inF, options.outF]), b: tf.tensor1d(b) };
}

export function stage(inputs: Record<string, tf.Tensor>): tf.Tensor {
  if (!weights) throw new Error('affine stage: setup was not run');
  const x = inputs.x;
  if (!x || x.rank !== 2) throw new Error(`affine stage: input 'x' must be [rows, ${weights.w.shape[0]}], got [${x?.shape}]`);
  return tf.relu(tf.add(tf.matMul(x as tf.Tensor2D, weights.w), weights.b));
}
