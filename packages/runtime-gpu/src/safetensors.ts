import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

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

// A header is JSON describing tensors; anything near this size is a corrupt or hostile file,
// so refuse it before allocating.
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/**
 * One safetensors file, opened lazily: the header is parsed at open, tensor data is read per tensor
 * with positional reads when asked for, so the whole file is never in memory.
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

  private constructor(readonly path: string, fd: number, entries: Map<string, TensorEntry>, metadata: Record<string, string>) {
    this.fd = fd;
    this.entries = entries;
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsFile {
    const fd = openSync(path, 'r');
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
    if (this.fd === undefined) throw new Error(`safetensors ${this.path}: file is closed`);
    const buf = new Uint8Array(new ArrayBuffer(e.byteLength));
    let done = 0;
    while (done < e.byteLength) {
      // Node caps one read at 2 GiB; read big tensors in pieces.
      const n = readSync(this.fd, buf, done, Math.min(e.byteLength - done, 1 << 30), e.byteOffset + done);
      if (n === 0) throw new Error(`safetensors ${this.path}: tensor '${name}' is truncated (file ended at byte ${e.byteOffset + done})`);
      done += n;
    }
    return buf;
  }

  /** One tensor decoded to float32 (F32/F16/BF16/F64) or int32 (I64/I32/I16/I8/U8/BOOL). */
  read(name: string): HostTensor {
    const e = this.entry(name);
    return decode(e, this.readBytes(name));
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function parseHeader(path: string, fd: number): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const fileSize = fstatSync(fd).size;
  if (fileSize < 8) throw new Error(`safetensors ${path}: file is ${fileSize} bytes, too short for a header length`);
  const lenBuf = Buffer.alloc(8);
  readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  if (headerLen > MAX_HEADER_BYTES) throw new Error(`safetensors ${path}: header length ${headerLen} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt file?)`);
  if (8 + headerLen > fileSize) throw new Error(`safetensors ${path}: header length ${headerLen} runs past the end of the ${fileSize}-byte file`);
  const headerBuf = Buffer.alloc(headerLen);
  readSync(fd, headerBuf, 0, headerLen, 8);
  let header: Record<string, any>;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (err) {
    throw new Error(`safetensors ${path}: header is not valid JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw new Error(`safetensors ${path}: header is not a JSON object`);
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  const ranges: Array<[number, number, string]> = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = v ?? {};
      continue;
    }
    const where = `safetensors ${path}: tensor '${name}'`;
    if (!v || typeof v !== 'object') throw new Error(`${where}: entry is not an object`);
    const dtype = v.dtype as string;
    if (!(dtype in SAFETENSORS_DTYPE_BYTES)) throw new Error(`${where}: unknown dtype '${dtype}' (expected one of ${Object.keys(SAFETENSORS_DTYPE_BYTES).join(', ')})`);
    const shape = v.shape;
    if (!Array.isArray(shape) || !shape.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0)) throw new Error(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    const off = v.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0) || off[1] < off[0]) {
      throw new Error(`${where}: data_offsets ${JSON.stringify(off)} are not [begin, end] with 0 <= begin <= end`);
    }
    const count = shape.reduce((a: number, b: number) => a * b, 1);
    const bytes = count * SAFETENSORS_DTYPE_BYTES[dtype as SafetensorsDType];
    if (off[1] - off[0] !== bytes) throw new Error(`${where}: data_offsets span ${off[1] - off[0]} bytes but ${dtype}${JSON.stringify(shape)} needs ${bytes}`);
    if (off[1] > dataSize) throw new Error(`${where}: data_offsets end at ${off[1]} but the data section has only ${dataSize} bytes (truncated file?)`);
    entries.set(name, { name, dtype: dtype as SafetensorsDType, shape, file: path, byteOffset: dataStart + off[0], byteLength: bytes });
    ranges.push([off[0], off[1], name]);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) throw new Error(`safetensors ${path}: tensors '${ranges[i - 1][2]}' and '${ranges[i][2]}' overlap`);
  }
  return { entries, metadata };
}

/** Decodes raw little-endian bytes of a tensor to float32 or int32. */
export function decode(e: Pick<TensorEntry, 'name' | 'dtype' | 'shape'>, bytes: Uint8Array): HostTensor {
  const n = e.shape.reduce((a, b) => a * b, 1);
  const shape = [...e.shape];
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  switch (e.dtype) {
    case 'F32':
      return { dtype: 'float32', shape, data: new Float32Array(buf, 0, n) };
    case 'F64':
      return { dtype: 'float32', shape, data: Float32Array.from(new Float64Array(buf, 0, n)) };
    case 'BF16': {
      // bf16 is the top half of an f32: shift into place.
      const src = new Uint16Array(buf, 0, n);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i] << 16;
      return { dtype: 'float32', shape, data: new Float32Array(out.buffer) };
    }
    case 'F16': {
      const src = new Uint16Array(buf, 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(src[i]);
      return { dtype: 'float32', shape, data: out };
    }
    case 'I64': {
      const src = new BigInt64Array(buf, 0, n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = src[i];
        if (v > 2147483647n || v < -2147483648n) throw new Error(`tensor '${e.name}': I64 value ${v} at index ${i} does not fit int32`);
        out[i] = Number(v);
      }
      return { dtype: 'int32', shape, data: out };
    }
    case 'I32':
      return { dtype: 'int32', shape, data: new Int32Array(buf, 0, n) };
    case 'I16':
      return { dtype: 'int32', shape, data: Int32Array.from(new Int16Array(buf, 0, n)) };
    case 'I8':
      return { dtype: 'int32', shape, data: Int32Array.from(new Int8Array(buf, 0, n)) };
    case 'U8':
    case 'BOOL':
      return { dtype: 'int32', shape, data: Int32Array.from(new Uint8Array(buf, 0, n)) };
  }
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}
