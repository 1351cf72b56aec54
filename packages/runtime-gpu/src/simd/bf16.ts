import * as tf from '@tensorflow/tfjs-core';

/*
 * bf16 is the top half of an f32 (same exponent, 7 mantissa bits). Weights packed as bf16 take half the bytes, and a
 * memory-bound matvec over them takes about half the time; matMulBf16 widens them in registers as it reads.
 * Layout: an int32 tensor [K, N/2] whose element [k, i] holds column 2i in its low 16 bits and column 2i+1 in its
 * high 16 bits — on a little-endian heap that is simply the bf16 values in column order.
 */

/** The bf16 bit pattern nearest to an f32's bits (round to nearest, ties to even; NaN stays a quiet NaN). */
function bf16Bits(f32Bits: number): number {
  if ((f32Bits & 0x7f800000) === 0x7f800000 && (f32Bits & 0x007fffff) !== 0) return ((f32Bits >>> 16) | 0x0040) & 0xffff;
  return ((f32Bits + 0x7fff + ((f32Bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Packs a float32 weight [K, N] (N even) into bf16 pairs: an int32 tensor [K, N/2] for `matMulBf16`. Values are
 * rounded to nearest bf16 (ties to even); values that are already bf16 pack exactly.
 *
 * ```ts
 * const packed = packBf16(tf.tensor2d([[1, -2.5, 3, 0.1]])); // int32 [1, 2]
 * unpackBf16(packed).print(); // [[1, -2.5, 3, 0.0999756]]
 * ```
 */
export function packBf16(w: tf.Tensor2D): tf.Tensor2D {
  if (w.rank !== 2) throw new Error(`packBf16: weight must be rank 2 [K, N], got shape [${w.shape}]`);
  if (w.dtype !== 'float32') throw new Error(`packBf16: weight must be float32, got ${w.dtype}`);
  const [K, N] = w.shape;
  if (N % 2 !== 0) throw new Error(`packBf16: weight [${K}, ${N}] needs an even number of columns (two bf16 per int32)`);
  const bits = new Uint32Array((w.dataSync() as Float32Array).slice().buffer);
  return tf.tensor2d(packBf16Bits(bits), [K, N / 2], 'int32');
}

/** The packing on raw f32 bit patterns (length even): pair i = bf16(v[2i]) | bf16(v[2i+1]) << 16. */
export function packBf16Bits(f32Bits: Uint32Array): Int32Array {
  const out = new Int32Array(f32Bits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = bf16Bits(f32Bits[2 * i]!) | (bf16Bits(f32Bits[2 * i + 1]!) << 16);
  return out;
}

/**
 * The float32 weight [K, 2·(N/2)] a packed bf16 tensor stands for (exact: every bf16 is an f32).
 *
 * ```ts
 * const w = unpackBf16(packBf16(w32)); // w32 rounded to bf16
 * ```
 */
export function unpackBf16(packed: tf.Tensor2D): tf.Tensor2D {
  if (packed.rank !== 2 || packed.dtype !== 'int32') throw new Error(`unpackBf16: expected an int32 tensor [K, N/2] from packBf16, got ${packed.dtype} [${packed.shape}]`);
  const [K, half] = packed.shape;
  const src = packed.dataSync() as Int32Array;
  const bits = new Uint32Array(src.length * 2);
  for (let i = 0; i < src.length; i++) {
    bits[2 * i] = src[i]! << 16;
    bits[2 * i + 1] = src[i]! & 0xffff0000;
  }
  return tf.tensor2d(new Float32Array(bits.buffer), [K, half * 2], 'float32');
}
