import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import { disposeLinear, loadLinear, type Linear } from './linear.js';

/**
 * Loads several Linears that read the same input and concatenates them along the output axis, so one matmul
 * replaces several (q/k/v projections: on wasm one [d, 3d] matmul is cheaper than three [d, d] ones). Split the
 * result with `tf.split(y, outFeatures, -1)`.
 *
 * ```ts
 * const qkv = loadFusedLinear(ckpt, ['a.q_proj', 'a.k_proj', 'a.v_proj'], 1280, [1280, 1280, 1280], true);
 * const [q, k, v] = tf.split(linear(x, qkv), [1280, 1280, 1280], -1);
 * ```
 */
export function loadFusedLinear(ckpt: Checkpoint, prefixes: readonly string[], inFeatures: number, outFeatures: readonly number[], bias = false): Linear {
  if (prefixes.length !== outFeatures.length) throw new Error(`loadFusedLinear: ${prefixes.length} prefixes but ${outFeatures.length} output widths`);
  const parts: Linear[] = [];
  try {
    prefixes.forEach((p, i) => parts.push(loadLinear(ckpt, p, inFeatures, outFeatures[i], bias)));
    const weight = tf.concat(parts.map((p) => p.weight), 1) as tf.Tensor2D;
    const b = bias ? (tf.concat(parts.map((p) => p.bias!), 0) as tf.Tensor1D) : undefined;
    return { weight, bias: b, inFeatures, outFeatures: outFeatures.reduce((a, o) => a + o, 0) };
  } finally {
    for (const p of parts) disposeLinear(p);
  }
}
