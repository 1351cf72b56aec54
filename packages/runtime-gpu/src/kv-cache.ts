import * as tf from '@tensorflow/tfjs-core';
import type { NodeContext } from '@omniflow/core';

/** Sizes of a decoder's key/value cache. */
export interface KVCacheOptions {
  /** Decoder layers (one K and one V per layer). */
  readonly layers: number;
  /** Key/value heads per layer (the GQA `num_key_value_heads`). */
  readonly kvHeads: number;
  /** Width of one head. */
  readonly headDim: number;
  /** Positions preallocated per layer before the first growth (default 256). */
  readonly capacity?: number;
  /** Hard limit on positions (for example `max_position_embeddings`); appending past it throws. */
  readonly maxLength?: number;
  /** Write new rows into the buffers in place where the backend allows it (default true). */
  readonly inPlace?: boolean;
}

/** Full keys and values of one layer: `[kvHeads, length, headDim]` each, owned by the caller. */
export interface LayerKV {
  readonly k: tf.Tensor3D;
  readonly v: tf.Tensor3D;
}

/**
 * The preallocated buffers of one layer, for attention that masks instead of slicing: positions
 * `[length, capacity)` hold stale values and must be masked out. Owned by the cache: read them
 * inside the same synchronous step, never keep or dispose them.
 */
export interface LayerKVBuffers {
  readonly k: tf.Tensor3D;
  readonly v: tf.Tensor3D;
  readonly length: number;
  readonly capacity: number;
}

/** Writes rows into a tensor's own storage; only backends whose memory is a JS-visible array can. */
type RowWriter = (dst: tf.Tensor3D, src: tf.Tensor3D, at: number) => void;

/**
 * Key/value cache of one decoder for one session.
 *
 * Design (tfjs tensors are immutable, so a naive cache re-concatenates everything on every step):
 * each layer keeps a preallocated `[kvHeads, capacity, headDim]` buffer per K and V. On the wasm
 * and cpu backends, whose tensor memory is a JS-visible typed array, `append` copies only the new
 * rows into that buffer in place — O(new rows), no new tensor. When the buffer is full its capacity
 * doubles (one copy, so each position is copied O(1) times amortised). On other backends (tfjs-node)
 * the buffer is rebuilt with a concat. `append` then returns the live prefix as fresh tensors for
 * attention; `buffers()` gives the capacity-sized buffers with no copy at all for attention that masks.
 *
 * Rolling back is O(1): `truncate(n)` only moves the length (stale rows are overwritten by the next
 * append), which makes an interrupted turn cheap to undo with `beginTurn()` / `rollback()`.
 *
 * ```ts
 * const cache = new KVCache({ layers: 4, kvHeads: 2, headDim: 16 });
 * const { k, v } = cache.append(0, kNew, vNew); // [2, cache.length, 16], yours to dispose
 * cache.dispose();                               // when the session ends
 * ```
 */
export class KVCache {
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly maxLength: number;
  private readonly k: Array<tf.Tensor3D | undefined>;
  private readonly v: Array<tf.Tensor3D | undefined>;
  private readonly lengths: number[];
  private capacityNow: number;
  private turnStart = 0;
  private disposed = false;
  private readonly writeRows: RowWriter | undefined;

  constructor(options: KVCacheOptions) {
    for (const key of ['layers', 'kvHeads', 'headDim'] as const) {
      if (!Number.isInteger(options[key]) || options[key] <= 0) throw new Error(`KVCache: ${key} must be a positive integer, got ${options[key]}`);
    }
    const capacity = options.capacity ?? 256;
    if (!Number.isInteger(capacity) || capacity <= 0) throw new Error(`KVCache: capacity must be a positive integer, got ${capacity}`);
    this.layers = options.layers;
    this.kvHeads = options.kvHeads;
    this.headDim = options.headDim;
    this.maxLength = options.maxLength ?? Infinity;
    this.capacityNow = capacity;
    this.k = new Array(this.layers).fill(undefined);
    this.v = new Array(this.layers).fill(undefined);
    this.lengths = new Array(this.layers).fill(0);
    this.writeRows = options.inPlace === false ? undefined : rowWriterFor(tf.backend());
  }

  /** Positions cached in layer 0 (all layers agree between decoder steps). */
  get length(): number {
    return this.lengths[0];
  }

  /** Positions each layer can hold before its buffers grow. */
  get capacity(): number {
    return this.capacityNow;
  }

  /** Positions cached in one layer (differs from `length` only in the middle of a step). */
  layerLength(layer: number): number {
    this.check(layer);
    return this.lengths[layer];
  }

  /**
   * Appends `k`, `v` (`[kvHeads, newLen, headDim]`) to `layer` and returns that layer's full keys and
   * values (`[kvHeads, length, headDim]`), fresh tensors the caller owns (tf.tidy-friendly).
   * The inputs are not disposed.
   */
  append(layer: number, k: tf.Tensor, v: tf.Tensor): LayerKV {
    this.store(layer, k, v);
    const len = this.lengths[layer];
    const size: [number, number, number] = [this.kvHeads, len, this.headDim];
    return { k: tf.slice(this.k[layer]!, [0, 0, 0], size), v: tf.slice(this.v[layer]!, [0, 0, 0], size) };
  }

  /**
   * Appends like `append` but returns the cache's own capacity-sized buffers, with no copy; see
   * {@link LayerKVBuffers} for the rules.
   */
  appendInPlace(layer: number, k: tf.Tensor, v: tf.Tensor): LayerKVBuffers {
    this.store(layer, k, v);
    return this.buffers(layer);
  }

  /** The layer's buffers as they are now (see {@link LayerKVBuffers}); allocates them if needed. */
  buffers(layer: number): LayerKVBuffers {
    this.check(layer);
    this.ensureBuffers(layer);
    return { k: this.k[layer]!, v: this.v[layer]!, length: this.lengths[layer], capacity: this.capacityNow };
  }

  /** Forgets every position from `n` on, in every layer (O(1): nothing is copied or freed). */
  truncate(n: number): void {
    this.assertLive();
    if (!Number.isInteger(n) || n < 0) throw new Error(`KVCache.truncate: length must be a non-negative integer, got ${n}`);
    for (let l = 0; l < this.layers; l++) this.lengths[l] = Math.min(this.lengths[l], n);
    this.turnStart = Math.min(this.turnStart, n);
  }

  /** Marks the start of a turn; `rollback()` returns the cache to this point. Returns the length. */
  beginTurn(): number {
    this.assertLive();
    this.turnStart = this.length;
    return this.turnStart;
  }

  /** Undoes everything appended since `beginTurn()` (for an interrupted turn). */
  rollback(): void {
    this.truncate(this.turnStart);
  }

  /** Bytes held on the device by the buffers (K and V, all layers). */
  get bytes(): number {
    let n = 0;
    for (let l = 0; l < this.layers; l++) if (this.k[l]) n += 2 * this.kvHeads * this.capacityNow * this.headDim * 4;
    return n;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Frees every buffer. Safe to call twice. */
  dispose(): void {
    for (let l = 0; l < this.layers; l++) {
      this.k[l]?.dispose();
      this.v[l]?.dispose();
      this.k[l] = this.v[l] = undefined;
      this.lengths[l] = 0;
    }
    this.disposed = true;
  }

  private store(layer: number, k: tf.Tensor, v: tf.Tensor): void {
    this.check(layer);
    const newLen = this.checkInput('k', layer, k);
    if (this.checkInput('v', layer, v) !== newLen) throw new Error(`KVCache.append(layer ${layer}): k has ${newLen} positions but v has ${v.shape[1]}`);
    const at = this.lengths[layer];
    const need = at + newLen;
    if (need > this.maxLength) throw new Error(`KVCache.append(layer ${layer}): ${need} positions exceed maxLength ${this.maxLength}`);
    if (need > this.capacityNow) this.grow(need);
    this.ensureBuffers(layer);
    if (this.writeRows) {
      this.writeRows(this.k[layer]!, k as tf.Tensor3D, at);
      this.writeRows(this.v[layer]!, v as tf.Tensor3D, at);
    } else {
      this.k[layer] = this.rebuilt(this.k[layer]!, k as tf.Tensor3D, at);
      this.v[layer] = this.rebuilt(this.v[layer]!, v as tf.Tensor3D, at);
    }
    this.lengths[layer] = need;
  }

  /** Without in-place writes: [live prefix, new rows, zero tail] as one new buffer. */
  private rebuilt(buf: tf.Tensor3D, rows: tf.Tensor3D, at: number): tf.Tensor3D {
    const next = tf.keep(
      tf.tidy(() => {
        const tail = this.capacityNow - at - rows.shape[1];
        const parts: tf.Tensor3D[] = [];
        if (at > 0) parts.push(tf.slice(buf, [0, 0, 0], [this.kvHeads, at, this.headDim]));
        parts.push(rows);
        if (tail > 0) parts.push(tf.zeros([this.kvHeads, tail, this.headDim]));
        return tf.concat3d(parts, 1);
      }),
    );
    buf.dispose();
    return next;
  }

  /** Doubles capacity until `need` fits, carrying over every layer's live rows. */
  private grow(need: number): void {
    let cap = this.capacityNow;
    while (cap < need) cap *= 2;
    if (Number.isFinite(this.maxLength)) cap = Math.min(cap, Math.max(need, this.maxLength));
    const extra = cap - this.capacityNow;
    for (let l = 0; l < this.layers; l++) {
      for (const store of [this.k, this.v]) {
        const old = store[l];
        if (!old) continue;
        store[l] = tf.keep(tf.tidy(() => tf.concat3d([old, tf.zeros([this.kvHeads, extra, this.headDim])], 1)));
        old.dispose();
      }
    }
    this.capacityNow = cap;
  }

  private ensureBuffers(layer: number): void {
    if (this.k[layer]) return;
    const shape: [number, number, number] = [this.kvHeads, this.capacityNow, this.headDim];
    this.k[layer] = tf.keep(tf.zeros<tf.Rank.R3>(shape));
    this.v[layer] = tf.keep(tf.zeros<tf.Rank.R3>(shape));
  }

  private checkInput(name: 'k' | 'v', layer: number, t: tf.Tensor): number {
    const s = t.shape;
    if (s.length !== 3 || s[0] !== this.kvHeads || s[2] !== this.headDim || t.dtype !== 'float32') {
      throw new Error(`KVCache.append(layer ${layer}): ${name} must be float32 [${this.kvHeads}, newLen, ${this.headDim}], got ${t.dtype} [${s}]`);
    }
    return s[1];
  }

  private check(layer: number): void {
    this.assertLive();
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) throw new Error(`KVCache: layer ${layer} is out of range [0, ${this.layers})`);
  }

  private assertLive(): void {
    if (this.disposed) throw new Error('KVCache: used after dispose()');
  }
}

/**
 * In-place row writes for backends that keep tensor memory in a JS-visible typed array: the wasm
 * heap (`typedArrayFromHeap`) and the cpu backend's value arrays. Returns undefined elsewhere.
 */
function rowWriterFor(backend: tf.KernelBackend): RowWriter | undefined {
  const b = backend as unknown as {
    typedArrayFromHeap?: (t: tf.TensorInfo) => Float32Array;
    data?: { get(id: object): { values?: unknown } | undefined };
  };
  let view: ((t: tf.Tensor) => Float32Array) | undefined;
  if (typeof b.typedArrayFromHeap === 'function') {
    // The heap may grow between calls (and detach old views), so take a fresh view every time.
    view = (t) => b.typedArrayFromHeap!(t as unknown as tf.TensorInfo);
  } else if (tf.getBackend() === 'cpu' && b.data) {
    view = (t) => {
      const values = b.data!.get(t.dataId)?.values;
      if (!(values instanceof Float32Array)) throw new Error('KVCache: cpu tensor storage is not a Float32Array');
      return values;
    };
  }
  if (!view) return undefined;
  const heapView = view;
  return (dst, src, at) => {
    const [heads, cap, dim] = dst.shape;
    const n = src.shape[1];
    const from = heapView(src);
    const to = heapView(dst);
    for (let h = 0; h < heads; h++) to.set(from.subarray(h * n * dim, (h + 1) * n * dim), (h * cap + at) * dim);
  };
}

/**
 * A KVCache that lives exactly as long as a node instance of one session: it is disposed when the
 * node stops (session end, error or unsubscribe), through `ctx.onDispose`.
 *
 * ```ts
 * operator: (params, ctx) => { const cache = sessionKVCache(ctx, { layers: 4, kvHeads: 2, headDim: 16 }); ... }
 * ```
 */
export function sessionKVCache(ctx: Pick<NodeContext, 'onDispose'>, options: KVCacheOptions): KVCache {
  const cache = new KVCache(options);
  ctx.onDispose(() => cache.dispose());
  return cache;
}

/**
 * Scaled dot-product attention of new queries over one layer's cache buffers, with no copy of K or V:
 * positions `>= length` are masked out, and query `i` (of `newLen`, the last positions appended) sees
 * positions up to its own (causal). Grouped-query attention: `heads` must be a multiple of the
 * cache's kvHeads; query head `h` reads kv head `floor(h / (heads / kvHeads))`, as in transformers.
 *
 * ```ts
 * const b = cache.appendInPlace(layer, k, v);
 * const out = cachedAttention(q, b); // q [heads, newLen, headDim] -> [heads, newLen, headDim]
 * ```
 */
export function cachedAttention(q: tf.Tensor3D, kv: LayerKVBuffers, options: { scale?: number; causal?: boolean } = {}): tf.Tensor3D {
  const [heads, newLen, dim] = q.shape;
  const [kvHeads, cap, kvDim] = kv.k.shape;
  if (dim !== kvDim || heads % kvHeads !== 0) throw new Error(`cachedAttention: q [${q.shape}] does not fit kv buffers [${kv.k.shape}] (head dims must match, heads a multiple of kv heads)`);
  if (newLen > kv.length) throw new Error(`cachedAttention: ${newLen} queries but only ${kv.length} cached positions`);
  const groups = heads / kvHeads;
  const scale = options.scale ?? 1 / Math.sqrt(dim);
  const causal = options.causal ?? true;
  return tf.tidy(() => {
    // [kvHeads, groups * newLen, dim]: the query heads sharing one kv head, stacked along rows.
    const qg = tf.reshape(q, [kvHeads, groups * newLen, dim]);
    const scores = tf.mul(tf.matMul(qg, kv.k, false, true), scale); // [kvHeads, groups*newLen, cap]
    // Row r is query i = r % newLen at absolute position length - newLen + i.
    const row = tf.mod(tf.range(0, groups * newLen, 1, 'int32'), newLen);
    const limit = causal ? tf.add(row, kv.length - newLen) : tf.fill([groups * newLen], kv.length - 1, 'int32');
    const col = tf.range(0, cap, 1, 'int32');
    const allowed = tf.lessEqual(tf.expandDims(col, 0), tf.expandDims(limit, 1)); // [rows, cap]
    const masked = tf.where(allowed, scores, tf.fill(scores.shape, -Infinity));
    const out = tf.matMul(tf.softmax(masked), kv.v); // [kvHeads, groups*newLen, dim]
    return tf.reshape(out, [heads, newLen, dim]) as tf.Tensor3D;
  });
}
