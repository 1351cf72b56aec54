import * as tf from '@tensorflow/tfjs-core';
import { packFromCheckpointLayout, type Linear, type WeightDtype, type WeightSource } from './linear.js';

/**
 * Loads several Linears that read the same input as one, their outputs side by side, so one matmul replaces several
 * (q/k/v projections, a SwiGLU's gate and up: on wasm one [d, 3d] matmul is cheaper than three [d, d] ones, and a decode
 * step pays one kernel dispatch instead of three). The checkpoint's [out, in] matrices are stacked on the host and the
 * result is packed once in `format` (after joining: an int8 weight's packed layout groups outputs, so packed parts could
 * not be joined). Split the result with `tf.split(y, outFeatures, -1)`.
 *
 * ```ts
 * const qkv = loadFusedLinear(ckpt, ['a.q_proj', 'a.k_proj', 'a.v_proj'], 1280, [1280, 1280, 1280], true);
 * const [q, k, v] = tf.split(linear(x, qkv), [1280, 1280, 1280], -1);
 * const gateUp8 = loadFusedLinear(ckpt, ['m.gate_proj', 'm.up_proj'], 1024, [3072, 3072], false, 'int8');
 * ```
 */
export function loadFusedLinear(
  ckpt: WeightSource, prefixes: readonly string[], inFeatures: number, outFeatures: readonly number[], bias = false, format: WeightDtype = 'float32',
): Linear {
  if (prefixes.length !== outFeatures.length) throw new Error(`loadFusedLinear: ${prefixes.length} prefixes but ${outFeatures.length} output widths`);
  const total = outFeatures.reduce((a, o) => a + o, 0);
  const rows = new Float32Array(total * inFeatures), b = bias ? new Float32Array(total) : undefined;
  let at = 0;
  prefixes.forEach((prefix, i) => {
    const out = outFeatures[i]!;
    rows.set(ckpt.get(`${prefix}.weight`, [out, inFeatures]).data as Float32Array, at * inFeatures);
    b?.set(ckpt.get(`${prefix}.bias`, [out]).data as Float32Array, at);
    at += out;
  });
  return { weight: packFromCheckpointLayout(rows, inFeatures, total, format), bias: b && tf.tensor1d(b), inFeatures, outFeatures: total };
}
