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
  /** Ids that end a sequence; the stop token is not returned. */
  readonly stopTokens: readonly number[];
  readonly signal?: AbortSignal;
}

export interface GenerateBatchStats {
  /** Decode steps run for the whole batch (each one forward over every unfinished sequence). */
  readonly decodeSteps: number;
}

const NEG = -3.4028234663852886e38; // float32 minimum, as the reference masks: exp() of it is exactly 0

/**
 * Generates for many prompts at once. Each prompt is prefilled on its own (prompts differ in length), then every
 * decode step runs ONE forward over all unfinished sequences: the new rows go through projections, norms, MoE and
 * the head as one [B, hidden] matrix, and attention reads a shared left-padded KV cache [B, kv_heads, T, head_dim]
 * with the padding masked out. On the wasm backend a decode step costs about the same for 1 row or 16 (per-op
 * overhead dominates), which is where batching captions across files gains its speed. Per-row maths is the same as
 * `generate`, so greedy results match it token for token.
 *
 * ```ts
 * const tokens = await generateBatch(model.thinker, prompts, { maxNewTokens: 64, stopTokens: tokenizer.stopTokenIds });
 * ```
 */
export async function generateBatch(model: TextModel, prompts: readonly BatchPrompt[], options: GenerateBatchOptions, stats?: { decodeSteps: number }): Promise<number[][]> {
  const { maxNewTokens } = options;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new Error(`generateBatch: maxNewTokens must be a positive integer, got ${maxNewTokens}`);
  const stops = new Set(options.stopTokens);
  const c = model.config;
  const nLayers = model.layers.length;
  const out: number[][] = prompts.map(() => []);
  const history = prompts.map((p) => [...p.inputIds]);
  const lengths = prompts.map((p) => p.inputIds.length);
  prompts.forEach((p, b) => {
    if (p.inputsEmbeds.shape[0] !== p.inputIds.length) throw new Error(`generateBatch: prompt ${b} has ${p.inputsEmbeds.shape[0]} embedding rows for ${p.inputIds.length} ids`);
  });

  // Prefill one by one; keep each sequence's per-layer K/V [kvHeads, S, headDim].
  const prefillKV: Array<Array<{ k: tf.Tensor3D; v: tf.Tensor3D }>> = [];
  let kv: Array<{ k: tf.Tensor4D; v: tf.Tensor4D }> = [];
  let mask: tf.Tensor4D | undefined;
  try {
    const active: number[] = [];
    for (let b = 0; b < prompts.length; b++) {
      await betweenSteps(options.signal);
      const p = prompts[b];
      const cache = model.createCache({ capacity: p.inputIds.length + 1 });
      try {
        const r = model.forward(p.inputsEmbeds, { positions: p.positions, cache, logits: 'last' });
        const logits = r.logits!.dataSync() as Float32Array;
        r.logits!.dispose();
        r.lastHiddenState.dispose();
        const token = p.sampler.sample(logits, history[b]);
        history[b].push(token);
        if (!stops.has(token)) out[b].push(token);
        if (!stops.has(token) && maxNewTokens > 1) active.push(b);
        prefillKV.push(
          Array.from({ length: nLayers }, (_, l) => {
            const buf = cache.buffers(l);
            const size: [number, number, number] = [buf.k.shape[0], p.inputIds.length, buf.k.shape[2]];
            return { k: tf.slice(buf.k, [0, 0, 0], size), v: tf.slice(buf.v, [0, 0, 0], size) };
          }),
        );
      } finally {
        cache.dispose();
      }
    }
    if (active.length === 0) return out;

    // Left-pad every active prompt to the longest, so the generated tokens share cache columns.
    const pMax = Math.max(...active.map((b) => lengths[b]));
    kv = Array.from({ length: nLayers }, (_, l) =>
      tf.tidy(() => {
        const pad = (t: tf.Tensor3D, n: number) => (n > 0 ? tf.concat([tf.zeros([t.shape[0], n, t.shape[2]]), t], 1) : t);
        return {
          k: tf.stack(active.map((b) => pad(prefillKV[b][l].k, pMax - lengths[b]))) as tf.Tensor4D,
          v: tf.stack(active.map((b) => pad(prefillKV[b][l].v, pMax - lengths[b]))) as tf.Tensor4D,
        };
      }),
    );
    const bias = new Float32Array(active.length * pMax);
    active.forEach((b, i) => bias.fill(NEG, i * pMax, i * pMax + pMax - lengths[b]));
    mask = tf.tensor4d(bias, [active.length, 1, 1, pMax]);
    for (const layers of prefillKV) disposeKV(layers);
    prefillKV.length = 0;

    let rows = active;
    for (let step = 1; step < maxNewTokens && rows.length > 0; step++) {
      await betweenSteps(options.signal);
      const ids = rows.map((b) => out[b][out[b].length - 1]);
      // The token fed now sits at cache position prompt length + step - 1.
      const positions = rows.map((b) => lengths[b] + step - 1 + prompts[b].ropeDelta);
      const { logits, next, nextMask } = decodeStep(model, ids, positions, kv, mask!);
      disposeKV(kv);
      mask!.dispose();
      kv = next;
      mask = nextMask;
      const V = c.vocab_size;
      const all = logits.dataSync() as Float32Array;
      logits.dispose();
      const keep: number[] = [];
      rows.forEach((b, i) => {
        const token = prompts[b].sampler.sample(all.subarray(i * V, (i + 1) * V), history[b]);
        history[b].push(token);
        if (stops.has(token)) return;
        out[b].push(token);
        if (out[b].length < maxNewTokens) keep.push(i);
      });
      if (stats) stats.decodeSteps += 1;
      if (keep.length < rows.length && keep.length > 0) {
        // Drop finished sequences from the batch so later steps do not compute them.
        const idx = tf.tensor1d(keep, 'int32');
        const compact = kv.map((t) => ({ k: tf.gather(t.k, idx) as tf.Tensor4D, v: tf.gather(t.v, idx) as tf.Tensor4D }));
        const compactMask = tf.gather(mask, idx) as tf.Tensor4D;
        idx.dispose();
        disposeKV(kv);
        mask.dispose();
        kv = compact;
        mask = compactMask;
      }
      rows = keep.map((i) => rows[i]);
    }
    return out;
  } finally {
    for (const layers of prefillKV) disposeKV(layers);
    disposeKV(kv);
    mask?.dispose();
  }
}

/** One decode step over B rows: returns logits [B, vocab], the caches with the new column, and the widened mask. */
function decodeStep(model: TextModel, ids: number[], positions: number[], kv: ReadonlyArray<{ k: tf.Tensor4D; v: tf.Tensor4D }>, mask: tf.Tensor4D) {
  const c = model.config;
  const B = ids.length;
  const x0 = model.embed(ids);
  try {
    return tf.tidy(() => {
      const section = c.rope.mropeSection;
      const tables = section ? mropeTables([positions, positions, positions], c.head_dim, c.rope.theta, section, c.rope.interleaved) : ropeTables(positions, c.head_dim, c.rope.theta);
      const [cos, sin] = ropeTensors(tables); // [B, 1, head_dim]: one position per row
      const nextMask = tf.concat([mask, tf.zeros([B, 1, 1, 1])], 3) as tf.Tensor4D;
      const next: Array<{ k: tf.Tensor4D; v: tf.Tensor4D }> = [];
      let h = x0 as tf.Tensor2D;
      model.layers.forEach((layer, l) => {
        const a = layer.self_attn;
        const { numHeads: H, numKvHeads: Hkv, headDim: D } = a;
        const groups = H / Hkv;
        const xn = rmsNorm(h, layer.input_layernorm) as tf.Tensor2D;
        const q = applyRope(rmsNorm(tf.reshape(linear(xn, a.q_proj), [B, H, D]), a.q_norm), cos, sin);
        const k = applyRope(rmsNorm(tf.reshape(linear(xn, a.k_proj), [B, Hkv, D]), a.k_norm), cos, sin);
        const v = tf.reshape(linear(xn, a.v_proj), [B, Hkv, D]);
        const K = tf.keep(tf.concat([kv[l].k, tf.reshape(k, [B, Hkv, 1, D])], 2) as tf.Tensor4D);
        const Vv = tf.keep(tf.concat([kv[l].v, tf.reshape(v, [B, Hkv, 1, D])], 2) as tf.Tensor4D);
        next.push({ k: K, v: Vv });
        // Head h reads KV head floor(h / groups): [B, H, D] -> [B, Hkv, groups, D].
        const qg = tf.reshape(tf.mul(q, 1 / Math.sqrt(D)), [B, Hkv, groups, D]);
        const scores = tf.add(tf.matMul(qg, K, false, true), nextMask); // [B, Hkv, groups, T]
        const ctx = tf.matMul(tf.softmax(scores, -1), Vv); // [B, Hkv, groups, D]
        const attn = linear(tf.reshape(ctx, [B, H * D]), a.o_proj) as tf.Tensor2D;
        const r = tf.add(h, attn) as tf.Tensor2D;
        const x2 = rmsNorm(r, layer.post_attention_layernorm) as tf.Tensor2D;
        const m = 'router' in layer.mlp ? sparseMoe(x2, layer.mlp).output : swiGlu(x2, layer.mlp);
        h = tf.add(r, m) as tf.Tensor2D;
      });
      if (!model.lmHead) throw new Error('generateBatch: the text model was loaded without an lm_head');
      const logits = linear(rmsNorm(h, model.norm), model.lmHead) as tf.Tensor2D;
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

async function betweenSteps(signal: AbortSignal | undefined): Promise<void> {
  if (signal) await new Promise<void>((resolve) => setImmediate(resolve));
  if (signal?.aborted) throw signal.reason ?? new DOMException('generation aborted', 'AbortError');
}
