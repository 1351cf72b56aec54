import * as tf from '@tensorflow/tfjs-core';
import { heapOffset, perWasmBackend, wasmHeap, WasmModuleBuilder, type WasmBackendInternals } from '@omniflow/runtime-gpu';

/*
 * Attention of a decode step reads few query rows against the whole cache. As tfjs ops on wasm that is two batched
 * matMuls, which tfjs-wasm runs as a scalar loop (~1 GFLOP/s: 0.47 ms per talker layer at 101 positions, ~10 ms of a
 * 20-layer step), a softmax, and two copies of the live cache prefix (KVCache.append). `decodeAttention` reads the
 * cache's own buffers in place and does the two products with wasm SIMD (a module assembled at first use over
 * tfjs-wasm's heap, like the matmul kernels in runtime-gpu), the softmax in between on the host view of the heap.
 */

/** Query rows (positions per call) up to which decodeAttention applies: decode steps and the code predictor's 2-row prefill. */
export const DECODE_ATTENTION_MAX_ROWS = 4;

const DECODE_ATTENTION = 'OmniflowDecodeAttention';

interface DecodeAttentionAttrs {
  /** Query positions S (q is [heads, S, D]: for KV head h, row g·S + i of its block is query i of head h·groups + g). */
  queries: number;
  /** Cached positions to attend to (the buffers may hold more). */
  length: number;
}

/**
 * Whether decodeAttention runs here for `queries` new positions and head size `headDim`: the wasm backend, at most
 * DECODE_ATTENTION_MAX_ROWS positions, head_dim a multiple of 4 (one SIMD vector).
 */
export function decodeAttentionApplies(queries: number, headDim: number): boolean {
  return tf.getBackend() === 'wasm' && queries <= DECODE_ATTENTION_MAX_ROWS && headDim % 4 === 0;
}

/**
 * Causal attention of head-major queries `q` ([heads, S, D], already scaled by 1/√D; head h reads KV head
 * floor(h / (heads / kvHeads))) over the first `length` positions of the cache buffers `k`, `v` ([kvHeads, capacity,
 * D]); the S queries are the last S of those positions (query i sees positions up to length − S + i). Returns the
 * heads side by side per query, [S, heads·D], as the output projection reads them. Inference only (no gradient);
 * check decodeAttentionApplies first.
 *
 * ```ts
 * const b = cache.appendInPlace(layer, kNew, vNew);
 * const merged = decodeAttention(q, b.k, b.v, b.length); // one decode step: [1, heads·D]
 * ```
 */
export function decodeAttention(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, length: number): tf.Tensor2D {
  const [H, S, D] = q.shape;
  const Hkv = k.shape[0];
  if (H % Hkv !== 0 || k.shape[2] !== D || !tf.util.arraysEqual(k.shape, v.shape) || k.shape[1] < length || length < S) {
    throw new Error(`decodeAttention: q [${q.shape}] does not fit k [${k.shape}], v [${v.shape}] over ${length} positions`);
  }
  register();
  const attrs: DecodeAttentionAttrs = { queries: S, length };
  return tf.engine().runKernel(DECODE_ATTENTION, { q, k, v }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor2D;
}

interface DecodeAttentionModule {
  /** s[r·T + t] = q[r] · k[t] over D floats, for r < R, t < T (byte addresses). */
  scores(q: number, k: number, s: number, R: number, T: number, D: number): void;
  /** out[r] = Σ_t p[r·T + t] · v[t], for r < R. */
  values(p: number, v: number, out: number, R: number, T: number, D: number): void;
}

/** The two SIMD loops over the backend's heap. Loops count indices (addresses can pass 2^31, so no signed compares on them). */
const moduleFor = perWasmBackend((heap, limits): DecodeAttentionModule => {
  const m = new WasmModuleBuilder().importMemory('env', 'memory', limits);
  const p6 = { params: ['i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const, results: [] as const };
  m.func('scores', p6, (c, [q, k, s, R, T, D]) => {
    const t = c.local('i32'), r = c.local('i32'), d = c.local('i32'), kt = c.local('i32'), qr = c.local('i32'), sp = c.local('i32'), d16 = c.local('i32');
    const acc = c.local('v128'), a1 = c.local('v128'), a2 = c.local('v128'), a3 = c.local('v128');
    const fma = (into: typeof acc, off: number) => {
      c.localGet(into);
      c.localGet(qr).localGet(d).i32Const(4).i32Mul().i32Add().v128Load(off);
      c.localGet(kt).localGet(d).i32Const(4).i32Mul().i32Add().v128Load(off);
      c.f32x4Mul().f32x4Add().localSet(into);
    };
    c.localGet(D).i32Const(-16).i32And().localSet(d16); // D rounded down to 16
    c.for(t, () => c.i32Const(0), () => c.localGet(T), 1, () => {
      c.localGet(k).localGet(t).localGet(D).i32Mul().i32Const(4).i32Mul().i32Add().localSet(kt);
      c.for(r, () => c.i32Const(0), () => c.localGet(R), 1, () => {
        c.localGet(q).localGet(r).localGet(D).i32Mul().i32Const(4).i32Mul().i32Add().localSet(qr);
        for (const a of [acc, a1, a2, a3]) c.v128ConstI32x4([0, 0, 0, 0]).localSet(a);
        // Four independent accumulators over 16 floats a step (one chain of adds would wait on each add's latency).
        c.for(d, () => c.i32Const(0), () => c.localGet(d16), 16, () => [acc, a1, a2, a3].forEach((a, u) => fma(a, 16 * u)));
        c.for(d, () => c.localGet(d16), () => c.localGet(D), 4, () => fma(acc, 0));
        c.localGet(acc).localGet(a1).f32x4Add().localGet(a2).localGet(a3).f32x4Add().f32x4Add().localSet(acc);
        c.localGet(s).localGet(r).localGet(T).i32Mul().localGet(t).i32Add().i32Const(4).i32Mul().i32Add().localSet(sp);
        c.localGet(sp);
        c.localGet(acc).f32x4ExtractLane(0).localGet(acc).f32x4ExtractLane(1).f32Add();
        c.localGet(acc).f32x4ExtractLane(2).localGet(acc).f32x4ExtractLane(3).f32Add();
        c.f32Add().f32Store(0);
      });
    });
  });
  m.func('values', p6, (c, [p, v, out, R, T, D]) => {
    const r = c.local('i32'), t = c.local('i32'), d = c.local('i32'), o = c.local('i32'), vt = c.local('i32'), pr = c.local('i32'), d16 = c.local('i32');
    const w = c.local('v128'), a0 = c.local('v128'), a1 = c.local('v128'), a2 = c.local('v128'), a3 = c.local('v128');
    /** out[r, d .. d + 4·units) = Σ_t p[r, t] · v[t, d .. d + 4·units), with `units` accumulators. */
    const block = (accs: readonly (typeof w)[]) => {
      for (const a of accs) c.v128ConstI32x4([0, 0, 0, 0]).localSet(a);
      c.for(t, () => c.i32Const(0), () => c.localGet(T), 1, () => {
        c.localGet(pr).localGet(t).i32Const(4).i32Mul().i32Add().v128Load32Splat(0).localSet(w);
        c.localGet(v).localGet(t).localGet(D).i32Mul().localGet(d).i32Add().i32Const(4).i32Mul().i32Add().localSet(vt);
        accs.forEach((a, u) => c.localGet(a).localGet(w).localGet(vt).v128Load(16 * u).f32x4Mul().f32x4Add().localSet(a));
      });
      c.localGet(out).localGet(r).localGet(D).i32Mul().localGet(d).i32Add().i32Const(4).i32Mul().i32Add().localSet(o);
      accs.forEach((a, u) => c.localGet(o).localGet(a).v128Store(16 * u));
    };
    c.localGet(D).i32Const(-16).i32And().localSet(d16); // D rounded down to 16
    c.for(r, () => c.i32Const(0), () => c.localGet(R), 1, () => {
      c.localGet(p).localGet(r).localGet(T).i32Mul().i32Const(4).i32Mul().i32Add().localSet(pr);
      // 16 columns at a time in four accumulators, then the last columns 4 at a time (D is a multiple of 4).
      c.for(d, () => c.i32Const(0), () => c.localGet(d16), 16, () => block([a0, a1, a2, a3]));
      c.for(d, () => c.localGet(d16), () => c.localGet(D), 4, () => block([a0]));
    });
  });
  return m.instantiate({ env: { memory: heap } }) as unknown as DecodeAttentionModule;
});

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: DECODE_ATTENTION, backendName: 'wasm', kernelFunc: decodeAttentionWasm as unknown as tf.KernelFunc });
}

function decodeAttentionWasm(args: { inputs: { q: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo }; backend: WasmBackendInternals; attrs: DecodeAttentionAttrs }): tf.TensorInfo {
  const { backend, attrs } = args;
  const { q, k, v } = args.inputs;
  const [H, S, D] = q.shape as [number, number, number];
  const Hkv = k.shape[0]!, R = (H / Hkv) * S; // query rows per KV head
  const cap = k.shape[1]!, T = attrs.length;
  const out = backend.makeOutput([S, H * D], 'float32');
  if (H === 0 || S === 0) return out;
  const scratch = backend.makeOutput([R * T], 'float32'); // scores, then probabilities, of one KV head
  try {
    const mod = moduleFor(backend);
    // Offsets after both allocations (an allocation can grow the heap; offsets stay valid, views do not).
    const qo = heapOffset(backend, q, 'q'), ko = heapOffset(backend, k, 'k'), vo = heapOffset(backend, v, 'v');
    const oo = heapOffset(backend, out, 'out'), so = heapOffset(backend, scratch, 'scores');
    const f = new Float32Array(wasmHeap(backend).buffer, so, R * T);
    const past = T - S;
    for (let h = 0; h < Hkv; h++) {
      mod.scores(qo + h * R * D * 4, ko + h * cap * D * 4, so, R, T, D);
      // Softmax per row over the positions it may see (query i: up to past + i); the rest get probability 0.
      for (let r = 0; r < R; r++) {
        const row = r * T, seen = past + (r % S) + 1;
        let max = -Infinity;
        for (let t = 0; t < seen; t++) max = Math.max(max, f[row + t]!);
        let sum = 0;
        for (let t = 0; t < seen; t++) {
          f[row + t] = Math.exp(f[row + t]! - max);
          sum += f[row + t]!;
        }
        const inv = 1 / sum;
        for (let t = 0; t < seen; t++) f[row + t] = f[row + t]! * inv;
        f.fill(0, row + seen, row + T);
      }
      // Row r = g·S + i (head h·groups + g, query i) goes to out[i, (h·groups + g)·D ...]: for one query the rows of
      // all heads are already in that order; for several, one row at a time.
      if (S === 1) mod.values(so, vo + h * cap * D * 4, oo + h * R * D * 4, R, T, D);
      else {
        for (let r = 0; r < R; r++) {
          const head = h * (R / S) + Math.floor(r / S), i = r % S;
          mod.values(so + r * T * 4, vo + h * cap * D * 4, oo + (i * H + head) * D * 4, 1, T, D);
        }
      }
    }
  } finally {
    backend.disposeData(scratch.dataId);
  }
  return out;
}
