import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

/** Element types a safetensors header may declare, and the bytes each element takes. */
export const SAFETENSORS_DTYPE_BYTES = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
} as const;
export type SafetensorsDType = keyof typeof SAFETENSORS_DTYPE_BYTES;

/** Where one tensor lives in a safetensors file. Offsets are absolute file positions. */
export interface TensorEntry {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  readonly file: string;
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** A tensor decoded to host memory: floats become float32, integers and bools int32. */
export interface HostTensor {
  readonly dtype: 'float32' | 'int32';
  readonly shape: number[];
  readonly data: Float32Array | Int32Array;
}

/** Options of {@link SafetensorsFile.read}. */
export interface ReadOptions {
  /**
   * Decode into this array instead of a fresh one (it must have exactly the tensor's element count
   * and the decoded type). Reusing a buffer skips the first-touch page faults of a new allocation.
   */
  readonly out?: Float32Array | Int32Array;
}

// A header is JSON describing tensors; anything near this size is a corrupt or hostile file,
// so refuse it before allocating.
export const MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024;
// Non-f32 data is read and converted through one scratch buffer of this size, so decoding a
// tensor never holds more than its float32 result plus this much.
const CHUNK_BYTES = 8 * 1024 * 1024;
// Node caps one read at 2 GiB; F32/I32 tensors are read straight into their result in pieces.
const MAX_READ = 1 << 30;

/**
 * One safetensors file, opened lazily: the header is parsed and checked at open; tensor data is
 * read per tensor with positional reads when asked for, so the whole file is never in memory.
 *
 * ```ts
 * const f = SafetensorsFile.open('model.safetensors');
 * const w = f.read('thinker.lm_head.weight'); // { dtype: 'float32', shape, data }
 * f.close();
 * ```
 */
export class SafetensorsFile {
  readonly entries: ReadonlyMap<string, TensorEntry>;
  readonly metadata: Readonly<Record<string, string>>;
  private fd: number | undefined;
  private scratch: Uint8Array | undefined;

  private constructor(readonly path: string, fd: number, entries: Map<string, TensorEntry>, metadata: Record<string, string>) {
    this.fd = fd;
    this.entries = entries;
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      throw new Error(`safetensors ${path}: cannot open (${(err as Error).message})`, { cause: err });
    }
    try {
      const { entries, metadata } = parseHeader(path, fd);
      return new SafetensorsFile(path, fd, entries, metadata);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new Error(`safetensors ${this.path}: no tensor named '${name}'`);
    return e;
  }

  /** Raw little-endian bytes of one tensor (a fresh buffer, aligned for typed-array views). */
  readBytes(name: string): Uint8Array {
    const e = this.entry(name);
    const buf = new Uint8Array(e.byteLength);
    this.readInto(e, buf, 0);
    return buf;
  }

  /**
   * One tensor decoded to float32 (F32/F16/BF16/F64) or int32 (I64/I32/I16/I8/U8/BOOL).
   * F32 and I32 are read straight into the result; other types are converted through a small
   * reused scratch buffer, so memory peaks at the result's size (plus 8 MiB), never the raw data
   * plus the result.
   */
  read(name: string, options: ReadOptions = {}): HostTensor {
    const e = this.entry(name);
    const n = e.shape.reduce((a, b) => a * b, 1);
    const floating = e.dtype === 'F32' || e.dtype === 'F16' || e.dtype === 'BF16' || e.dtype === 'F64';
    const out = options.out ?? (floating ? new Float32Array(n) : new Int32Array(n));
    if (out.length !== n || (floating ? !(out instanceof Float32Array) : !(out instanceof Int32Array))) {
      throw new Error(`safetensors ${this.path}: tensor '${name}' (${e.dtype} [${e.shape}]) needs a ${floating ? 'Float32Array' : 'Int32Array'} of ${n} elements for 'out', got ${out.constructor.name} of ${out.length}`);
    }
    const shape = [...e.shape];
    if (e.dtype === 'F32' || e.dtype === 'I32') {
      this.readInto(e, new Uint8Array(out.buffer, out.byteOffset, e.byteLength), 0);
      return { dtype: floating ? 'float32' : 'int32', shape, data: out };
    }
    const width = SAFETENSORS_DTYPE_BYTES[e.dtype];
    this.scratch ??= new Uint8Array(CHUNK_BYTES);
    const perChunk = Math.floor(CHUNK_BYTES / width);
    for (let start = 0; start < n; start += perChunk) {
      const count = Math.min(perChunk, n - start);
      const chunk = this.scratch.subarray(0, count * width);
      this.readInto(e, chunk, start * width);
      decodeInto(e, chunk, out, start, count);
    }
    return { dtype: floating ? 'float32' : 'int32', shape, data: out };
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    this.scratch = undefined;
  }

  private readInto(e: TensorEntry, dst: Uint8Array, from: number): void {
    if (this.fd === undefined) throw new Error(`safetensors ${this.path}: file is closed`);
    let done = 0;
    while (done < dst.byteLength) {
      const n = readSync(this.fd, dst, done, Math.min(dst.byteLength - done, MAX_READ), e.byteOffset + from + done);
      if (n === 0) throw new Error(`safetensors ${this.path}: tensor '${e.name}' is truncated (file ended at byte ${e.byteOffset + from + done})`);
      done += n;
    }
  }
}

function parseHeader(path: string, fd: number): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const fileSize = fstatSync(fd).size;
  if (fileSize < 8) throw new Error(`safetensors ${path}: file is ${fileSize} bytes, too short for the 8-byte header length`);
  const lenBuf = Buffer.alloc(8);
  readSync(fd, lenBuf, 0, 8, 0);
  const headerLen64 = lenBuf.readBigUInt64LE(0);
  if (headerLen64 > BigInt(MAX_SAFETENSORS_HEADER_BYTES)) {
    throw new Error(`safetensors ${path}: header length ${headerLen64} bytes exceeds the ${MAX_SAFETENSORS_HEADER_BYTES}-byte limit (corrupt file?)`);
  }
  const headerLen = Number(headerLen64);
  if (headerLen < 2) throw new Error(`safetensors ${path}: header length ${headerLen} is too short for a JSON object`);
  if (8 + headerLen > fileSize) throw new Error(`safetensors ${path}: header length ${headerLen} runs past the end of the ${fileSize}-byte file (truncated file?)`);
  const headerBuf = Buffer.alloc(headerLen);
  readSync(fd, headerBuf, 0, headerLen, 8);
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (err) {
    throw new Error(`safetensors ${path}: header is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new Error(`safetensors ${path}: header is not a JSON object`);
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  const ranges: Array<[number, number, string]> = [];
  for (const [name, v] of Object.entries(header as Record<string, any>)) {
    if (name === '__metadata__') {
      if (v === null || typeof v !== 'object' || Array.isArray(v) || !Object.values(v).every((x) => typeof x === 'string')) {
        throw new Error(`safetensors ${path}: __metadata__ must be an object of strings, got ${JSON.stringify(v)}`);
      }
      metadata = v;
      continue;
    }
    const where = `safetensors ${path}: tensor '${name}'`;
    if (!v || typeof v !== 'object') throw new Error(`${where}: entry is not an object`);
    const dtype = v.dtype as string;
    if (!Object.hasOwn(SAFETENSORS_DTYPE_BYTES, dtype)) throw new Error(`${where}: unknown dtype '${dtype}' (expected one of ${Object.keys(SAFETENSORS_DTYPE_BYTES).join(', ')})`);
    const shape = v.shape;
    if (!Array.isArray(shape) || !shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) throw new Error(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    const off = v.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0) || off[1] < off[0]) {
      throw new Error(`${where}: data_offsets ${JSON.stringify(off)} are not [begin, end] with 0 <= begin <= end`);
    }
    const count = shape.reduce((a: number, b: number) => a * b, 1);
    const bytes = count * SAFETENSORS_DTYPE_BYTES[dtype as SafetensorsDType];
    if (off[1] - off[0] !== bytes) throw new Error(`${where}: data_offsets span ${off[1] - off[0]} bytes but ${dtype} [${shape}] needs ${bytes}`);
    if (off[1] > dataSize) throw new Error(`${where}: data_offsets end at ${off[1]} but the data section has only ${dataSize} bytes (truncated file?)`);
    entries.set(name, { name, dtype: dtype as SafetensorsDType, shape, file: path, byteOffset: dataStart + off[0], byteLength: bytes });
    if (bytes > 0) ranges.push([off[0], off[1], name]);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      throw new Error(`safetensors ${path}: tensors '${ranges[i - 1][2]}' [${ranges[i - 1][0]}, ${ranges[i - 1][1]}) and '${ranges[i][2]}' [${ranges[i][0]}, ${ranges[i][1]}) overlap`);
    }
  }
  return { entries, metadata };
}

/**
 * Decodes raw little-endian bytes of a tensor to float32 or int32.
 *
 * ```ts
 * const t = decode({ name: 'w', dtype: 'BF16', shape: [2] }, new Uint8Array([0x80, 0x3f, 0x00, 0x40])); // [1, 2]
 * ```
 */
export function decode(e: Pick<TensorEntry, 'name' | 'dtype' | 'shape'>, bytes: Uint8Array): HostTensor {
  const n = e.shape.reduce((a, b) => a * b, 1);
  const width = SAFETENSORS_DTYPE_BYTES[e.dtype];
  if (bytes.byteLength !== n * width) throw new Error(`tensor '${e.name}': ${bytes.byteLength} bytes do not hold ${e.dtype} [${e.shape}] (${n * width} bytes)`);
  const floating = e.dtype === 'F32' || e.dtype === 'F16' || e.dtype === 'BF16' || e.dtype === 'F64';
  const out = floating ? new Float32Array(n) : new Int32Array(n);
  decodeInto(e, bytes, out, 0, n);
  return { dtype: floating ? 'float32' : 'int32', shape: [...e.shape], data: out };
}

/** Converts `count` elements from `bytes` into `out[at ...]`. */
function decodeInto(e: Pick<TensorEntry, 'name' | 'dtype'>, bytes: Uint8Array, out: Float32Array | Int32Array, at: number, count: number): void {
  // Typed views need aligned offsets; scratch and fresh buffers are, a caller's slice may not be.
  const src = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  const buf = src.buffer;
  const o = src.byteOffset;
  switch (e.dtype) {
    case 'F32':
      (out as Float32Array).set(new Float32Array(buf, o, count), at);
      return;
    case 'I32':
      (out as Int32Array).set(new Int32Array(buf, o, count), at);
      return;
    case 'F64':
      (out as Float32Array).set(new Float64Array(buf, o, count), at);
      return;
    case 'BF16':
      bf16ToF32(src, new Uint32Array(out.buffer, out.byteOffset + at * 4, count), count);
      return;
    case 'F16': {
      const table = halfTable();
      const h = new Uint16Array(buf, o, count);
      for (let i = 0; i < count; i++) out[at + i] = table[h[i]];
      return;
    }
    case 'I64': {
      // Little-endian: the low word is first; a value fits int32 when the high word is its sign.
      const w = new Int32Array(buf, o, count * 2);
      for (let i = 0; i < count; i++) {
        const lo = w[2 * i], hi = w[2 * i + 1];
        if (hi !== (lo >> 31)) throw new Error(`tensor '${e.name}': I64 value ${(BigInt(hi) << 32n) | BigInt(lo >>> 0)} at index ${at + i} does not fit int32`);
        out[at + i] = lo;
      }
      return;
    }
    case 'I16':
      (out as Int32Array).set(new Int16Array(buf, o, count), at);
      return;
    case 'I8':
      (out as Int32Array).set(new Int8Array(buf, o, count), at);
      return;
    case 'U8':
    case 'BOOL':
      (out as Int32Array).set(new Uint8Array(buf, o, count), at);
      return;
  }
}

/**
 * bf16 is the top half of an f32. Reading two bf16 values as one u32 halves the loads (about 2x
 * faster than one u16 at a time on this machine, notes/dependencies-measured.md §10).
 */
function bf16ToF32(src: Uint8Array, out: Uint32Array, count: number): void {
  const pairs = count >> 1;
  const w = new Uint32Array(src.buffer, src.byteOffset, pairs);
  for (let i = 0; i < pairs; i++) {
    const v = w[i];
    out[2 * i] = v << 16;
    out[2 * i + 1] = v & 0xffff0000;
  }
  if (count & 1) out[count - 1] = (src[2 * count - 2] | (src[2 * count - 1] << 8)) << 16;
}

let halfToFloatTable: Float32Array | undefined;
/** All 65536 half-precision values as float32 (256 KiB, built once). */
function halfTable(): Float32Array {
  if (halfToFloatTable) return halfToFloatTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    t[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return (halfToFloatTable = t);
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Data of a tensor to write: floats for F32/F16/BF16/F64, integers for the integer types. */
export type TensorData = Float32Array | Float64Array | Int32Array | Int16Array | Int8Array | Uint8Array | BigInt64Array;

/** One tensor to write. `data` may be a function so a large file is produced one tensor at a time. */
export interface TensorToWrite {
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  readonly data: TensorData | (() => TensorData);
}

/**
 * Writes a safetensors file, one tensor at a time (the file is never assembled in memory). The
 * header is padded with spaces to a multiple of 8 bytes so every tensor starts 8-byte aligned.
 * Float data is converted to the requested float dtype (F16/BF16 round to nearest even); integer
 * data to the requested integer dtype (checked to fit).
 *
 * ```ts
 * writeSafetensors('/tmp/w.safetensors', { 'layer.weight': { dtype: 'BF16', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } });
 * ```
 */
export function writeSafetensors(path: string, tensors: Readonly<Record<string, TensorToWrite>>, metadata?: Readonly<Record<string, string>>): { bytes: number } {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === '__metadata__') throw new Error(`writeSafetensors ${path}: '__metadata__' is reserved and cannot name a tensor`);
    if (!Object.hasOwn(SAFETENSORS_DTYPE_BYTES, t.dtype)) throw new Error(`writeSafetensors ${path}: tensor '${name}' has unknown dtype '${t.dtype}'`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new Error(`writeSafetensors ${path}: tensor '${name}' has a bad shape [${t.shape}]`);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_BYTES[t.dtype];
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - ((8 + json.length) % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const fd = openSync(path, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    writeAll(fd, len);
    writeAll(fd, json);
    for (const [name, t] of Object.entries(tensors)) {
      const data = typeof t.data === 'function' ? t.data() : t.data;
      writeAll(fd, encode(name, t.dtype, t.shape, data));
    }
  } finally {
    closeSync(fd);
  }
  return { bytes: 8 + json.length + offset };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, MAX_READ));
}

/** Little-endian bytes of `data` as `dtype`. */
function encode(name: string, dtype: SafetensorsDType, shape: readonly number[], data: TensorData): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  if (data.length !== n) throw new Error(`writeSafetensors: tensor '${name}' has ${data.length} values but shape [${shape}] needs ${n}`);
  const floatData = data instanceof Float32Array || data instanceof Float64Array;
  const isFloatType = dtype === 'F32' || dtype === 'F16' || dtype === 'BF16' || dtype === 'F64';
  if (floatData !== isFloatType) throw new Error(`writeSafetensors: tensor '${name}' is ${dtype} but its data is a ${data.constructor.name}`);
  const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (dtype) {
    case 'F32':
      return bytesOf(data instanceof Float32Array ? data : Float32Array.from(data as Float64Array));
    case 'F64':
      return bytesOf(data instanceof Float64Array ? data : Float64Array.from(data as Float32Array));
    case 'BF16': {
      const f = data instanceof Float32Array ? data : Float32Array.from(data as Float64Array);
      const u = new Uint32Array(f.buffer, f.byteOffset, n);
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        const x = u[i];
        // NaN stays NaN (quiet bit set); everything else rounds to nearest, ties to even.
        out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
      }
      return bytesOf(out);
    }
    case 'F16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = floatToHalf(data[i] as number);
      return bytesOf(out);
    }
    case 'I64': {
      if (data instanceof BigInt64Array) return bytesOf(data);
      const out = new BigInt64Array(n);
      for (let i = 0; i < n; i++) out[i] = BigInt(data[i] as number);
      return bytesOf(out);
    }
    case 'I32':
      return bytesOf(data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>, checked(name, dtype, -(2 ** 31), 2 ** 31 - 1)));
    case 'I16':
      return bytesOf(Int16Array.from(data as ArrayLike<number>, checked(name, dtype, -32768, 32767)));
    case 'I8':
      return bytesOf(Int8Array.from(data as ArrayLike<number>, checked(name, dtype, -128, 127)));
    case 'U8':
      return bytesOf(data instanceof Uint8Array ? data : Uint8Array.from(data as ArrayLike<number>, checked(name, dtype, 0, 255)));
    case 'BOOL':
      return bytesOf(Uint8Array.from(data as ArrayLike<number>, checked(name, dtype, 0, 1)));
  }
}

function checked(name: string, dtype: string, lo: number, hi: number): (v: number | bigint, i: number) => number {
  return (v, i) => {
    const x = Number(v);
    if (!(x >= lo && x <= hi)) throw new Error(`writeSafetensors: tensor '${name}' value ${v} at index ${i} does not fit ${dtype}`);
    return x;
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** float32 → IEEE half, round to nearest even (subnormals, overflow to infinity, NaN kept). */
function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rest > mid || (rest === mid && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
}
