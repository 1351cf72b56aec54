import * as tf from '@tensorflow/tfjs-core';

/*
 * int8 weights: a quarter of float32's bytes, for decode steps that are bound by reading weights.
 *
 * Quantization is per output column and symmetric: s[n] = max_k |W[k, n]| / 127 (0 for an all-zero column) and
 * q[k, n] = round(W[k, n] / s[n]) in [-127, 127], so |W - q·s| <= s/2 everywhere. The packed weight is stored
 * transposed, one output per row, so a dot product reads its K weights contiguously:
 *
 *   int32 [N, Kp/4 + 1]   row n = q[0..Kp) of output n as int8 (K rounded up to Kp, a multiple of 16, zero padded),
 *                         then s[n] as the f32 bit pattern in the row's last int32
 *
 * One tensor, so a weight has one owner and disposes as one. An int32 [., .] tensor already means bf16 pairs to
 * matMulWeight (layers/linear.ts), so int8 weights are marked: packInt8 records (K, N) in a WeakMap keyed by the
 * tensor, and isInt8Weight / int8WeightShape read it. The mark belongs to that tensor object: a reshape or clone is
 * an unmarked int32 tensor.
 */

/** K rounded up to the kernel's 16-weight steps. */
export function int8PaddedK(K: number): number {
  return Math.ceil(K / 16) * 16;
}

/** int32 words per packed row: Kp int8 weights, then the scale. */
export function int8RowWords(K: number): number {
  return int8PaddedK(K) / 4 + 1;
}

const int8Shapes = new WeakMap<tf.Tensor, { readonly K: number; readonly N: number }>();

/**
 * Quantizes a host float32 weight [K, N] ("in, out", as layers/linear.ts stores it) into the packed int8 layout
 * (int32 [N, Kp/4 + 1], see above), without touching the device.
 *
 * ```ts
 * const bits = packInt8Bits(Float32Array.of(1, -2, 0.5, 4), 2, 2); // Int32Array of 2 rows × 5 words
 * ```
 */
export function packInt8Bits(w: Float32Array, K: number, N: number): Int32Array {
  if (!Number.isInteger(K) || !Number.isInteger(N) || K < 1 || N < 1) throw new Error(`packInt8: K and N must be positive integers, got K=${K} N=${N}`);
  if (w.length !== K * N) throw new Error(`packInt8: ${w.length} values for a [${K}, ${N}] weight`);
  const Kp = int8PaddedK(K), rowWords = Kp / 4 + 1;
  const out = new Int32Array(N * rowWords);
  const bytes = new Int8Array(out.buffer);
  const scales = new Float32Array(out.buffer);
  for (let n = 0; n < N; n++) {
    let max = 0;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(w[k * N + n]!);
      if (!(a <= max)) max = a; // NaN lands here too, and poisons the scale: the product then shows NaN, not a quiet 0
    }
    if (!Number.isFinite(max)) throw new Error(`packInt8: column ${n} of the [${K}, ${N}] weight holds a non-finite value`);
    const s = Math.fround(max / 127);
    const row = n * rowWords * 4;
    if (s > 0) {
      // Rounding against the f32 scale the kernel multiplies by, so |W - q·s| <= s/2 holds for the stored s.
      for (let k = 0; k < K; k++) bytes[row + k] = Math.max(-127, Math.min(127, Math.round(w[k * N + n]! / s)));
    }
    scales[n * rowWords + rowWords - 1] = s;
  }
  return out;
}

/**
 * Marks `packed` (int32 [N, Kp/4 + 1] from packInt8Bits) as an int8 weight for a [K, N] product and returns it.
 * For weights built elsewhere in the packed layout, e.g. a worker's copy.
 *
 * ```ts
 * const w = markInt8Weight(tf.tensor2d(packInt8Bits(data, K, N), [N, int8RowWords(K)], 'int32'), K, N);
 * ```
 */
export function markInt8Weight(packed: tf.Tensor2D, K: number, N: number): tf.Tensor2D {
  if (packed.dtype !== 'int32' || packed.rank !== 2 || packed.shape[0] !== N || packed.shape[1] !== int8RowWords(K)) {
    throw new Error(`markInt8Weight: a [${K}, ${N}] int8 weight is int32 [${N}, ${int8RowWords(K)}], got ${packed.dtype} [${packed.shape}]`);
  }
  int8Shapes.set(packed, { K, N });
  return packed;
}

/**
 * Quantizes a float32 weight [K, N] to int8 with one scale per output column (see the file header): a marked int32
 * tensor [N, Kp/4 + 1] for matMulInt8, about a quarter of the bytes.
 *
 * ```ts
 * const packed = packInt8(w);            // w float32 [4096, 4096] → int32 [4096, 1025], 16 MiB instead of 64
 * const y = matMulInt8(x, packed);       // x [1, 4096] → y [1, 4096]
 * ```
 */
export function packInt8(w: tf.Tensor2D | Float32Array, K?: number, N?: number): tf.Tensor2D {
  if (w instanceof Float32Array) {
    if (K === undefined || N === undefined) throw new Error('packInt8: a Float32Array weight needs its K and N');
  } else {
    if (w.rank !== 2 || w.dtype !== 'float32') throw new Error(`packInt8: weight must be float32 [K, N], got ${w.dtype} [${w.shape}]`);
    [K, N] = w.shape;
  }
  const data = w instanceof Float32Array ? w : (w.dataSync() as Float32Array);
  return markInt8Weight(tf.tensor2d(packInt8Bits(data, K!, N!), [N!, int8RowWords(K!)], 'int32'), K!, N!);
}

/** Whether `t` is an int8 weight made by packInt8 / markInt8Weight. */
export function isInt8Weight(t: tf.Tensor): boolean {
  return int8Shapes.has(t);
}

/**
 * The [K, N] product shape of an int8 weight, or undefined for any other tensor.
 *
 * ```ts
 * int8WeightShape(packInt8(w)); // { K: 4096, N: 4096 }
 * ```
 */
export function int8WeightShape(t: tf.Tensor): { readonly K: number; readonly N: number } | undefined {
  return int8Shapes.get(t);
}

/** Host view of a packed weight: the int8 values, the scales and the row stride in bytes. */
export function int8Parts(bits: Int32Array, K: number, N: number): { q: Int8Array; scales: Float32Array; rowBytes: number } {
  const rowWords = int8RowWords(K);
  const f = new Float32Array(bits.buffer, bits.byteOffset, bits.length);
  const scales = Float32Array.from({ length: N }, (_, n) => f[n * rowWords + rowWords - 1]!);
  return { q: new Int8Array(bits.buffer, bits.byteOffset, bits.byteLength), scales, rowBytes: rowWords * 4 };
}

/**
 * The float32 weight [K, N] an int8 weight stands for (q·s, exactly as the kernel scales it).
 *
 * ```ts
 * const deq = unpackInt8(packInt8(w)); // within s[n]/2 of w, column by column
 * ```
 */
export function unpackInt8(packed: tf.Tensor2D): tf.Tensor2D {
  const shape = int8WeightShape(packed);
  if (!shape) throw new Error(`unpackInt8: tensor ${packed.dtype} [${packed.shape}] is not an int8 weight from packInt8`);
  const { K, N } = shape;
  const { q, scales, rowBytes } = int8Parts(packed.dataSync() as Int32Array, K, N);
  const out = new Float32Array(K * N);
  for (let n = 0; n < N; n++) {
    const s = scales[n]!, row = n * rowBytes;
    for (let k = 0; k < K; k++) out[k * N + n] = q[row + k]! * s;
  }
  return tf.tensor2d(out, [K, N]);
}
