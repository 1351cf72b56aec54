import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decode, SafetensorsFile, writeSafetensors } from './safetensors.js';
import { fixturePath } from './testing/fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'omniflow-st-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file from a header object and a data section, exactly as given (for lying headers). */
function rawFile(name: string, header: unknown, data: Uint8Array, headerLen?: bigint): string {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLen ?? BigInt(json.length));
  const path = join(dir, name);
  writeFileSync(path, Buffer.concat([len, json, data]));
  return path;
}

describe('SafetensorsFile', () => {
  it('reads the tiny fixture checkpoint lazily', () => {
    const f = SafetensorsFile.open(fixturePath('model.safetensors'));
    expect(f.keys().length).toBe(387);
    const w = f.read('thinker.model.layers.0.mlp.experts.1.gate_proj.weight');
    expect(w.dtype).toBe('float32');
    expect(w.shape).toEqual([16, 32]);
    f.close();
  });

  it('round-trips every dtype through the writer, with an 8-byte aligned data start', () => {
    const floats = new Float32Array([0, 1, -2.5, 3.140625, 65504, -1e-3, 1e30, Infinity, -Infinity, NaN]);
    const ints = new Int32Array([0, 1, -1, 127, -128, 2147483647, -2147483648]);
    const path = join(dir, 'all.safetensors');
    const { bytes } = writeSafetensors(path, {
      f32: { dtype: 'F32', shape: [2, 5], data: floats },
      f64: { dtype: 'F64', shape: [10], data: floats },
      bf16: { dtype: 'BF16', shape: [10], data: floats },
      f16: { dtype: 'F16', shape: [10], data: floats },
      odd: { dtype: 'BF16', shape: [3], data: new Float32Array([1.5, -2, 0.25]) },
      i64: { dtype: 'I64', shape: [7], data: ints },
      i32: { dtype: 'I32', shape: [7], data: ints },
      u8: { dtype: 'U8', shape: [3], data: new Uint8Array([0, 7, 255]) },
      i8: { dtype: 'I8', shape: [2], data: new Int32Array([-128, 127]) },
      empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    }, { format: 'pt' });
    expect(statSync(path).size).toBe(bytes);
    const headerLen = Number(readFileSync(path).readBigUInt64LE(0));
    expect((8 + headerLen) % 8).toBe(0);
    const f = SafetensorsFile.open(path);
    expect(f.metadata).toEqual({ format: 'pt' });
    expect(Array.from(f.read('f32').data)).toEqual(Array.from(floats));
    expect(f.read('f32').shape).toEqual([2, 5]);
    expect(Array.from(f.read('f64').data)).toEqual(Array.from(floats));
    // bf16 keeps 8 mantissa bits: 3.140625 is exact, 65504 rounds up to 65536, -1e-3 (0xBA83126F) down to 0xBA83.
    expect(Array.from(f.read('bf16').data)).toEqual([0, 1, -2.5, 3.140625, 65536, -0.00099945068359375, 1.0002555517425873e30, Infinity, -Infinity, NaN]);
    // f16: 65504 is its largest finite value; 1e30 overflows to infinity.
    expect(Array.from(f.read('f16').data)).toEqual([0, 1, -2.5, 3.140625, 65504, -0.00100040435791015625, Infinity, Infinity, -Infinity, NaN]);
    expect(Array.from(f.read('odd').data)).toEqual([1.5, -2, 0.25]);
    expect(f.read('i64')).toEqual({ dtype: 'int32', shape: [7], data: ints });
    expect(Array.from(f.read('i32').data)).toEqual(Array.from(ints));
    expect(Array.from(f.read('u8').data)).toEqual([0, 7, 255]);
    expect(Array.from(f.read('i8').data)).toEqual([-128, 127]);
    expect(f.read('empty').shape).toEqual([0, 4]);
    const reuse = new Float32Array(10);
    expect(f.read('bf16', { out: reuse }).data).toBe(reuse);
    expect(() => f.read('bf16', { out: new Float32Array(3) })).toThrow("tensor 'bf16' (BF16 [10]) needs a Float32Array of 10 elements for 'out', got Float32Array of 3");
    f.close();
    expect(() => f.read('f32')).toThrow('file is closed');
  });

  it('decodes bf16 across chunk boundaries exactly like the one-shot decoder', () => {
    const n = 4 * 1024 * 1024 + 3; // more than one 8 MiB scratch chunk of bf16, odd length
    const src = new Float32Array(n);
    for (let i = 0; i < n; i++) src[i] = ((i % 2001) - 1000) * 0.731;
    const path = join(dir, 'big.safetensors');
    writeSafetensors(path, { w: { dtype: 'BF16', shape: [n], data: () => src } });
    const f = SafetensorsFile.open(path);
    const viaChunks = f.read('w').data;
    const oneShot = decode(f.entry('w'), f.readBytes('w')).data;
    f.close();
    expect(viaChunks.length).toBe(n);
    let mismatches = 0, worst = 0;
    for (let i = 0; i < n; i++) {
      if (viaChunks[i] !== oneShot[i]) mismatches++;
      worst = Math.max(worst, Math.abs(viaChunks[i] - src[i]) / Math.max(1, Math.abs(src[i])));
    }
    expect(mismatches).toBe(0);
    expect(worst).toBeLessThanOrEqual(2 ** -8); // bf16 rounding error bound
  });

  it('refuses values a dtype cannot hold, when writing and reading', () => {
    expect(() => writeSafetensors(join(dir, 'x.safetensors'), { u: { dtype: 'U8', shape: [1], data: new Int32Array([256]) } })).toThrow("tensor 'u' value 256 at index 0 does not fit U8");
    expect(() => writeSafetensors(join(dir, 'x.safetensors'), { u: { dtype: 'F32', shape: [2], data: new Float32Array(3) } })).toThrow("tensor 'u' has 3 values but shape [2] needs 2");
    const path = join(dir, 'i64.safetensors');
    writeSafetensors(path, { big: { dtype: 'I64', shape: [2], data: new BigInt64Array([5n, 1n << 40n]) } });
    const f = SafetensorsFile.open(path);
    expect(() => f.read('big')).toThrow("tensor 'big': I64 value 1099511627776 at index 1 does not fit int32");
    f.close();
  });

  describe('malformed files: each a clear error naming the file and what is wrong', () => {
    const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
    const short = () => {
      writeFileSync(join(dir, 'short.st'), Buffer.alloc(5));
      return join(dir, 'short.st');
    };
    const cases: Array<[string, () => string, string | RegExp]> = [
      ['too short for a header length', short, 'file is 5 bytes, too short for the 8-byte header length'],
      ['absurd header length', () => rawFile('absurd.st', ok, new Uint8Array(8), 1n << 60n), `header length ${1n << 60n} bytes exceeds the 104857600-byte limit`],
      ['header past the end', () => rawFile('past.st', ok, new Uint8Array(0), 4096n), 'header length 4096 runs past the end of the'],
      ['non-JSON header', () => rawFile('nonjson.st', '{"w": {dtype', new Uint8Array(8)), /header is not valid JSON/],
      ['header not an object', () => rawFile('array.st', '[1, 2, 3]', new Uint8Array(0)), 'header is not a JSON object'],
      ['unknown dtype', () => rawFile('dtype.st', { w: { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(2)), "tensor 'w': unknown dtype 'F8_E4M3'"],
      ['bad shape', () => rawFile('shape.st', { w: { dtype: 'F32', shape: [2, -1], data_offsets: [0, 8] } }, new Uint8Array(8)), "tensor 'w': shape [2,-1] is not a list of non-negative integers"],
      ['reversed offsets', () => rawFile('rev.st', { w: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8)), "tensor 'w': data_offsets [8,0] are not [begin, end]"],
      ['shape/offset mismatch', () => rawFile('mismatch.st', { w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(12)), "tensor 'w': data_offsets span 8 bytes but F32 [3] needs 12"],
      ['offsets past the end (truncated)', () => rawFile('trunc.st', { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(10)), "tensor 'w': data_offsets end at 16 but the data section has only 10 bytes (truncated file?)"],
      ['overlapping ranges', () => rawFile('overlap.st', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12)), "tensors 'a' [0, 8) and 'b' [4, 12) overlap"],
      ['bad metadata', () => rawFile('meta.st', { __metadata__: { n: 3 }, ...ok }, new Uint8Array(8)), '__metadata__ must be an object of strings'],
      ['missing file', () => join(dir, 'nope.safetensors'), /nope\.safetensors: cannot open/],
    ];
    it.each(cases)('%s', (_label, make, message) => {
      const path = make();
      expect(() => SafetensorsFile.open(path)).toThrow(message);
      try {
        SafetensorsFile.open(path);
      } catch (err) {
        expect((err as Error).message).toContain(path);
      }
    });
  });
});
