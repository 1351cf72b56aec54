import * as tf from '@tensorflow/tfjs-core';
import { applyRope, ropeTables, ropeTensors } from '../layers/rope.js';
import { mropeTables, type MropePositions } from '../layers/mrope.js';
import { linear } from '../layers/linear.js';
import { rmsNorm } from '../layers/rms-norm.js';
import { sparseMoe } from '../layers/moe.js';
import { swiGlu } from '../layers/mlp.js';
import { Sampler } from '../models/qwen3-omni/sampler.js';
import type { TextModel } from '../models/qwen3-omni/text-model.js';

/** One sequence of a batch: its prefill input as `prepareThinkerPrompt` builds it. The caller keeps the tensors. */
export interface BatchPrompt {
  readonly inputIds: readonly number[];
  /** [S, hidden] with the audio rows spliced in. */
  readonly inputsEmbeds: tf.Tensor2D;
  readonly positions: MropePositions;
  /** Decode step at cache length P sits at position P + ropeDelta on all three axes. */
  readonly ropeDelta: number;
  /** This sequence's own sampler (its own random stream), so a result does not depend on its batch mates. */
  readonly sampler: Sampler;
}

export interface GenerateBatchOptions {
  readonly maxNewTokens: number;
  /**
   * How prompts are prefilled: 'each' runs the text model's own forward per prompt (fastest on the wasm and cpu
   * backends, where a bigger matrix does not make an op cheaper per row), 'grouped' one padded forward per group of
   * similar-length prompts (fewer, larger ops for accelerators). Default: 'each' on wasm/cpu, else 'grouped'.
   */
  readonly prefill?: 'each' | 'grouped';
  /** Ids that end a sequence; the stop token is not returned. */
  readonly stopTokens: readonly number[];
  readonly signal?: AbortSignal;
}

/**
 * The batch KV cache, per layer: keys TRANSPOSED [B, kv_heads, head_dim, T] and values [B, kv_heads, T, head_dim].
 * Keys are stored transposed so scores are a plain matMul(q, Kᵀ): the wasm backend's transposeB path is about 5x
 * slower, and transposing the whole cache every step would cost a copy of it.
 */
type KV = Array<{ k: tf.Tensor4D; v: tf.Tensor4D }>;

const NEG = -3.4028234663852886e38; // float32 minimum, as the reference masks: exp() of it is exactly 0

/** Counters `generateBatch` adds to when given: decode steps (one forward each for the whole batch) and time spent. */
export interface GenerateBatchStats {
  decodeSteps: number;
  prefillMs: number;
  decodeMs: number;
}

/**
 * Generates for many prompts at once, with ONE forward per decode step for the whole batch: the prompts are prefilled
 * (one by one, or in padded groups of similar length — see `prefill`), their KV caches left-padded to the longest
 * with the padding masked out, then every decode step runs all unfinished sequences as one [B, hidden] matrix through projections, norms, MoE and the head, attending over the
 * shared left-padded KV cache [B, kv_heads, T, head_dim]. On the wasm backend a forward costs about the same for 1
 * row or 16 (per-op overhead dominates), which is where batching captions across files gains its speed. Per-row maths
 * is the same as `generate`'s (masked keys get exactly zero weight), so greedy results match it token for token.
 *
 * ```ts
 * const tokens = await generateBatch(model.thinker, prompts, { maxNewTokens: 64, stopTokens: tokenizer.stopTokenIds });
 * ```
 */
export async function generateBatch(model: TextModel, prompts: readonly BatchPrompt[], options: GenerateBatchOptions, stats?: GenerateBatchStats): Promise<number[][]> {
  const { maxNewTokens } = options;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new Error(`generateBatch: maxNewTokens must be a positive integer, got ${maxNewTokens}`);
  prompts.forEach((p, b) => {
    if (p.inputIds.length === 0) throw new Error(`generateBatch: prompt ${b} is empty`);
    if (p.inputsEmbeds.shape[0] !== p.inputIds.length) throw new Error(`generateBatch: prompt ${b} has ${p.inputsEmbeds.shape[0]} embedding rows for ${p.inputIds.length} ids`);
  });
  if (!model.lmHead) throw new Error('generateBatch: the text model was loaded without an lm_head');
  if (model.layers.some((l) => !l.self_attn.q_proj)) throw new Error('generateBatch: the text model was loaded with fused q/k/v (fuseQkv); load it with separate projections');
  const stops = new Set(options.stopTokens);
  const V = model.config.vocab_size;
  const out: number[][] = prompts.map(() => []);
  const history = prompts.map((p) => [...p.inputIds]);
  const lengths = prompts.map((p) => p.inputIds.length);
  if (prompts.length === 0) return out;

  let kv: KV = [];
  let mask: tf.Tensor4D | undefined;
  try {
    // Prefill in groups of similar length: padding a short prompt to a long one costs attention work that grows
    // with the square of the length, while one more forward per group only costs per-op overhead.
    const mode = options.prefill ?? (['wasm', 'cpu'].includes(tf.getBackend()) ? 'each' : 'grouped');
    const groups = mode === 'each' ? prompts.map((_, b) => [b]) : lengthGroups(lengths);
    const parts: PrefillResult[] = [];
    let logits: tf.Tensor2D;
    const t0 = performance.now();
    try {
      for (const g of groups) {
        await betweenSteps(options.signal);
        parts.push(mode === 'each' ? prefillOne(model, prompts[g[0]]) : prefillStep(model, g.map((b) => prompts[b])));
      }
      const first = joinGroups(parts);
      kv = first.kv;
      mask = first.mask;
      logits = first.logits;
    } finally {
      for (const p of parts) {
        p.logits.dispose();
        disposeKV(p.kv);
        p.mask.dispose();
      }
    }
    let rows = groups.flat();
    let t1 = performance.now();
    if (stats) stats.prefillMs += t1 - t0;
    for (let step = 1; ; step++) {
      const all = logits.dataSync() as Float32Array;
      logits.dispose();
      if (stats && step > 1) {
        const now = performance.now();
        stats.decodeMs += now - t1;
        t1 = now;
      }
      const keep: number[] = [];
      rows.forEach((b, i) => {
        const token = prompts[b].sampler.sample(all.subarray(i * V, (i + 1) * V), history[b]);
        history[b].push(token);
        if (stops.has(token)) return;
        out[b].push(token);
        if (out[b].length < maxNewTokens) keep.push(i);
      });
      if (keep.length === 0) break;
      if (keep.length < rows.length) {
        // Drop finished sequences from the batch so later steps do not compute them.
        const idx = tf.tensor1d(keep, 'int32');
        const compact = kv.map((t) => ({ k: tf.gather(t.k, idx) as tf.Tensor4D, v: tf.gather(t.v, idx) as tf.Tensor4D }));
        const compactMask = tf.gather(mask!, idx) as tf.Tensor4D;
        idx.dispose();
        disposeKV(kv);
        mask!.dispose();
        kv = compact;
        mask = compactMask;
        rows = keep.map((i) => rows[i]);
      }
      await betweenSteps(options.signal);
      const ids = rows.map((b) => out[b][out[b].length - 1]);
      // The token fed now sits at cache position prompt length + step - 1.
      const positions = rows.map((b) => lengths[b] + step - 1 + prompts[b].ropeDelta);
      t1 = performance.now();
      const next = decodeStep(model, ids, positions, kv, mask!);
      disposeKV(kv);
      mask!.dispose();
      kv = next.next;
      mask = next.nextMask;
      logits = next.logits;
      if (stats) stats.decodeSteps += 1;
    }
    return out;
  } finally {
    disposeKV(kv);
    mask?.dispose();
  }
}

/** Prompt indices grouped by length (ascending): a group's longest prompt is at most 1.25x its shortest + 16 tokens. */
function lengthGroups(lengths: readonly number[]): number[][] {
  const order = lengths.map((_, b) => b).sort((x, y) => lengths[x] - lengths[y]);
  const groups: number[][] = [];
  for (const b of order) {
    const g = groups.at(-1);
    if (g && lengths[b] <= lengths[g[0]] * 1.25 + 16) g.push(b);
    else groups.push([b]);
  }
  return groups;
}

/** What a prefill of B prompts hands the decode loop. */
interface PrefillResult {
  /** [B, vocab] of each prompt's last row. */
  readonly logits: tf.Tensor2D;
  /** Per layer: keys [B, kv_heads, head_dim, S] (transposed, see KV), values [B, kv_heads, S, head_dim]. */
  readonly kv: KV;
  /** [B, 1, 1, S]: 0 for prompt columns, float32 min for padding. */
  readonly mask: tf.Tensor4D;
}

/** One prompt through the text model's own forward, its KV cache read back as a batch of one. */
function prefillOne(model: TextModel, p: BatchPrompt): PrefillResult {
  const S = p.inputIds.length;
  const cache = model.createCache({ capacity: S + 1 });
  try {
    const r = model.forward(p.inputsEmbeds, { positions: p.positions, cache, logits: 'last' });
    r.lastHiddenState.dispose();
    const kv = tf.tidy(() =>
      model.layers.map((_, l) => {
        const buf = cache.buffers(l);
        const size: [number, number, number] = [buf.k.shape[0], S, buf.k.shape[2]];
        const k = tf.transpose(tf.slice(buf.k, [0, 0, 0], size), [0, 2, 1]); // keys are kept transposed (see KV)
        return { k: tf.expandDims(k, 0) as tf.Tensor4D, v: tf.expandDims(tf.slice(buf.v, [0, 0, 0], size), 0) as tf.Tensor4D };
      }),
    );
    return { logits: r.logits!, kv, mask: tf.zeros([1, 1, 1, S]) as tf.Tensor4D };
  } finally {
    cache.dispose();
  }
}

/** Stacks prefill groups into one batch: K/V and masks left-padded (and masked) to the longest group. */
function joinGroups(parts: readonly PrefillResult[]): PrefillResult {
  return tf.tidy(() => {
    const S = Math.max(...parts.map((p) => p.mask.shape[3]));
    // Keys [B, Hkv, D, S] pad along axis 3, values [B, Hkv, S, D] along axis 2.
    const padK = (t: tf.Tensor4D) => (t.shape[3] < S ? tf.concat([tf.zeros([t.shape[0], t.shape[1], t.shape[2], S - t.shape[3]]), t], 3) : t);
    const padV = (t: tf.Tensor4D) => (t.shape[2] < S ? tf.concat([tf.zeros([t.shape[0], t.shape[1], S - t.shape[2], t.shape[3]]), t], 2) : t);
    const padMask = (m: tf.Tensor4D) => (m.shape[3] < S ? tf.concat([tf.fill([m.shape[0], 1, 1, S - m.shape[3]], NEG), m], 3) : m);
    const layers = parts[0].kv.length;
    const kv = Array.from({ length: layers }, (_, l) => ({
      k: (parts.length === 1 ? tf.clone(parts[0].kv[l].k) : tf.concat(parts.map((p) => padK(p.kv[l].k)), 0)) as tf.Tensor4D,
      v: (parts.length === 1 ? tf.clone(parts[0].kv[l].v) : tf.concat(parts.map((p) => padV(p.kv[l].v)), 0)) as tf.Tensor4D,
    }));
    const mask = (parts.length === 1 ? tf.clone(parts[0].mask) : tf.concat(parts.map((p) => padMask(p.mask)), 0)) as tf.Tensor4D;
    const logits = (parts.length === 1 ? tf.clone(parts[0].logits) : tf.concat(parts.map((p) => p.logits), 0)) as tf.Tensor2D;
    return { kv, mask, logits };
  });
}

/**
 * The prefill of every prompt in one forward: rows left-padded to the longest prompt (zero embeddings at position 0),
 * attention causal within each prompt and blind to its padding. Returns the logits of each prompt's last row
 * [B, vocab], the per-layer K/V [B, kv_heads, Smax, head_dim] and the decode mask [B, 1, 1, Smax] of the padding.
 */
function prefillStep(model: TextModel, prompts: readonly BatchPrompt[]): PrefillResult {
  const c = model.config;
  const B = prompts.length;
  const hidden = model.hidden;
  const lengths = prompts.map((p) => p.inputIds.length);
  const S = Math.max(...lengths);
  const N = B * S;
  const pads = lengths.map((n) => S - n);
  const pos = [0, 1, 2].map((axis) => {
    const a = new Float32Array(N);
    prompts.forEach((p, b) => a.set(Array.from(p.positions[axis]), b * S + pads[b]));
    return a;
  }) as unknown as MropePositions;
  // Query i of prompt b sees keys pads[b]..i; a padding query sees none (its row is never read). One [S, S] mask per
  // distinct padding (prompts of the same length share one).
  const maskOf = new Map<number, Float32Array>();
  for (const pad of pads) {
    if (maskOf.has(pad)) continue;
    const m = new Float32Array(S * S).fill(NEG);
    for (let i = pad; i < S; i++) m.fill(0, i * S + pad, i * S + i + 1);
    maskOf.set(pad, m);
  }
  const decodeMask = new Float32Array(B * S);
  pads.forEach((pad, b) => decodeMask.fill(NEG, b * S, b * S + pad));
  return tf.tidy(() => {
    const section = c.rope.mropeSection;
    const tables = section ? mropeTables(pos, c.head_dim, c.rope.theta, section, c.rope.interleaved) : ropeTables(pos[0], c.head_dim, c.rope.theta);
    const [cos, sin] = ropeTensors(tables); // [N, 1, head_dim]
    const byPad = new Map([...maskOf].map(([pad, m]) => [pad, tf.tensor2d(m, [S, S])]));
    const masks = pads.map((pad) => byPad.get(pad)!); // [S, S] per prompt
    let h = tf.concat(prompts.map((p, b) => (pads[b] ? tf.concat([tf.zeros([pads[b], hidden]), p.inputsEmbeds], 0) : p.inputsEmbeds)), 0) as tf.Tensor2D;
    const kv: KV = [];
    for (const layer of model.layers) {
      const a = layer.self_attn;
      const { numHeads: H, numKvHeads: Hkv, headDim: D } = a;
      const xn = rmsNorm(h, layer.input_layernorm) as tf.Tensor2D;
      const q = applyRope(rmsNorm(tf.reshape(linear(xn, a.q_proj!), [N, H, D]), a.q_norm), cos, sin);
      const k = applyRope(rmsNorm(tf.reshape(linear(xn, a.k_proj!), [N, Hkv, D]), a.k_norm), cos, sin);
      const v = tf.reshape(linear(xn, a.v_proj!), [N, Hkv, D]);
      const Kt = tf.keep(tf.transpose(tf.reshape(k, [B, S, Hkv, D]), [0, 2, 3, 1]) as tf.Tensor4D); // [B, Hkv, D, S]
      const Vv = tf.keep(tf.transpose(tf.reshape(v, [B, S, Hkv, D]), [0, 2, 1, 3]) as tf.Tensor4D);
      kv.push({ k: Kt, v: Vv });
      // Attention as one 2-D matmul pair per (prompt, KV head): the wasm backend runs batched (rank > 2) matmuls in a
      // naive loop some 20x slower than its 2-D kernel. Head h reads KV head floor(h / groups), so the `groups`
      // query heads of a KV head are stacked as rows [groups·S, D].
      const qs = tf.unstack(tf.reshape(tf.transpose(tf.reshape(tf.mul(q, 1 / Math.sqrt(D)), [B, S, H, D]), [0, 2, 1, 3]), [B * Hkv, (H / Hkv) * S, D]));
      const ks = tf.unstack(tf.reshape(Kt, [B * Hkv, D, S]));
      const vs = tf.unstack(tf.reshape(Vv, [B * Hkv, S, D]));
      const ctx = qs.map((qh, i) => {
        const scores = tf.reshape(tf.add(tf.reshape(tf.matMul(qh, ks[i]), [H / Hkv, S, S]), masks[Math.floor(i / Hkv)]), [(H / Hkv) * S, S]);
        return tf.matMul(tf.softmax(scores, -1), vs[i]); // [groups·S, D]
      });
      const merged = tf.reshape(tf.transpose(tf.reshape(tf.stack(ctx), [B, H, S, D]), [0, 2, 1, 3]), [N, H * D]);
      const r = tf.add(h, linear(merged, a.o_proj)) as tf.Tensor2D;
      const x2 = rmsNorm(r, layer.post_attention_layernorm) as tf.Tensor2D;
      h = tf.add(r, 'router' in layer.mlp ? sparseMoe(x2, layer.mlp).output : swiGlu(x2, layer.mlp)) as tf.Tensor2D;
    }
    const lastRows = tf.gather(h, tf.tensor1d(prompts.map((_, b) => b * S + S - 1), 'int32'));
    const logits = linear(rmsNorm(lastRows, model.norm), model.lmHead!) as tf.Tensor2D;
    return { logits, kv, mask: tf.tensor4d(decodeMask, [B, 1, 1, S]) as tf.Tensor4D };
  });
}

/** One decode step over B rows: returns logits [B, vocab], the caches with the new column, and the widened mask. */
function decodeStep(model: TextModel, ids: number[], positions: number[], kv: KV, mask: tf.Tensor4D) {
  const c = model.config;
  const B = ids.length;
  const x0 = model.embed(ids);
  try {
    return tf.tidy(() => {
      const section = c.rope.mropeSection;
      const tables = section ? mropeTables([positions, positions, positions], c.head_dim, c.rope.theta, section, c.rope.interleaved) : ropeTables(positions, c.head_dim, c.rope.theta);
      const [cos, sin] = ropeTensors(tables); // [B, 1, head_dim]: one position per row
      const nextMask = tf.concat([mask, tf.zeros([B, 1, 1, 1])], 3) as tf.Tensor4D;
      const next: KV = [];
      let h = x0 as tf.Tensor2D;
      model.layers.forEach((layer, l) => {
        const a = layer.self_attn;
        const { numHeads: H, numKvHeads: Hkv, headDim: D } = a;
        const groups = H / Hkv;
        const xn = rmsNorm(h, layer.input_layernorm) as tf.Tensor2D;
        const q = applyRope(rmsNorm(tf.reshape(linear(xn, a.q_proj!), [B, H, D]), a.q_norm), cos, sin);
        const k = applyRope(rmsNorm(tf.reshape(linear(xn, a.k_proj!), [B, Hkv, D]), a.k_norm), cos, sin);
        const v = tf.reshape(linear(xn, a.v_proj!), [B, Hkv, D]);
        const Kt = tf.keep(tf.concat([kv[l].k, tf.reshape(k, [B, Hkv, D, 1])], 3) as tf.Tensor4D);
        const Vv = tf.keep(tf.concat([kv[l].v, tf.reshape(v, [B, Hkv, 1, D])], 2) as tf.Tensor4D);
        next.push({ k: Kt, v: Vv });
        // Head h reads KV head floor(h / groups): [B, H, D] -> [B, Hkv, groups, D].
        const qg = tf.reshape(tf.mul(q, 1 / Math.sqrt(D)), [B, Hkv, groups, D]);
        const scores = tf.add(tf.matMul(qg, Kt), nextMask); // [B, Hkv, groups, T]
        const ctx = tf.matMul(tf.softmax(scores, -1), Vv); // [B, Hkv, groups, D]
        const attn = linear(tf.reshape(ctx, [B, H * D]), a.o_proj) as tf.Tensor2D;
        const r = tf.add(h, attn) as tf.Tensor2D;
        const x2 = rmsNorm(r, layer.post_attention_layernorm) as tf.Tensor2D;
        const m = 'router' in layer.mlp ? sparseMoe(x2, layer.mlp).output : swiGlu(x2, layer.mlp);
        h = tf.add(r, m) as tf.Tensor2D;
      });
      const logits = linear(rmsNorm(h, model.norm), model.lmHead!) as tf.Tensor2D;
      return { logits, next, nextMask };
    });
  } finally {
    x0.dispose();
  }
}

function disposeKV(list: ReadonlyArray<{ k: tf.Tensor; v: tf.Tensor }>): void {
  for (const t of list) {
    t.k.dispose();
    t.v.dispose();
  }
}

/**
 * Lets the event loop run between forwards (a few µs when nothing is pending): an abort can land, and I/O waiting on
 * this thread goes on while a batch generates — caption jobs' ffmpeg decoders are paused until their pipes are read,
 * so without this the next files would only decode while the model sits idle between batches.
 */
async function betweenSteps(signal: AbortSignal | undefined): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  if (signal?.aborted) throw signal.reason ?? new DOMException('generation aborted', 'AbortError');
}
