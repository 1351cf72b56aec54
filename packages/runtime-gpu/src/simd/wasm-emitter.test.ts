import { describe, expect, it } from 'vitest';
import { sleb, uleb, webAssembly, WasmModuleBuilder } from './wasm-emitter.js';

describe('LEB128', () => {
  it('encodes the spec examples and the edges', () => {
    expect(uleb(0)).toEqual([0]);
    expect(uleb(127)).toEqual([0x7f]);
    expect(uleb(128)).toEqual([0x80, 0x01]);
    expect(uleb(624485)).toEqual([0xe5, 0x8e, 0x26]);
    expect(sleb(-1)).toEqual([0x7f]);
    expect(sleb(63)).toEqual([0x3f]);
    expect(sleb(64)).toEqual([0xc0, 0x00]);
    expect(sleb(-123456)).toEqual([0xc0, 0xbb, 0x78]);
    expect(sleb(0xffff0000)).toEqual(sleb(-65536)); // u32 bit patterns wrap to i32
    expect(() => uleb(-1)).toThrow(/not a u32/);
  });
});

describe('WasmModuleBuilder', () => {
  it('assembles functions with params, locals, labels and loops', () => {
    const m = new WasmModuleBuilder();
    m.func('add', { params: ['i32', 'i32'], results: ['i32'] }, (c, [a, b]) => c.localGet(a!).localGet(b!).i32Add());
    // Σ_{i<n} i*i with the `for` helper (an empty range runs no iteration).
    m.func('sumSquares', { params: ['i32'], results: ['i32'] }, (c, [n]) => {
      const i = c.local('i32'), s = c.local('i32');
      c.for(i, () => c.i32Const(0), () => c.localGet(n!), 1, () => c.localGet(s).localGet(i).localGet(i).i32Mul().i32Add().localSet(s));
      c.localGet(s);
    });
    // Early exit through a labelled block: first i in [0, n) with i*i >= t, else -1.
    m.func('firstSquareAtLeast', { params: ['i32', 'i32'], results: ['i32'] }, (c, [n, t]) => {
      const i = c.local('i32');
      c.block((done) => {
        c.for(i, () => c.i32Const(0), () => c.localGet(n!), 1, () => {
          c.localGet(i).localGet(i).i32Mul().localGet(t!).i32GeS().brIf(done);
        });
        c.i32Const(-1).localSet(i);
      });
      c.localGet(i);
    });
    const e = m.instantiate() as { add: (a: number, b: number) => number; sumSquares: (n: number) => number; firstSquareAtLeast: (n: number, t: number) => number };
    expect(e.add(2, 40)).toBe(42);
    expect(e.sumSquares(10)).toBe(285);
    expect(e.sumSquares(0)).toBe(0);
    expect(e.firstSquareAtLeast(100, 50)).toBe(8);
    expect(e.firstSquareAtLeast(5, 50)).toBe(-1);
  });

  it('runs SIMD over an imported memory, and sees the memory after it grew', () => {
    const memory = new (webAssembly().Memory)({ initial: 1 });
    const m = new WasmModuleBuilder().importMemory('env', 'memory', { initial: 1 });
    // out[0..4) = a[0..4) * splat(s) + b[0..4), and widen 8 packed bf16 at `p` into 8 f32 at `out`.
    m.func('axpy4', { params: ['i32', 'i32', 'f32', 'i32'], results: [] }, (c, [a, b, s, out]) => {
      c.localGet(out!).localGet(a!).v128Load().localGet(s!).f32x4Splat().f32x4Mul().localGet(b!).v128Load().f32x4Add().v128Store();
    });
    m.func('widenBf16', { params: ['i32', 'i32'], results: [] }, (c, [p, out]) => {
      const v = c.local('v128');
      c.localGet(p!).v128Load().localSet(v);
      c.localGet(out!).localGet(v).i32x4ExtendLowI16x8U().i32Const(16).i32x4Shl().v128Store(0);
      c.localGet(out!).localGet(v).i32x4ExtendHighI16x8U().i32Const(16).i32x4Shl().v128Store(16);
    });
    const e = m.instantiate({ env: { memory } }) as { axpy4: (a: number, b: number, s: number, out: number) => void; widenBf16: (p: number, out: number) => void };
    memory.grow(3); // the module keeps working on the grown memory; JS views must be re-made
    const f = new Float32Array(memory.buffer);
    const base = 3 * 65536; // in a page that exists only after the growth
    f.set([1, 2, 3, 4], base / 4);
    f.set([10, 20, 30, 40], base / 4 + 4);
    e.axpy4(base, base + 16, 0.5, base + 32);
    expect([...f.subarray(base / 4 + 8, base / 4 + 12)]).toEqual([10.5, 21, 31.5, 42]);

    const values = [1, -2, 0.5, 3.25, -0.125, 65536, 1e-3, -7];
    const bf = new Uint16Array(memory.buffer, base + 64, 8);
    values.forEach((x, i) => (bf[i] = new Uint32Array(new Float32Array([x]).buffer)[0]! >>> 16));
    e.widenBf16(base + 64, base + 96);
    const widened = [...new Float32Array(memory.buffer, base + 96, 8)];
    expect(widened.slice(0, 6)).toEqual(values.slice(0, 6));
    expect(widened[6]).toBeCloseTo(1e-3, 5); // 1e-3 is not a bf16: truncated to 0.0009994507
    expect(widened[7]).toBe(-7);
  });

  it('rejects malformed use with a clear error', () => {
    const m = new WasmModuleBuilder();
    expect(() =>
      m.func('bad', { params: [], results: [] }, (c) => {
        let escaped: { level: number } | undefined;
        c.block((l) => (escaped = l));
        c.br(escaped!);
      }),
    ).toThrow(/no longer open/);
    expect(() => new WasmModuleBuilder().importMemory('env', 'm', { initial: 1, shared: true }).encode()).toThrow(/shared memory needs a maximum/);
  });
});
