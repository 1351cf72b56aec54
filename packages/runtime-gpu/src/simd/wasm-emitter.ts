/**
 * A tiny typed WebAssembly emitter: enough of the binary format (types, one imported memory, functions, exports,
 * code) and of the instruction set (i32/f32 arithmetic, loads/stores, structured control, the SIMD ops our kernels
 * use) to write small hot kernels from TypeScript without a toolchain. wabt/binaryen are not dependencies; a kernel
 * here is a few hundred bytes and is assembled at startup in well under a millisecond.
 *
 * Control flow uses labels instead of raw branch depths: `c.loop((top) => { ...; c.brIf(top); })` — the emitter
 * computes the relative depth, which is where hand-written wasm usually goes wrong.
 *
 * ```ts
 * const m = new WasmModuleBuilder();
 * m.func('add', { params: ['i32', 'i32'], results: ['i32'] }, (c, [a, b]) => c.localGet(a).localGet(b).i32Add());
 * const { add } = m.instantiate() as { add: (a: number, b: number) => number }; // add(2, 3) === 5
 * ```
 */

/** WebAssembly value types. */
export type WasmValType = 'i32' | 'i64' | 'f32' | 'f64' | 'v128';

const VALTYPE: Record<WasmValType, number> = { i32: 0x7f, i64: 0x7e, f32: 0x7d, f64: 0x7c, v128: 0x7b };

/** A function's signature. */
export interface WasmFuncType {
  readonly params: readonly WasmValType[];
  readonly results: readonly WasmValType[];
}

/** A local variable (parameters come first), by index. */
export interface WasmLocal {
  readonly index: number;
  readonly type: WasmValType;
}

/** A branch target made by `block`, `loop` or `if`: `br(label)` leaves a block/if, or jumps back to a loop's top. */
export interface WasmLabel {
  readonly level: number;
}

/** Unsigned LEB128, as the binary format writes sizes, counts and indices. `uleb(624485)` → `[0xe5, 0x8e, 0x26]`. */
export function uleb(value: number): number[] {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new Error(`uleb: ${value} is not a u32`);
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value) byte |= 0x80;
    out.push(byte);
  } while (value);
  return out;
}

/** Signed LEB128, as `i32.const` writes its immediate. `sleb(-123456)` → `[0xc0, 0xbb, 0x78]`. */
export function sleb(value: number): number[] {
  if (!Number.isInteger(value) || value < -0x80000000 || value > 0xffffffff) throw new Error(`sleb: ${value} is not an i32`);
  value |= 0; // u32 constants above 2^31 wrap to their i32 bit pattern
  const out: number[] = [];
  for (;;) {
    const byte = value & 0x7f;
    value >>= 7;
    const done = (value === 0 && (byte & 0x40) === 0) || (value === -1 && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

function utf8(name: string): number[] {
  const bytes = [...new TextEncoder().encode(name)];
  return [...uleb(bytes.length), ...bytes];
}

/** SIMD opcodes (after the 0xfd prefix) that WasmCode emits; named as in the spec. */
const SIMD = {
  'v128.load': 0x00, 'v128.load8x8_s': 0x01, 'v128.load32_splat': 0x09, 'v128.store': 0x0b, 'v128.const': 0x0c, 'i8x16.shuffle': 0x0d,
  'i32x4.splat': 0x11, 'f32x4.splat': 0x13, 'f32x4.extract_lane': 0x1f,
  'v128.and': 0x4e, 'v128.or': 0x50,
  'i32x4.extend_low_i16x8_u': 0xa9, 'i32x4.extend_high_i16x8_u': 0xaa, 'i32x4.shl': 0xab, 'i32x4.shr_u': 0xad,
  'f32x4.add': 0xe4, 'f32x4.sub': 0xe5, 'f32x4.mul': 0xe6, 'f32x4.div': 0xe7, 'f32x4.pmin': 0xea, 'f32x4.pmax': 0xeb,
  'f32x4.relaxed_madd': 0x105,
  // integer dot products (int8 weights): widen, multiply-add pairs, convert, and the quantizer's round/narrow
  'f32x4.replace_lane': 0x20, 'f32x4.nearest': 0x6a, 'i16x8.narrow_i32x4_s': 0x85,
  'i16x8.extend_low_i8x16_s': 0x87, 'i16x8.extend_high_i8x16_s': 0x88, 'i32x4.add': 0xae, 'i32x4.dot_i16x8_s': 0xba,
  'f32x4.abs': 0xe0, 'f32x4.max': 0xe9, 'i32x4.trunc_sat_f32x4_s': 0xf8, 'f32x4.convert_i32x4_s': 0xfa,
} as const;

/**
 * One function body. Every method appends an instruction and returns `this`, so straight-line code chains;
 * `block`/`loop`/`if` take a callback that receives the new label.
 */
export class WasmCode {
  readonly bytes: number[] = [];
  private readonly locals: WasmValType[] = [];
  private depth = 0;

  constructor(readonly params: readonly WasmValType[]) {}

  /** A new local of `type` (zero-initialised at function entry). */
  local(type: WasmValType): WasmLocal {
    this.locals.push(type);
    return { index: this.params.length + this.locals.length - 1, type };
  }

  /** The body as the code section stores it: local declarations, instructions, `end`. */
  encode(): number[] {
    if (this.depth !== 0) throw new Error(`WasmCode: ${this.depth} block(s) left open`);
    const groups: Array<[number, WasmValType]> = [];
    for (const t of this.locals) {
      const last = groups[groups.length - 1];
      if (last && last[1] === t) last[0]++;
      else groups.push([1, t]);
    }
    const body = [...uleb(groups.length), ...groups.flatMap(([n, t]) => [...uleb(n), VALTYPE[t]]), ...this.bytes, 0x0b];
    return [...uleb(body.length), ...body];
  }

  /** Raw bytes, for an instruction this class does not name. */
  raw(...bytes: number[]): this {
    this.bytes.push(...bytes);
    return this;
  }

  // ---- structured control ----------------------------------------------------------------------

  private structured(opcode: number, body: (label: WasmLabel) => void): this {
    const label = { level: this.depth++ };
    this.bytes.push(opcode, 0x40); // block type: no values in or out
    body(label);
    this.bytes.push(0x0b);
    this.depth--;
    return this;
  }

  /** `block ... end`: `br(label)` inside jumps past the end. */
  block(body: (exit: WasmLabel) => void): this {
    return this.structured(0x02, body);
  }

  /** `loop ... end`: `br(label)` inside jumps back to the top. */
  loop(body: (top: WasmLabel) => void): this {
    return this.structured(0x03, body);
  }

  /** `if ... [else ...] end` on the i32 on the stack. */
  if(then: (exit: WasmLabel) => void, otherwise?: (exit: WasmLabel) => void): this {
    return this.structured(0x04, (label) => {
      then(label);
      if (otherwise) {
        this.bytes.push(0x05);
        otherwise(label);
      }
    });
  }

  private relative(label: WasmLabel): number[] {
    const d = this.depth - 1 - label.level;
    if (d < 0) throw new Error(`WasmCode: branch to a label that is no longer open (level ${label.level}, depth ${this.depth})`);
    return uleb(d);
  }

  br(label: WasmLabel): this {
    return this.raw(0x0c, ...this.relative(label));
  }

  /** Branches when the i32 on the stack is non-zero. */
  brIf(label: WasmLabel): this {
    return this.raw(0x0d, ...this.relative(label));
  }

  return(): this {
    return this.raw(0x0f);
  }

  /**
   * `for (i = start; i < end; i += step) body()` with i32 values pushed by the callbacks; the test runs once before
   * entering and then at the bottom of each iteration (no branch back to a test at the top).
   */
  for(i: WasmLocal, start: () => void, end: () => void, step: number, body: () => void): this {
    start();
    this.localSet(i);
    return this.block((exit) => {
      this.localGet(i);
      end();
      this.i32GeS().brIf(exit);
      this.loop((top) => {
        body();
        this.localGet(i).i32Const(step).i32Add().localTee(i);
        end();
        this.i32LtS().brIf(top);
      });
    });
  }

  // ---- locals and constants --------------------------------------------------------------------

  localGet(l: WasmLocal): this {
    return this.raw(0x20, ...uleb(l.index));
  }
  localSet(l: WasmLocal): this {
    return this.raw(0x21, ...uleb(l.index));
  }
  localTee(l: WasmLocal): this {
    return this.raw(0x22, ...uleb(l.index));
  }
  i32Const(v: number): this {
    return this.raw(0x41, ...sleb(v));
  }
  f32Const(v: number): this {
    const b = new Uint8Array(new Float32Array([v]).buffer);
    return this.raw(0x43, ...b);
  }
  /** A v128 constant from four i32 lanes. */
  v128ConstI32x4(lanes: [number, number, number, number]): this {
    const b = new Uint8Array(new Int32Array(lanes).buffer);
    return this.simd('v128.const').raw(...b);
  }
  drop(): this {
    return this.raw(0x1a);
  }
  /** `select`: the first of two values when the i32 on top is non-zero, else the second. */
  select(): this {
    return this.raw(0x1b);
  }

  // ---- memory (memarg: natural alignment hint, byte offset immediate) --------------------------

  i32Load(offset = 0): this {
    return this.raw(0x28, 2, ...uleb(offset));
  }
  f32Load(offset = 0): this {
    return this.raw(0x2a, 2, ...uleb(offset));
  }
  i32Store(offset = 0): this {
    return this.raw(0x36, 2, ...uleb(offset));
  }
  /** Stores the low 16 bits of an i32 (alignment hint 2 bytes). */
  i32Store16(offset = 0): this {
    return this.raw(0x3b, 1, ...uleb(offset));
  }
  f32Store(offset = 0): this {
    return this.raw(0x38, 2, ...uleb(offset));
  }
  /** 16 bytes; the address need not be aligned (tfjs-wasm's tensors are 8-byte aligned). */
  v128Load(offset = 0): this {
    return this.simd('v128.load').raw(4, ...uleb(offset));
  }
  v128Store(offset = 0): this {
    return this.simd('v128.store').raw(4, ...uleb(offset));
  }
  /** Loads 8 bytes and sign-extends each to an i16 lane (one `vpmovsxbw` with a memory operand on x64). */
  v128Load8x8S(offset = 0): this {
    return this.simd('v128.load8x8_s').raw(3, ...uleb(offset));
  }
  /** Loads one f32/i32 and copies it into all four lanes. */
  v128Load32Splat(offset = 0): this {
    return this.simd('v128.load32_splat').raw(2, ...uleb(offset));
  }

  // ---- i32 / f32 scalar ------------------------------------------------------------------------

  i32Eqz(): this { return this.raw(0x45); }
  i32Eq(): this { return this.raw(0x46); }
  i32Ne(): this { return this.raw(0x47); }
  i32LtS(): this { return this.raw(0x48); }
  i32LtU(): this { return this.raw(0x49); }
  i32GeU(): this { return this.raw(0x4f); }
  i32GtS(): this { return this.raw(0x4a); }
  i32LeS(): this { return this.raw(0x4c); }
  i32GeS(): this { return this.raw(0x4e); }
  i32Add(): this { return this.raw(0x6a); }
  i32Sub(): this { return this.raw(0x6b); }
  i32Mul(): this { return this.raw(0x6c); }
  i32DivU(): this { return this.raw(0x6e); }
  i32RemU(): this { return this.raw(0x70); }
  i32And(): this { return this.raw(0x71); }
  i32Shl(): this { return this.raw(0x74); }
  i32ShrU(): this { return this.raw(0x76); }
  f32Add(): this { return this.raw(0x92); }
  f32Sub(): this { return this.raw(0x93); }
  f32Mul(): this { return this.raw(0x94); }
  f32Max(): this { return this.raw(0x97); }
  f32Div(): this { return this.raw(0x95); }
  f32Abs(): this { return this.raw(0x8b); }
  /** Round to nearest, ties to even (as f32x4.nearest). */
  f32Nearest(): this { return this.raw(0x90); }
  f32Eq(): this { return this.raw(0x5b); }
  /** f32 → i32 truncating toward zero, saturating (NaN → 0; no trap, unlike i32.trunc_f32_s). */
  i32TruncSatF32S(): this { return this.raw(0xfc, 0x00); }
  f32ReinterpretI32(): this { return this.raw(0xbe); }
  i32ReinterpretF32(): this { return this.raw(0xbc); }

  // ---- SIMD ------------------------------------------------------------------------------------

  /** Any SIMD instruction by its spec name (immediates, if any, follow via `raw`). */
  simd(name: keyof typeof SIMD): this {
    return this.raw(0xfd, ...uleb(SIMD[name]));
  }
  f32x4Splat(): this { return this.simd('f32x4.splat'); }
  f32x4ExtractLane(lane: number): this { return this.simd('f32x4.extract_lane').raw(lane); }
  f32x4Add(): this { return this.simd('f32x4.add'); }
  f32x4Sub(): this { return this.simd('f32x4.sub'); }
  f32x4Mul(): this { return this.simd('f32x4.mul'); }
  f32x4Div(): this { return this.simd('f32x4.div'); }
  /** a·b + c of the three vectors on the stack, fused or not (relaxed SIMD: Node 20 needs --experimental-wasm-relaxed-simd). */
  f32x4RelaxedMadd(): this { return this.simd('f32x4.relaxed_madd'); }
  /** `b < a ? a : b` lane-wise — with a zero operand, a cheap relu (no NaN canonicalisation). */
  f32x4Pmax(): this { return this.simd('f32x4.pmax'); }
  i32x4Shl(): this { return this.simd('i32x4.shl'); }
  v128And(): this { return this.simd('v128.and'); }
  i32x4ExtendLowI16x8U(): this { return this.simd('i32x4.extend_low_i16x8_u'); }
  i32x4ExtendHighI16x8U(): this { return this.simd('i32x4.extend_high_i16x8_u'); }
  f32x4ReplaceLane(lane: number): this { return this.simd('f32x4.replace_lane').raw(lane); }
  f32x4Abs(): this { return this.simd('f32x4.abs'); }
  /** Lane-wise max (NaN if either is NaN). */
  f32x4Max(): this { return this.simd('f32x4.max'); }
  f32x4Nearest(): this { return this.simd('f32x4.nearest'); }
  /** f32 → i32 lanes, rounding toward zero, saturating (NaN → 0). */
  i32x4TruncSatF32x4S(): this { return this.simd('i32x4.trunc_sat_f32x4_s'); }
  f32x4ConvertI32x4S(): this { return this.simd('f32x4.convert_i32x4_s'); }
  /** Two i32x4 → one i16x8 (first vector's lanes low), saturating to [-32768, 32767]. */
  i16x8NarrowI32x4S(): this { return this.simd('i16x8.narrow_i32x4_s'); }
  /** Sign-extends the low / high 8 bytes of an i8x16 to i16x8. */
  i16x8ExtendLowI8x16S(): this { return this.simd('i16x8.extend_low_i8x16_s'); }
  i16x8ExtendHighI8x16S(): this { return this.simd('i16x8.extend_high_i8x16_s'); }
  /** Lane i = a[2i]·b[2i] + a[2i+1]·b[2i+1] of two i16x8 (i32 lanes; wraps only for (-32768)² twice). */
  i32x4DotI16x8S(): this { return this.simd('i32x4.dot_i16x8_s'); }
  i32x4Add(): this { return this.simd('i32x4.add'); }
  /** Picks 32-bit lanes from the two vectors on the stack: indices 0..3 are the first's lanes, 4..7 the second's. */
  i32x4Shuffle(lanes: [number, number, number, number]): this {
    if (lanes.some((l) => !Number.isInteger(l) || l < 0 || l > 7)) throw new Error(`i32x4Shuffle: lanes must be 0..7, got [${lanes}]`);
    return this.simd('i8x16.shuffle').raw(...lanes.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3]));
  }
}

/** Limits of an imported memory, in 64 KiB pages. */
export interface MemoryLimits {
  readonly initial: number;
  readonly maximum?: number;
  readonly shared?: boolean;
}

interface FuncEntry {
  readonly name: string | null;
  readonly type: number;
  readonly code: WasmCode;
}

/**
 * Assembles a module: an optional imported memory, then functions (exported when named).
 *
 * ```ts
 * const m = new WasmModuleBuilder().importMemory('env', 'memory', { initial: 1 });
 * m.func('sum4', { params: ['i32'], results: ['f32'] }, (c, [p]) => c.localGet(p).v128Load().f32x4ExtractLane(0));
 * const exports = m.instantiate({ env: { memory } });
 * ```
 */
export class WasmModuleBuilder {
  private readonly types: WasmFuncType[] = [];
  private readonly funcs: FuncEntry[] = [];
  private memory: { module: string; name: string; limits: MemoryLimits } | undefined;

  /** Imports a linear memory (the module then reads and writes that memory, e.g. tfjs-wasm's heap). */
  importMemory(module: string, name: string, limits: MemoryLimits): this {
    this.memory = { module, name, limits };
    return this;
  }

  /** Adds a function; `build` receives the code and the parameter locals. Returns the function index. */
  func(name: string | null, type: WasmFuncType, build: (code: WasmCode, params: WasmLocal[]) => void): number {
    const code = new WasmCode(type.params);
    build(code, type.params.map((t, index) => ({ index, type: t })));
    this.funcs.push({ name, type: this.typeIndex(type), code });
    return this.funcs.length - 1;
  }

  private typeIndex(type: WasmFuncType): number {
    const key = (t: WasmFuncType) => `${t.params.join(',')}->${t.results.join(',')}`;
    const i = this.types.findIndex((t) => key(t) === key(type));
    if (i >= 0) return i;
    this.types.push(type);
    return this.types.length - 1;
  }

  /** The module's bytes. */
  encode(): Uint8Array {
    const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
    const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
    const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    out.push(...section(1, vec(this.types.map((t) => [0x60, ...vec(t.params.map((p) => [VALTYPE[p]])), ...vec(t.results.map((r) => [VALTYPE[r]]))]))));
    if (this.memory) {
      const { module, name, limits } = this.memory;
      const flags = (limits.maximum !== undefined ? 1 : 0) | (limits.shared ? 2 : 0);
      if (limits.shared && limits.maximum === undefined) throw new Error('importMemory: a shared memory needs a maximum');
      const lim = [flags, ...uleb(limits.initial), ...(limits.maximum !== undefined ? uleb(limits.maximum) : [])];
      out.push(...section(2, vec([[...utf8(module), ...utf8(name), 0x02, ...lim]])));
    }
    out.push(...section(3, vec(this.funcs.map((f) => uleb(f.type)))));
    const exported = this.funcs.map((f, i) => ({ f, i })).filter(({ f }) => f.name !== null);
    out.push(...section(7, vec(exported.map(({ f, i }) => [...utf8(f.name!), 0x00, ...uleb(i)]))));
    out.push(...section(10, vec(this.funcs.map((f) => f.code.encode()))));
    return new Uint8Array(out);
  }

  /** Compiles and instantiates synchronously (fine for kernel-sized modules) and returns the exports. */
  instantiate(imports: Record<string, Record<string, unknown>> = {}): Record<string, unknown> {
    const wasm = webAssembly();
    const module = new wasm.Module(this.encode());
    return new wasm.Instance(module, imports).exports;
  }
}

/** The WebAssembly global is in every Node; its types live in the DOM lib, which this repo does not load. */
export interface WasmMemoryLike {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(pages: number): number;
}

interface WebAssemblyLike {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
  Memory: new (d: { initial: number; maximum?: number; shared?: boolean }) => WasmMemoryLike;
}

/** The global `WebAssembly`, typed for what this emitter uses. */
export function webAssembly(): WebAssemblyLike {
  return (globalThis as unknown as { WebAssembly: WebAssemblyLike }).WebAssembly;
}
