import * as tf from '@tensorflow/tfjs-core';

/*
 * int8 weights: a quarter of float32's bytes, for decode steps that are bound by reading weights, and integer
 * multiply-adds (i32x4.dot_i16x8_s: 8 per instruction) for products of many rows that are bound by compute.
 *
 * Quantization is per output column and symmetric: s[n] = max_k |W[k, n]| / 127 (0 for an all-zero column) and
 * q[k, n] = round(W[k, n] / s[n]) in [-127, 127], so |W - q·s| <= s/2 everywhere. The packed weight is stored
 * transposed (one output's K weights together, as a dot product reads them). The default packing, 'rows', puts them
 * in blocks of 4 outputs whose 16-weight pieces are interleaved, so the kernel reads the whole weight as ONE
 * sequential stream:
 *
 *   int32 [Np/4, Kp + 4]   (Np = N rounded up to 4, Kp = K rounded up to 16; padding is zero)
 *   block b (outputs 4b..4b+3), bytes: for each c < Kp/16: q[16c..16c+16, 4b], q[.., 4b+1], q[.., 4b+2], q[.., 4b+3]
 *                          (16 int8 each, 64 bytes), then s[4b..4b+3] as 4 f32 (16 bytes)
 *
 * 'panels' (for many rows, see Int8Packing) is int32 [Np/8, 2·Kp + 8] with Kp = K rounded up to 8: panel p (outputs
 * 8p..8p+7), bytes: for each pair j < Kp/2: q[2j, 8p], q[2j+1, 8p], q[2j, 8p+1], ..., q[2j+1, 8p+7] (16 bytes), then
 * s[8p..8p+7] as 8 f32 (32 bytes).
 *
 * (Measured: with plain rows, [N, Kp], the kernel's 4 outputs at a time are 4 short streams Kp bytes apart, and a
 * decode step of the code predictor, K = 1024, streamed at 7.7 GB/s; see docs/runtime.md.)
 *
 * One tensor, so a weight has one owner and disposes as one. An int32 [., .] tensor already means bf16 pairs to
 * matMulWeight (layers/linear.ts), so int8 weights are marked: packInt8 records (K, N, packing) in a WeakMap keyed by the
 * tensor, and isInt8Weight / int8WeightShape read it. The mark belongs to that tensor object: a reshape or clone is
 * an unmarked int32 tensor.
 */

/**
 * How the int8 values are laid out, each for its own kernel (matmul-int8-module.ts):
 * - 'rows' (the default): blocks of 4 outputs, their 16-weight pieces interleaved, for products of a few rows (decode
 *   steps), where the weight is streamed once and each output's dot product reads its own contiguous 16 bytes.
 * - 'panels': panels of 8 outputs holding, per pair of k, the 8 outputs' two weights side by side, for products of many
 *   rows (convolutions), where the kernel is bound by multiply-adds: one x pair broadcast times two 16-byte loads gives
 *   8 outputs' partial sums in vector lanes, with no reduction across lanes and few enough registers for 4 rows at once.
 */
export type Int8Packing = 'rows' | 'panels';

/** K rounded up to the kernel's steps: 16 weights for 'rows', 8 (four pairs) for 'panels'. */
export function int8PaddedK(K: number, packing: Int8Packing = 'rows'): number {
  const step = packing === 'panels' ? 8 : 16;
  return Math.ceil(K / step) * step;
}

/** Outputs per block ('rows') or panel ('panels'). */
function groupOutputs(packing: Int8Packing): number {
  return packing === 'panels' ? 8 : 4;
}

/**
 * Shape of the packed int32 tensor for a [K, N] weight: 'rows' [ceil(N / 4), Kp + 4], 'panels' [ceil(N / 8), 2·Kp + 8]
 * (one block or panel a row: its int8 values, then its f32 scales).
 *
 * ```ts
 * int8PackedShape(1024, 3072); // [768, 1028]: 3 MiB for 12 MiB of float32
 * int8PackedShape(672, 96, 'panels'); // [12, 1352]
 * ```
 */
export function int8PackedShape(K: number, N: number, packing: Int8Packing = 'rows'): [number, number] {
  const Kp = int8PaddedK(K, packing), g = groupOutputs(packing);
  return [Math.ceil(N / g), (g * Kp) / 4 + g];
}

/**
 * Byte offsets in the packed layout, separable: q[k, n] at outputBase[n] + kOffset[k], s[n] at scaleOffset[n].
 * 'rows': block n/4 of 4·Kp + 16 bytes, piece k/16 of 64 bytes, lane n % 4 of 16 bytes, byte k % 16.
 * 'panels': panel n/8 of 8·Kp + 32 bytes, pair k/2 of 16 bytes, output n % 8 of 2 bytes, byte k % 2.
 */
function packedOffsets(K: number, N: number, packing: Int8Packing): { outputBase: Int32Array; kOffset: Int32Array; scaleOffset: Int32Array } {
  const Kp = int8PaddedK(K, packing), g = groupOutputs(packing), groupBytes = g * Kp + 4 * g;
  const outputBase = new Int32Array(N), scaleOffset = new Int32Array(N), kOffset = new Int32Array(K);
  for (let n = 0; n < N; n++) {
    const base = Math.floor(n / g) * groupBytes, lane = n % g;
    outputBase[n] = base + (packing === 'panels' ? 2 * lane : 16 * lane);
    scaleOffset[n] = base + g * Kp + 4 * lane;
  }
  for (let k = 0; k < K; k++) kOffset[k] = packing === 'panels' ? (k >> 1) * 16 + (k & 1) : (k >> 4) * 64 + (k & 15);
  return { outputBase, kOffset, scaleOffset };
}

const int8Shapes = new WeakMap<tf.Tensor, { readonly K: number; readonly N: number; readonly packing: Int8Packing }>();

function checkDims(K: number, N: number, length: number, what: string): void {
  if (!Number.isInteger(K) || !Number.isInteger(N) || K < 1 || N < 1) throw new Error(`packInt8: K and N must be positive integers, got K=${K} N=${N}`);
  if (length !== K * N) throw new Error(`packInt8: ${length} values for a ${what} weight`);
}

/** s = max|column| / 127 (f32), with the reciprocal the values are multiplied by (0 for an all-zero column). */
function columnScale(max: number, where: string): { s: number; inv: number } {
  if (!Number.isFinite(max)) throw new Error(`packInt8: ${where} holds a non-finite value`);
  const s = Math.fround(max / 127);
  return { s, inv: s > 0 ? 1 / s : 0 };
}

const clamp127 = (q: number): number => (q > 127 ? 127 : q < -127 ? -127 : q);

/**
 * Quantizes a host float32 weight [K, N] ("in, out", as layers/linear.ts stores it) into the packed int8 layout
 * (int32 `int8PackedShape(K, N, packing)`, see above), without touching the device.
 *
 * ```ts
 * const bits = packInt8Bits(Float32Array.of(1, -2, 0.5, 4), 2, 2); // Int32Array of 1 block × 20 words
 * ```
 */
export function packInt8Bits(w: Float32Array, K: number, N: number, packing: Int8Packing = 'rows'): Int32Array {
  checkDims(K, N, w.length, `[${K}, ${N}]`);
  const [groups, words] = int8PackedShape(K, N, packing);
  const out = new Int32Array(groups * words);
  const bytes = new Int8Array(out.buffer), f32 = new Float32Array(out.buffer);
  const { outputBase, kOffset, scaleOffset } = packedOffsets(K, N, packing);
  // Column maxima in one row-major pass (W is [K, N]: reading it by columns would miss the cache at every value).
  const max = new Float64Array(N);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const a = Math.abs(w[k * N + n]!);
      if (!(a <= max[n]!)) max[n] = a; // NaN lands here too
    }
  }
  const inv = new Float64Array(N); // 1 / s: a multiply per weight instead of a divide (within an ulp of W / s)
  for (let n = 0; n < N; n++) {
    const c = columnScale(max[n]!, `column ${n} of the [${K}, ${N}] weight`);
    inv[n] = c.inv;
    f32[scaleOffset[n]! / 4] = c.s;
  }
  for (let k = 0; k < K; k++) {
    const row = k * N, kOff = kOffset[k]!;
    for (let n = 0; n < N; n++) bytes[outputBase[n]! + kOff] = clamp127(Math.round(w[row + n]! * inv[n]!));
  }
  return out;
}

/**
 * packInt8Bits for a weight stored output-major, [N, K] — PyTorch's Linear layout [out, in] as checkpoints hold it —
 * so a loader packs straight from the checkpoint without transposing first. Same result as
 * `packInt8Bits(transposed, K, N, packing)`; each output's K weights are read contiguously.
 *
 * ```ts
 * const bits = packInt8BitsOutIn(ckpt.get('…q_proj.weight', [N, K]).data, K, N);
 * ```
 */
export function packInt8BitsOutIn(w: Float32Array, K: number, N: number, packing: Int8Packing = 'rows'): Int32Array {
  checkDims(K, N, w.length, `[${N}, ${K}] (out, in)`);
  const [groups, words] = int8PackedShape(K, N, packing);
  const out = new Int32Array(groups * words);
  const bytes = new Int8Array(out.buffer), f32 = new Float32Array(out.buffer);
  const { outputBase, kOffset, scaleOffset } = packedOffsets(K, N, packing);
  for (let n = 0; n < N; n++) {
    const row = n * K;
    let max = 0;
    for (let k = 0; k < K; k++) {
      const a = Math.abs(w[row + k]!);
      if (!(a <= max)) max = a; // NaN lands here too
    }
    const { s, inv } = columnScale(max, `output ${n} of the [${N}, ${K}] (out, in) weight`);
    f32[scaleOffset[n]! / 4] = s;
    const base = outputBase[n]!;
    for (let k = 0; k < K; k++) bytes[base + kOffset[k]!] = clamp127(Math.round(w[row + k]! * inv));
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
export function int8Values(bits: Int32Array, K: number, N: number, packing: Int8Packing = 'rows'): { q: Int8Array; scales: Float32Array } {
  const [groups, words] = int8PackedShape(K, N, packing);
  if (bits.length !== groups * words) throw new Error(`int8Values: ${bits.length} int32 words for a [${K}, ${N}] int8 weight packed as ${packing} (expected ${groups * words})`);
  const bytes = new Int8Array(bits.buffer, bits.byteOffset, bits.byteLength);
  const f32 = new Float32Array(bits.buffer, bits.byteOffset, bits.length);
  const { outputBase, kOffset, scaleOffset } = packedOffsets(K, N, packing);
  const q = new Int8Array(N * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) q[n * K + k] = bytes[outputBase[n]! + kOffset[k]!]!;
  return { q, scales: Float32Array.from({ length: N }, (_, n) => f32[scaleOffset[n]! / 4]!) };
}

/**
 * Marks `packed` (int32 `int8PackedShape(K, N, packing)` from packInt8Bits) as an int8 weight for a [K, N] product and
 * returns it. For weights built elsewhere in the packed layout, e.g. a worker's copy.
 *
 * ```ts
 * const w = markInt8Weight(tf.tensor2d(packInt8Bits(data, K, N), int8PackedShape(K, N), 'int32'), K, N);
 * ```
 */
export function markInt8Weight(packed: tf.Tensor2D, K: number, N: number, packing: Int8Packing = 'rows'): tf.Tensor2D {
  const [groups, words] = int8PackedShape(K, N, packing);
  if (packed.dtype !== 'int32' || packed.rank !== 2 || packed.shape[0] !== groups || packed.shape[1] !== words) {
    throw new Error(`markInt8Weight: a [${K}, ${N}] int8 weight packed as ${packing} is int32 [${groups}, ${words}], got ${packed.dtype} [${packed.shape}]`);
  }
  int8Shapes.set(packed, { K, N, packing });
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
 * const conv = packInt8(im2colWeight, 672, 96, 'in-out', 'panels'); // for products of many rows
 * ```
 */
export function packInt8(w: tf.Tensor2D | Float32Array, K?: number, N?: number, layout: 'in-out' | 'out-in' = 'in-out', packing: Int8Packing = 'rows'): tf.Tensor2D {
  if (w instanceof Float32Array) {
    if (K === undefined || N === undefined) throw new Error('packInt8: a Float32Array weight needs its K and N');
  } else {
    if (w.rank !== 2 || w.dtype !== 'float32') throw new Error(`packInt8: weight must be float32 [K, N], got ${w.dtype} [${w.shape}]`);
    [K, N] = w.shape;
    layout = 'in-out';
  }
  const data = w instanceof Float32Array ? w : (w.dataSync() as Float32Array);
  const bits = layout === 'out-in' ? packInt8BitsOutIn(data, K!, N!, packing) : packInt8Bits(data, K!, N!, packing);
  return markInt8Weight(tf.tensor2d(bits, int8PackedShape(K!, N!, packing), 'int32'), K!, N!, packing);
}

/** Whether `t` is an int8 weight made by packInt8 / markInt8Weight. */
export function isInt8Weight(t: tf.Tensor): boolean {
  return int8Shapes.has(t);
}

/**
 * The [K, N] product shape and packing of an int8 weight, or undefined for any other tensor.
 *
 * ```ts
 * int8WeightShape(packInt8(w)); // { K: 4096, N: 4096, packing: 'rows' }
 * ```
 */
export function int8WeightShape(t: tf.Tensor): { readonly K: number; readonly N: number; readonly packing: Int8Packing } | undefined {
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
  const { K, N, packing } = shape;
  const { q, scales } = int8Values(packed.dataSync() as Int32Array, K, N, packing);
  const out = new Float32Array(K * N);
  for (let n = 0; n < N; n++) {
    const s = scales[n]!;
    for (let k = 0; k < K; k++) out[k * N + n] = q[n * K + k]! * s;
  }
  return tf.tensor2d(out, [K, N]);
}
