/**
 * The machine's own memory bandwidth, measured with a plain triad (a[i] = b[i] + s*c[i]) over arrays far
 * larger than the caches. Benchmarks report their effective bandwidth next to `gbPerSecond`.
 *
 * Two triads run: the obvious JavaScript loop over Float32Arrays, and the same loop as a 30-byte
 * WebAssembly SIMD function (four floats per instruction, as the tensor backend's own kernels run). V8 does
 * not vectorise the JavaScript loop, which on this machine reaches only a fifth of what the memory system
 * delivers; a baseline that weak would flatter every ratio, so `gbPerSecond` is the faster of the two.
 */
import { uleb } from '@omniflow/runtime-gpu';

export function measureTriadBandwidth(options: { megabytes?: number; repeats?: number } = {}): {
  gbPerSecond: number;
  wasmSimdTriadGBps: number;
  jsTriadGBps: number;
  arrayMiB: number;
} {
  const bytes = (options.megabytes ?? 128) * 2 ** 20;
  const n = bytes / 4;
  const repeats = options.repeats ?? 5;

  const a = new Float32Array(n), b = new Float32Array(n).fill(1), c = new Float32Array(n).fill(2);
  a.fill(0); // first touch outside the timed region
  let best = Infinity;
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) a[i] = b[i] + 0.5 * c[i];
    best = Math.min(best, performance.now() - t0);
  }
  const jsTriadGBps = (3 * bytes) / (best / 1000) / 1e9;

  const { triad, memory } = wasmTriad();
  memory.grow(Math.ceil((3 * bytes) / 65536) - memory.buffer.byteLength / 65536 + 1);
  const view = new Float32Array(memory.buffer);
  view.fill(0, 0, n);
  view.fill(1, n, 2 * n);
  view.fill(2, 2 * n, 3 * n);
  best = Infinity;
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    triad(0, bytes, 2 * bytes, n);
    best = Math.min(best, performance.now() - t0);
  }
  if (view[n - 1] !== 2) throw new Error(`wasm triad computed ${view[n - 1]}, expected 2`);
  const wasmSimdTriadGBps = (3 * bytes) / (best / 1000) / 1e9;

  const round = (x: number) => +x.toFixed(2);
  return { gbPerSecond: round(Math.max(jsTriadGBps, wasmSimdTriadGBps)), wasmSimdTriadGBps: round(wasmSimdTriadGBps), jsTriadGBps: round(jsTriadGBps), arrayMiB: bytes / 2 ** 20 };
}

/**
 * triad(aOffset, bOffset, cOffset, n): a = b + 0.5 * c over n floats (n a multiple of 4, offsets 16-byte
 * aligned), hand-assembled: v128.load b, v128.load c, f32x4.mul by splat(0.5), f32x4.add, v128.store a.
 */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

function wasmTriad(): { triad: (a: number, b: number, c: number, n: number) => void; memory: WasmMemory } {
  const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
  const body = [
    0x02, 0x01, 0x7f, 0x01, 0x7b, // locals: i (i32), k (v128)
    0x43, 0x00, 0x00, 0x00, 0x3f, 0xfd, 0x13, 0x21, 0x05, // k = f32x4.splat(0.5)
    0x03, 0x40, // loop
    0x20, 0x00, 0x20, 0x04, 0x6a, // address a + i
    0x20, 0x01, 0x20, 0x04, 0x6a, 0xfd, 0x00, 0x04, 0x00, // v128.load b + i
    0x20, 0x02, 0x20, 0x04, 0x6a, 0xfd, 0x00, 0x04, 0x00, // v128.load c + i
    0x20, 0x05, 0xfd, 0xe6, 0x01, // f32x4.mul k
    0xfd, 0xe4, 0x01, // f32x4.add
    0xfd, 0x0b, 0x04, 0x00, // v128.store
    0x20, 0x04, 0x41, 0x10, 0x6a, 0x22, 0x04, // i += 16
    0x20, 0x03, 0x41, 0x02, 0x74, 0x49, 0x0d, 0x00, // br_if i < n * 4
    0x0b, 0x0b,
  ];
  const bytes = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [0x01, 0x60, 0x04, 0x7f, 0x7f, 0x7f, 0x7f, 0x00]), // type (i32 x4) -> ()
    ...section(3, [0x01, 0x00]), // one function of type 0
    ...section(5, [0x01, 0x00, 0x01]), // one memory, 1 page to start
    ...section(7, [0x02, 0x05, ...Buffer.from('triad'), 0x00, 0x00, 0x06, ...Buffer.from('memory'), 0x02, 0x00]),
    ...section(10, [0x01, ...uleb(body.length), ...body]),
  ]);
  // The WebAssembly global is in every Node; its types live in the DOM lib, which this repo does not load.
  const wasm = (globalThis as unknown as { WebAssembly: { Instance: new (m: unknown) => { exports: unknown }; Module: new (b: Uint8Array) => unknown } }).WebAssembly;
  const instance = new wasm.Instance(new wasm.Module(bytes));
  return instance.exports as { triad: (a: number, b: number, c: number, n: number) => void; memory: WasmMemory };
}

/** Median of `repeats` timings (ms) of `fn` after `warmup` untimed calls. */
export async function medianMs(fn: () => unknown | Promise<unknown>, repeats = 7, warmup = 2): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)];
}
