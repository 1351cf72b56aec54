import * as tf from '@tensorflow/tfjs-core';

/*
 * int8 weights: a quarter of float32's bytes, for decode steps that are bound by reading weights.
 *
 * Quantization is per output column and symmetric: s[n] = max_k |W[k, n]| / 127 (0 for an all-zero column) and
 * q[k, n] = round(W[k, n] / s[n]) in [-127, 127], so |W - q·s| <= s/2 everywhere. The packed weight is stored
 * transposed (one output's K weights together, as a dot product reads them), in blocks of 4 outputs whose 16-weight
 * pieces are interleaved, so the kernel reads the whole weight as ONE sequential stream:
 *
 *   int32 [Np/4, Kp + 4]   (Np = N rounded up to 4, Kp = K rounded up to 16; padding is zero)
 *   block b (outputs 4b..4b+3), bytes: for each c < Kp/16: q[16c..16c+16, 4b], q[.., 4b+1], q[.., 4b+2], q[.., 4b+3]
 *                          (16 int8 each, 64 bytes), then s[4b..4b+3] as 4 f32 (16 bytes)
 *
 * (Measured: with plain rows, [N, Kp], the kernel's 4 outputs at a time are 4 short streams Kp bytes apart, and a
 * decode step of the code predictor, K = 1024, streamed at 7.7 GB/s; see docs/runtime.md.)
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

/**
 * Shape of the packed int32 tensor for a [K, N] weight: [ceil(N / 4), Kp + 4].
 *
 * ```ts
 * int8PackedShape(1024, 3072); // [768, 1028]: 3 MiB for 12 MiB of float32
 * ```
 */
export function int8PackedShape(K: number, N: number): [number, number] {
  return [Math.ceil(N / 4), int8PaddedK(K) + 4];
}

/** Byte offset of q[k, n] in the packed layout. */
function qOffset(k: number, n: number, Kp: number): number {
  return (n >> 2) * (4 * Kp + 16) + (k >> 4) * 64 + (n & 3) * 16 + (k & 15);
}

/** Byte offset of s[n]. */
function scaleOffset(n: number, Kp: number): number {
  return (n >> 2) * (4 * Kp + 16) + 4 * Kp + (n & 3) * 4;
}

const int8Shapes = new WeakMap<tf.Tensor, { readonly K: number; readonly N: number }>();

/**
 * Quantizes a host float32 weight [K, N] ("in, out", as layers/linear.ts stores it) into the packed int8 layout
 * (int32 [ceil(N/4), Kp + 4], see above), without touching the device.
 *
 * ```ts
 * const bits = packInt8Bits(Float32Array.of(1, -2, 0.5, 4), 2, 2); // Int32Array of 1 block × 20 words
 * ```
 */
export function packInt8Bits(w: Float32Array, K: number, N: number): Int32Array {
  if (!Number.isInteger(K) || !Number.isInteger(N) || K < 1 || N < 1) throw new Error(`packInt8: K and N must be positive integers, got K=${K} N=${N}`);
  if (w.length !== K * N) throw new Error(`packInt8: ${w.length} values for a [${K}, ${N}] weight`);
  const Kp = int8PaddedK(K);
  const [blocks, words] = int8PackedShape(K, N);
  const out = new Int32Array(blocks * words);
  const bytes = new Int8Array(out.buffer);
  const f32 = new Float32Array(out.buffer);
  // Column maxima in one row-major pass (W is [K, N]: reading it by columns would miss the cache at every value).
  const max = new Float64Array(N);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const a = Math.abs(w[k * N + n]!);
      if (!(a <= max[n]!)) max[n] = a; // NaN lands here too
    }
  }
  const scales = new Float32Array(N);
  const inv = new Float64Array(N); // 1 / s: a multiply per weight instead of a divide (within an ulp of W / s)
  for (let n = 0; n < N; n++) {
    if (!Number.isFinite(max[n]!)) throw new Error(`packInt8: column ${n} of the [${K}, ${N}] weight holds a non-finite value`);
    scales[n] = max[n]! / 127;
    inv[n] = scales[n]! > 0 ? 1 / scales[n]! : 0; // an all-zero column quantizes to zeros
    f32[scaleOffset(n, Kp) / 4] = scales[n]!;
  }
  // Row k of W goes to byte (k / 16)·64 + k % 16 of every block, 16 bytes apart within a block.
  const blockBytes = 4 * Kp + 16;
  for (let k = 0; k < K; k++) {
    const row = k * N, kOff = (k >> 4) * 64 + (k & 15);
    for (let n = 0; n < N; n++) {
      const q = Math.round(w[row + n]! * inv[n]!);
      bytes[(n >> 2) * blockBytes + kOff + (n & 3) * 16] = q > 127 ? 127 : q < -127 ? -127 : q;
    }
  }
  return out;
}

/**
 * packInt8Bits for a weight stored output-major, [N, K] — PyTorch's Linear layout [out, in] as checkpoints hold it —
 * so a loader packs straight from the checkpoint without transposing first. Same result as
 * `packInt8Bits(transposed, K, N)`; each output's K weights are read contiguously.
 *
 * ```ts
 * const bits = packInt8BitsOutIn(ckpt.get('…q_proj.weight', [N, K]).data, K, N);
 * ```
 */
export function packInt8BitsOutIn(w: Float32Array, K: number, N: number): Int32Array {
  if (!Number.isInteger(K) || !Number.isInteger(N) || K < 1 || N < 1) throw new Error(`packInt8: K and N must be positive integers, got K=${K} N=${N}`);
  if (w.length !== K * N) throw new Error(`packInt8: ${w.length} values for a [${N}, ${K}] (out, in) weight`);
  const Kp = int8PaddedK(K);
  const [blocks, words] = int8PackedShape(K, N);
  const out = new Int32Array(blocks * words);
  const bytes = new Int8Array(out.buffer);
  const f32 = new Float32Array(out.buffer);
  const blockBytes = 4 * Kp + 16;
  for (let n = 0; n < N; n++) {
    const row = n * K;
    let max = 0;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(w[row + k]!);
      if (!(a <= max)) max = a; // NaN lands here too
    }
    if (!Number.isFinite(max)) throw new Error(`packInt8: output ${n} of the [${N}, ${K}] (out, in) weight holds a non-finite value`);
    const s = Math.fround(max / 127), inv = s > 0 ? 1 / s : 0;
    f32[scaleOffset(n, Kp) / 4] = s;
    // output n's 16-weight pieces sit 64 bytes apart in its block, at lane n % 4
    const base = (n >> 2) * blockBytes + (n & 3) * 16;
    for (let k = 0; k < K; k++) {
      const q = Math.round(w[row + k]! * inv);
      bytes[base + (k >> 4) * 64 + (k & 15)] = q > 127 ? 127 : q < -127 ? -127 : q;
    }
  }
  return out;
}

/**
 * The quantized values of a packed weight, decoded on the host: q [N, K] (output-major) and the N scales.
 *
 * ```ts
 * const { q, scales } = int8Values(packInt8Bits(w, K, N), K, N); // W[k, n] ≈ q[n·K + k] · scales[n]
 * ```
 */
export function int8Values(bits: Int32Array, K: number, N: number): { q: Int8Array; scales: Float32Array } {
  const Kp = int8PaddedK(K);
  const [blocks, words] = int8PackedShape(K, N);
  if (bits.length !== blocks * words) throw new Error(`int8Values: ${bits.length} int32 words for a [${K}, ${N}] int8 weight (expected ${blocks * words})`);
  const bytes = new Int8Array(bits.buffer, bits.byteOffset, bits.byteLength);
  const f32 = new Float32Array(bits.buffer, bits.byteOffset, bits.length);
  const q = new Int8Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) q[n * K + k] = bytes[qOffset(k, n, Kp)]!;
  return { q, scales: Float32Array.from({ length: N }, (_, n) => f32[scaleOffset(n, Kp) / 4]!) };
}

/**
 * Marks `packed` (int32 [ceil(N/4), Kp + 4] from packInt8Bits) as an int8 weight for a [K, N] product and returns it.
 * For weights built elsewhere in the packed layout, e.g. a worker's copy.
 *
 * ```ts
 * const w = markInt8Weight(tf.tensor2d(packInt8Bits(data, K, N), int8PackedShape(K, N), 'int32'), K, N);
 * ```
 */
export function markInt8Weight(packed: tf.Tensor2D, K: number, N: number): tf.Tensor2D {
  const [blocks, words] = int8PackedShape(K, N);
  if (packed.dtype !== 'int32' || packed.rank !== 2 || packed.shape[0] !== blocks || packed.shape[1] !== words) {
    throw new Error(`markInt8Weight: a [${K}, ${N}] int8 weight is int32 [${blocks}, ${words}], got ${packed.dtype} [${packed.shape}]`);
  }
  int8Shapes.set(packed, { K, N });
  return packed;
}

/**
 * Quantizes a float32 weight [K, N] to int8 with one scale per output column (see the file header): a marked int32
 * tensor [ceil(N/4), Kp + 4] for matMulInt8, about a quarter of the bytes. A host array may come as [K, N]
 * ('in-out', the default) or as [N, K] ('out-in', a checkpoint's Linear layout: no transpose needed).
 *
 * ```ts
 * const packed = packInt8(w);            // w float32 [4096, 4096] → int32 [1024, 4100], 16 MiB instead of 64
 * const q = packInt8(pytorchWeight, 1024, 2048, 'out-in'); // host [2048 out, 1024 in] (a checkpoint's layout)
 * const y = matMulInt8(x, packed);       // x [1, 4096] → y [1, 4096]
 * ```
 */
export function packInt8(w: tf.Tensor2D | Float32Array, K?: number, N?: number, layout: 'in-out' | 'out-in' = 'in-out'): tf.Tensor2D {
  if (w instanceof Float32Array) {
    if (K === undefined || N === undefined) throw new Error('packInt8: a Float32Array weight needs its K and N');
  } else {
    if (w.rank !== 2 || w.dtype !== 'float32') throw new Error(`packInt8: weight must be float32 [K, N], got ${w.dtype} [${w.shape}]`);
    [K, N] = w.shape;
    layout = 'in-out';
  }
  const data = w instanceof Float32Array ? w : (w.dataSync() as Float32Array);
  const bits = layout === 'out-in' ? packInt8BitsOutIn(data, K!, N!) : packInt8Bits(data, K!, N!);
  return markInt8Weight(tf.tensor2d(bits, int8PackedShape(K!, N!), 'int32'), K!, N!);
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
  const { q, scales } = int8Values(packed.dataSync() as Int32Array, K, N);
  const out = new Float32Array(K * N);
  for (let n = 0; n < N; n++) {
    const s = scales[n]!;
    for (let k = 0; k < K; k++) out[k * N + n] = q[n * K + k]! * s;
  }
  return tf.tensor2d(out, [K, N]);
}
