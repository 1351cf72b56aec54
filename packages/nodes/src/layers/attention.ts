import * as tf from '@tensorflow/tfjs-core';
import type { KVCache } from '@omniflow/runtime-gpu';
import { disposeLinear, linear, loadLinear, type Linear, type WeightDtype, type WeightSource } from './linear.js';
import { loadFusedLinear } from './fused-linear.js';
import { loadRMSNorm, type RMSNorm } from './rms-norm.js';
import { normRope, qkvNormRope } from './norm-rope.js';
import { decodeAttention, decodeAttentionApplies } from './decode-attention.js';

/**
 * Decoder self-attention of the Qwen3 family (thinker, talker, code predictor; spec 3.4): q/k/v/o projections without
 * bias, per-head RMSNorm `q_norm`/`k_norm` over head_dim applied BEFORE RoPE, grouped-query attention (head h reads
 * KV head floor(h / groups)), scaling head_dim^-0.5, causal, float32 softmax.
 *
 * The q/k/v projections are either three Linears (`q_proj`, `k_proj`, `v_proj`: trainable, what the captioner and
 * its training read) or, loaded with `fuseQkv`, one Linear `qkv_proj` whose output row is [q | k | v]: a decode step
 * then reads the three matrices in one kernel call and splits, normalises and rotates them in one more
 * (qkvNormRope). Inference only.
 */
export interface DecoderAttention {
  /** Absent when fused into qkv_proj (likewise k_proj, v_proj). */
  readonly q_proj?: Linear;
  readonly k_proj?: Linear;
  readonly v_proj?: Linear;
  /** [hidden, (heads + 2·kvHeads)·head_dim]: q_proj, k_proj, v_proj side by side (loaded with `fuseQkv`). */
  readonly qkv_proj?: Linear;
  readonly o_proj: Linear;
  readonly q_norm: RMSNorm;
  readonly k_norm: RMSNorm;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
}

export interface DecoderAttentionSizes {
  hidden: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  attentionBias?: boolean;
  /** Format of the q/k/v/o weights (default float32); the norms stay float32. */
  weights?: WeightDtype;
  /** Load q/k/v as one fused `qkv_proj` (fewer kernels per decode step; inference only). Default false. */
  fuseQkv?: boolean;
}

/**
 * Loads `${prefix}.{q,k,v,o}_proj` and `${prefix}.{q,k}_norm`.
 *
 * ```ts
 * const attn = loadDecoderAttention(ckpt, 'thinker.model.layers.0.self_attn', { hidden: 2048, numHeads: 32, numKvHeads: 4, headDim: 128, rmsNormEps: 1e-6 });
 * const y = decoderAttention(x, attn, cos, sin, { cache, layer: 0 }); // x [S, 2048]
 * ```
 */
export function loadDecoderAttention(ckpt: WeightSource, prefix: string, s: DecoderAttentionSizes): DecoderAttention {
  if (s.numHeads % s.numKvHeads !== 0) throw new Error(`${prefix}: num_attention_heads ${s.numHeads} is not a multiple of num_key_value_heads ${s.numKvHeads}`);
  const bias = s.attentionBias ?? false, f = s.weights;
  const qOut = s.numHeads * s.headDim, kvOut = s.numKvHeads * s.headDim;
  const projections = s.fuseQkv
    ? { qkv_proj: loadFusedLinear(ckpt, ['q_proj', 'k_proj', 'v_proj'].map((n) => `${prefix}.${n}`), s.hidden, [qOut, kvOut, kvOut], bias, f) }
    : {
      q_proj: loadLinear(ckpt, `${prefix}.q_proj`, s.hidden, qOut, bias, f),
      k_proj: loadLinear(ckpt, `${prefix}.k_proj`, s.hidden, kvOut, bias, f),
      v_proj: loadLinear(ckpt, `${prefix}.v_proj`, s.hidden, kvOut, bias, f),
    };
  return {
    ...projections,
    o_proj: loadLinear(ckpt, `${prefix}.o_proj`, s.numHeads * s.headDim, s.hidden, bias, f),
    q_norm: loadRMSNorm(ckpt, `${prefix}.q_norm.weight`, s.headDim, s.rmsNormEps),
    k_norm: loadRMSNorm(ckpt, `${prefix}.k_norm.weight`, s.headDim, s.rmsNormEps),
    numHeads: s.numHeads,
    numKvHeads: s.numKvHeads,
    headDim: s.headDim,
  };
}

/**
 * `${prefix}.{q,k,v}_proj` as one Linear [hidden, q + k + v], assembled on the host (one device tensor, packed in the
 * requested format after the columns are joined).
 */
/**
 * Prefill blocks up to this many multiply-adds per attention product (KV heads × query rows × positions × head_dim)
 * also take the batched path that every single-row decode step takes. Measured on wasm (CPU time per call): a decode
 * step is 25-30% cheaper batched at 10 to 2000 cached positions (no per-head unstack copies of the cache, no K
 * transposes); a 16-row prefill over 100 positions is 40% dearer (tfjs-wasm's batched transposed matMul is a scalar
 * loop). Mutable for A/B measurements only.
 */
export let BATCHED_ATTENTION_MAX_MACS = 1 << 18;
/** Sets {@link BATCHED_ATTENTION_MAX_MACS}; a negative value turns the batched path off even for decode steps. */
export function setBatchedAttentionMaxMacs(n: number): void {
  BATCHED_ATTENTION_MAX_MACS = n;
}

let decodeKernel = true;
/**
 * Turns the SIMD decode-attention kernel (decodeAttention: cache read in place, for up to 4 new positions on wasm) off
 * or back on (the default). For A/B measurements only.
 */
export function useDecodeAttentionKernel(enabled: boolean): void {
  decodeKernel = enabled;
}

/** Where a layer keeps its keys and values across calls. */
export interface AttentionCacheSlot {
  cache: KVCache;
  layer: number;
}

/**
 * Attention over `x` ([S, hidden], the S newest positions). `cos`/`sin` are `[S, 1, headDim]` for those positions. With
 * a cache slot, the new keys/values are appended and the queries attend to every cached position (query i sits at
 * cache position past + i and sees keys up to and including it); without one, plain causal attention over x.
 *
 * `segments` (no cache; training) packs independent sequences into x: their lengths in order, summing to S. Each row
 * then sees only the earlier rows of its own sequence, so one call computes what one call per sequence would.
 *
 * ```ts
 * const [cos, sin] = ropeTensors(mropeTables([t, h, w], 128, 1e6, [24, 20, 20], true));
 * const y = decoderAttention(x, attn, cos, sin, { cache, layer: 0 }); // x [S, hidden] -> [S, hidden]
 * ```
 */
export function decoderAttention(x: tf.Tensor2D, attn: DecoderAttention, cos: tf.Tensor, sin: tf.Tensor, slot?: AttentionCacheSlot, segments?: readonly number[]): tf.Tensor2D {
  const { numHeads: H, numKvHeads: Hkv, headDim: D } = attn;
  const groups = H / Hkv;
  const S = x.shape[0];
  if (segments) checkSegments(segments, S, slot);
  return tf.tidy(() => {
    // [S, heads, D] <-> [heads, S, D]: for one row (a decode step) the same memory, so a reshape instead of a copy.
    const swap01 = (t: tf.Tensor) => (S === 1 ? tf.reshape(t, [t.shape[1]!, t.shape[0]!, D]) : tf.transpose(t, [1, 0, 2]));
    // Head-major q [H, S, D], k and v [Hkv, S, D]; q carries the 1/√head_dim score scale from its norm on (RoPE is linear).
    const { q, k: kNew, v: vNew } = attn.qkv_proj
      ? qkvNormRope(linear(x, attn.qkv_proj) as tf.Tensor2D, attn.q_norm, attn.k_norm, { cos, sin }, H, Hkv, 1 / Math.sqrt(D))
      : {
        q: swap01(normRope(tf.reshape(linear(x, attn.q_proj!), [S, H, D]), attn.q_norm, { cos, sin }, 1 / Math.sqrt(D))) as tf.Tensor3D,
        k: swap01(normRope(tf.reshape(linear(x, attn.k_proj!), [S, Hkv, D]), attn.k_norm, { cos, sin })) as tf.Tensor3D,
        v: swap01(tf.reshape(linear(x, attn.v_proj!), [S, Hkv, D])) as tf.Tensor3D,
      };
    let merged: tf.Tensor2D; // [S, H·D]: the heads side by side per position
    if (slot && decodeKernel && decodeAttentionApplies(S, D)) {
      // Decode steps (inference: always with a cache): the cache's buffers read in place by the SIMD kernel, no copy
      // of the live prefix; it writes the heads side by side.
      const b = slot.cache.appendInPlace(slot.layer, kNew, vNew);
      merged = decodeAttention(q, b.k, b.v, b.length);
    } else {
      // [H, S, D] -> [Hkv, groups·S, D]: the queries of one KV group become the rows of one matrix.
      const out = attendOps(tf.reshape(q, [Hkv, groups * S, D]) as tf.Tensor3D, kNew, vNew, S, groups, slot, segments);
      merged = tf.reshape(swap01(tf.reshape(out, [H, S, D])), [S, H * D]) as tf.Tensor2D;
    }
    return linear(merged, attn.o_proj) as tf.Tensor2D;
  });
}

/** decoderAttention's products as tfjs ops (any backend; training; long blocks): [Hkv, groups·S, D]. */
function attendOps(qg: tf.Tensor3D, kNew: tf.Tensor3D, vNew: tf.Tensor3D, S: number, groups: number, slot?: AttentionCacheSlot, segments?: readonly number[]): tf.Tensor {
  const [Hkv, , D] = qg.shape;
  let k: tf.Tensor3D = kNew, v: tf.Tensor3D = vNew;
  if (slot) ({ k, v } = slot.cache.append(slot.layer, kNew, vNew));
  const T = k.shape[1];
  const past = T - S;
  const mask = segments && segments.length > 1 ? segmentMask(segments) : S > 1 ? causalMask(S, T, past) : undefined;
  let out: tf.Tensor;
  if ((S === 1 && BATCHED_ATTENTION_MAX_MACS >= 0) || Hkv * groups * S * T * D <= BATCHED_ATTENTION_MAX_MACS) {
    // Decode steps and small blocks: one batched matMul for the scores (K read transposed in place) and one for the
    // values, instead of unstacking the whole cache per head (see BATCHED_ATTENTION_MAX_MACS).
    let scores: tf.Tensor = tf.matMul(qg, k, false, true); // [Hkv, groups·S, T]
    if (mask) scores = tf.reshape(tf.add(tf.reshape(scores, [Hkv, groups, S, T]), mask), [Hkv, groups * S, T]);
    out = tf.matMul(tf.softmax(scores, -1), v);
  } else {
    // One plain 2-D matmul pair per KV head rather than a batched matmul: on wasm only 2-D, untransposed products
    // reach XNNPACK's GEMM (a batched or transposed one runs a scalar loop, ~7x slower here), so K is transposed
    // explicitly (a [T, D] copy, small next to the weights a step reads).
    const qs = tf.unstack(qg), ks = tf.unstack(k), vs = tf.unstack(v);
    const heads = qs.map((qh, h) => {
      let scores: tf.Tensor = tf.matMul(qh as tf.Tensor2D, tf.transpose(ks[h]!) as tf.Tensor2D); // [groups·S, T]
      // The [S, T] mask broadcasts over the query groups.
      if (mask) scores = tf.reshape(tf.add(tf.reshape(scores, [groups, S, T]), mask), [groups * S, T]);
      return tf.matMul(tf.softmax(scores, -1) as tf.Tensor2D, vs[h] as tf.Tensor2D); // [groups·S, D]
    });
    out = tf.stack(heads);
  }
  return out;
}

/**
 * Additive causal mask `[S, T]`: query i (at position past + i) sees keys 0..past + i. Masked entries get the float32
 * minimum, like the reference (finfo.min); exp() of it underflows to exactly 0.
 */
function causalMask(S: number, T: number, past: number): tf.Tensor2D {
  const m = new Float32Array(S * T);
  const neg = -3.4028234663852886e38;
  for (let i = 0; i < S; i++) m.fill(neg, i * T + past + i + 1, (i + 1) * T);
  return tf.tensor2d(m, [S, T]);
}

/** Additive block-diagonal causal mask `[S, S]` for packed sequences: row i sees its own sequence's rows up to i. */
function segmentMask(segments: readonly number[]): tf.Tensor2D {
  const S = segments.reduce((a, n) => a + n, 0);
  const m = new Float32Array(S * S).fill(-3.4028234663852886e38);
  let start = 0;
  for (const n of segments) {
    for (let i = start; i < start + n; i++) m.fill(0, i * S + start, i * S + i + 1);
    start += n;
  }
  return tf.tensor2d(m, [S, S]);
}

function checkSegments(segments: readonly number[], S: number, slot: AttentionCacheSlot | undefined): void {
  if (slot) throw new Error('decoderAttention: packed sequences (segments) take no KV cache');
  if (segments.some((n) => !Number.isInteger(n) || n <= 0)) throw new Error(`decoderAttention: segment lengths must be positive integers, got [${segments.join(', ')}]`);
  const total = segments.reduce((a, n) => a + n, 0);
  if (total !== S) throw new Error(`decoderAttention: segments [${segments.join(', ')}] cover ${total} rows, x has ${S}`);
}

export function disposeDecoderAttention(a: DecoderAttention): void {
  for (const l of [a.q_proj, a.k_proj, a.v_proj, a.qkv_proj, a.o_proj]) if (l) disposeLinear(l);
  a.q_norm.weight.dispose();
  a.k_norm.weight.dispose();
}
