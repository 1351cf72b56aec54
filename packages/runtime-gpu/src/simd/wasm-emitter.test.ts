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

  it('runs the integer-dot opcodes (int8 widening, i16 dot, convert, round, narrow) and the scalar f32/i32 ones', () => {
    const memory = new (webAssembly().Memory)({ initial: 1 });
    const m = new WasmModuleBuilder().importMemory('env', 'memory', { initial: 1 });
    // out i32x4 = dot(extend_low(w), a) + dot(extend_high(w), b), with w 16 int8 at p and a, b 8 int16 each at q, q+16.
    m.func('dot16', { params: ['i32', 'i32', 'i32'], results: [] }, (c, [p, q, out]) => {
      const w = c.local('v128');
      c.localGet(p!).v128Load().localSet(w);
      c.localGet(out!);
      c.localGet(w).i16x8ExtendLowI8x16S().localGet(q!).v128Load(0).i32x4DotI16x8S();
      c.localGet(w).i16x8ExtendHighI8x16S().localGet(q!).v128Load(16).i32x4DotI16x8S();
      c.i32x4Add().v128Store();
    });
    // out 8 int16 = narrow(trunc_sat(nearest(|f[0..4)|·s)), trunc_sat(nearest(max(f[4..8), 0)·s))); lane 2 of the result of convert(i32x4 at p) at out+16.
    m.func('quant', { params: ['i32', 'f32', 'i32'], results: [] }, (c, [f, s, out]) => {
      c.localGet(out!);
      c.localGet(f!).v128Load(0).f32x4Abs().localGet(s!).f32x4Splat().f32x4Mul().f32x4Nearest().i32x4TruncSatF32x4S();
      c.localGet(f!).v128Load(16).f32Const(0).f32x4Splat().f32x4Max().localGet(s!).f32x4Splat().f32x4Mul().f32x4Nearest().i32x4TruncSatF32x4S();
      c.i16x8NarrowI32x4S().v128Store();
      c.localGet(out!).localGet(f!).v128Load(32).f32x4ConvertI32x4S().f32Const(-1).f32x4ReplaceLane(3).v128Store(16);
    });
    // scalar: store16(out, trunc(nearest(|a| / b))) and return a == b
    m.func('scalar', { params: ['f32', 'f32', 'i32'], results: ['i32'] }, (c, [a, b, out]) => {
      c.localGet(out!).localGet(a!).f32Abs().localGet(b!).f32Div().f32Nearest().i32TruncSatF32S().i32Store16();
      c.localGet(a!).localGet(b!).f32Eq();
    });
    const e = m.instantiate({ env: { memory } }) as { dot16: (p: number, q: number, out: number) => void; quant: (f: number, s: number, out: number) => void; scalar: (a: number, b: number, out: number) => number };
    const w = Int8Array.from([127, -127, 1, -1, 2, 3, -4, 5, 6, -7, 8, 9, -10, 11, 12, 0]);
    const x = Int16Array.from([32767, 32767, 5, 6, -7, 8, 9, 10, 1, 2, 3, 4, 5, 6, 7, -32767]);
    new Int8Array(memory.buffer, 0, 16).set(w);
    new Int16Array(memory.buffer, 64, 16).set(x);
    e.dot16(0, 64, 128);
    // lane i sums products of w[2i], w[2i+1] with x[2i], x[2i+1] and of w[8+2i], w[9+2i] with x[8+2i], x[9+2i]
    const lanes = [0, 1, 2, 3].map((i) => [2 * i, 2 * i + 1, 8 + 2 * i, 9 + 2 * i].reduce((s, j) => s + w[j]! * x[j]!, 0));
    expect([...new Int32Array(memory.buffer, 128, 4)]).toEqual(lanes);
    expect(lanes[0]).toBe(127 * 32767 - 127 * 32767 + 6 * 1 - 7 * 2); // signed widening: -127 stays -127

    new Float32Array(memory.buffer, 256, 8).set([-1.5, 2.5, 0.49, -3.6, -1, 1e9, 0.5, 7.7]);
    new Int32Array(memory.buffer, 288, 4).set([-5, 1 << 24, 3, 9]);
    e.quant(256, 2, 512);
    // |f|·2 rounded half to even: 3, 5, 1 (0.98), 7 (7.2); max(f, 0)·2: 0, 2e9 → saturates to 32767, 1, 15 (15.4)
    expect([...new Int16Array(memory.buffer, 512, 8)]).toEqual([3, 5, 1, 7, 0, 32767, 1, 15]);
    expect([...new Float32Array(memory.buffer, 528, 4)]).toEqual([-5, 1 << 24, 3, -1]);

    expect(e.scalar(-7, 2, 600)).toBe(0);
    expect(new Int16Array(memory.buffer, 600, 1)[0]).toBe(4); // 3.5 rounds to even
    expect(e.scalar(2.5, 2.5, 602)).toBe(1);
    expect(new Int16Array(memory.buffer, 600, 2)[1]).toBe(1);
    expect(e.scalar(NaN, 1, 604)).toBe(0); // trunc_sat: NaN → 0 instead of a trap
    expect(new Int16Array(memory.buffer, 604, 1)[0]).toBe(0);
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
