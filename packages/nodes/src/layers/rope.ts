import * as tf from '@tensorflow/tfjs-core';

/*
 * Rotary position embedding, rotate-half convention (spec 3.1): with cos/sin of length head_dim built as
 * concat(freqs, freqs), q' = q·cos + rotate_half(q)·sin and rotate_half([x1, x2]) = [-x2, x1].
 *
 * Angles are computed on the host in float32 steps (Math.fround after every operation) because the reference builds
 * them in float32: inv_freq = 1 / theta^(arange(0, d, 2) / d), then angle = position · inv_freq. Matching its rounding
 * keeps long-context positions (where an f32 angle is off by ~1e-3 rad) identical to the reference rather than
 * "more exact".
 */

/**
 * inv_freq[j] = 1 / theta^(2j / headDim), j < headDim/2, rounded as the float32 reference rounds it.
 *
 * ```ts
 * ropeInvFreq(8, 10000); // Float32Array [1, 0.1, 0.01, 0.001]
 * ```
 */
export function ropeInvFreq(headDim: number, theta: number): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let j = 0; j < half; j++) {
    const exponent = Math.fround((2 * j) / headDim);
    out[j] = Math.fround(1 / Math.fround(Math.pow(theta, exponent)));
  }
  return out;
}

/** Host cos/sin tables for rotary embedding: `[positions, headDim]` each, row-major. */
export interface RopeTables {
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  readonly positions: number;
  readonly headDim: number;
}

/**
 * cos/sin tables from one angle per (position, frequency): `angle(p, j)` for p < positions, j < headDim/2, duplicated
 * to head_dim as concat(freqs, freqs).
 *
 * ```ts
 * const inv = ropeInvFreq(16, 1e6);
 * const t = ropeTablesFromAngles(3, 16, (p, j) => p * inv[j]); // the same as ropeTables([0, 1, 2], 16, 1e6)
 * ```
 */
export function ropeTablesFromAngles(positions: number, headDim: number, angle: (p: number, j: number) => number): RopeTables {
  const half = headDim / 2;
  const cos = new Float32Array(positions * headDim);
  const sin = new Float32Array(positions * headDim);
  for (let p = 0; p < positions; p++) {
    for (let j = 0; j < half; j++) {
      const a = Math.fround(angle(p, j));
      const c = Math.cos(a), s = Math.sin(a);
      cos[p * headDim + j] = cos[p * headDim + half + j] = c;
      sin[p * headDim + j] = sin[p * headDim + half + j] = s;
    }
  }
  return { cos, sin, positions, headDim };
}

/**
 * 1-D RoPE tables for the given (possibly fractional) positions.
 *
 * ```ts
 * const t = ropeTables(Float32Array.of(0, 1, 2), 128, 1e6); // t.cos: [3 * 128]
 * ```
 */
export function ropeTables(positions: ArrayLike<number>, headDim: number, theta: number): RopeTables {
  const inv = ropeInvFreq(headDim, theta);
  return ropeTablesFromAngles(positions.length, headDim, (p, j) => Math.fround(positions[p]!) * inv[j]!);
}

/**
 * Applies rotary embedding to `x` shaped `[S, heads, headDim]` with cos/sin tensors `[S, 1, headDim]`.
 *
 * ```ts
 * const [cos, sin] = ropeTensors(ropeTables(positions, 16, 1e6));
 * const q2 = applyRope(q, cos, sin);
 * ```
 */
export function applyRope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const half = x.shape[x.rank - 1]! / 2;
    const [x1, x2] = tf.split(x, [half, half], -1);
    const rotated = tf.concat([tf.neg(x2!), x1!], -1);
    return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
  });
}

/** cos/sin tables as `[S, 1, headDim]` tensors ready for `applyRope`; the caller disposes them. */
export function ropeTensors(t: RopeTables): [tf.Tensor3D, tf.Tensor3D] {
  return [tf.tensor3d(t.cos, [t.positions, 1, t.headDim]), tf.tensor3d(t.sin, [t.positions, 1, t.headDim])];
}
