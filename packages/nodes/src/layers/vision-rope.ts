import * as tf from '@tensorflow/tfjs-core';

/**
 * Angles of the vision encoder's 2-D axial rotary embedding, computed on the host in float32 as the
 * reference does (`Qwen3OmniMoeVisionRotaryEmbedding`): with d = headDim/2 and
 * inv_freq[j] = 1 / theta^(2j/d) (j < d/2), a patch at (row, col) gets the angles
 * [row·inv_freq, col·inv_freq] (d values), duplicated to headDim.
 *
 * `positions` holds (row, col) pairs, one per patch: [r0, c0, r1, c1, ...].
 *
 * ```ts
 * const { cos, sin } = visionRotaryCosSin(new Int32Array([0, 0, 0, 1]), 16, 10000); // 2 patches, head_dim 16
 * const qRot = applyRotaryHalf(q, cos, sin); // q [2, heads, 16]
 * ```
 */
export function visionRotaryCosSin(positions: Int32Array | readonly number[], headDim: number, theta: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  if (headDim % 4 !== 0) throw new Error(`vision rotary: head_dim ${headDim} must be divisible by 4 (two axes, rotate-half)`);
  const n = positions.length / 2;
  const d = headDim / 2;
  const invFreq = new Float32Array(d / 2);
  for (let j = 0; j < d / 2; j++) invFreq[j] = Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * j) / d))));
  const cos = new Float32Array(n * headDim);
  const sin = new Float32Array(n * headDim);
  for (let p = 0; p < n; p++) {
    const row = positions[2 * p];
    const col = positions[2 * p + 1];
    for (let j = 0; j < d / 2; j++) {
      const a = Math.fround(row * invFreq[j]);
      const b = Math.fround(col * invFreq[j]);
      for (const off of [0, d]) {
        cos[p * headDim + off + j] = Math.cos(a);
        sin[p * headDim + off + j] = Math.sin(a);
        cos[p * headDim + off + d / 2 + j] = Math.cos(b);
        sin[p * headDim + off + d / 2 + j] = Math.sin(b);
      }
    }
  }
  return { cos: tf.tensor2d(cos, [n, headDim]), sin: tf.tensor2d(sin, [n, headDim]) };
}

/**
 * Rotate-half rotary application, x·cos + rotate_half(x)·sin with rotate_half([x1, x2]) = [−x2, x1]
 * over the last axis. `x` is [N, heads, D] and `cos`/`sin` are [N, D] (shared by all heads).
 */
export function applyRotaryHalf(x: tf.Tensor3D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor3D {
  return tf.tidy(() => {
    const half = x.shape[2] / 2;
    const [x1, x2] = tf.split(x, [half, half], 2);
    const rotated = tf.concat([tf.neg(x2), x1], 2);
    const c = tf.expandDims(cos, 1);
    const s = tf.expandDims(sin, 1);
    return tf.add(tf.mul(x, c), tf.mul(rotated, s)) as tf.Tensor3D;
  });
}
