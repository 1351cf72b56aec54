import * as tf from '@tensorflow/tfjs-core';
import { KVCache } from '@omniflow/runtime-gpu';
import { decoderAttention, disposeDecoderAttention, loadDecoderAttention, type DecoderAttention } from '../../layers/attention.js';
import { disposeLinear, linear, loadLinear, type Linear, type WeightDtype, type WeightSource } from '../../layers/linear.js';
import { disposeSwiGluMlp, loadSwiGluMlp, swiGlu, type SwiGluMlp } from '../../layers/mlp.js';
import { disposeSparseMoe, loadSparseMoe, sparseMoe, type SparseMoe } from '../../layers/moe.js';
import { mropeTables, type MropePositions } from '../../layers/mrope.js';
import { loadRMSNorm, type RMSNorm } from '../../layers/rms-norm.js';
import { normRope } from '../../layers/norm-rope.js';
import { ropeTables, ropeTensors } from '../../layers/rope.js';
import type { ThinkerTextConfig } from './config.js';

/** One decoder layer, named as in the checkpoint (`layers.N.input_layernorm`, `self_attn`, …, `mlp`). */
export interface TextDecoderLayer {
  readonly input_layernorm: RMSNorm;
  readonly self_attn: DecoderAttention;
  readonly post_attention_layernorm: RMSNorm;
  /** A sparse MoE block, or a dense SwiGLU for layers in mlp_only_layers / off the decoder_sparse_step. */
  readonly mlp: SparseMoe | SwiGluMlp;
}

/** Checkpoint keys of a text model; the thinker's by default, the talker passes its own. */
export interface TextModelKeys {
  /** Prefix of the decoder (`thinker.model`): layers.N.*, norm. */
  model: string;
  /** Token embedding module (`thinker.model.embed_tokens`; its `.weight` is [vocab, hidden]). */
  embed: string;
  /** Output head Linear (`thinker.lm_head`; `.weight` [vocab, hidden]); absent: no logits (hidden states only). */
  lmHead?: string;
}

export const THINKER_TEXT_KEYS: TextModelKeys = {
  model: 'thinker.model',
  embed: 'thinker.model.embed_tokens',
  lmHead: 'thinker.lm_head',
};

/** How TextModel.load keeps the weights. */
export interface TextModelLoadOptions {
  /** Matmul weight format (default float32; see WeightDtype). */
  weights?: WeightDtype;
  /** One fused q/k/v matrix per layer (DecoderAttention.qkv_proj); default false (separate, trainable). */
  fuseQkv?: boolean;
}

/** Rows spliced over placeholder tokens: the i-th `tokenId` in sequence order receives row i of `rows`. */
export interface EmbeddingSplice {
  tokenId: number;
  rows: tf.Tensor2D;
  /** Named in errors, e.g. 'audio'. */
  name?: string;
}

/** DeepStack features added after the first layers at visual positions (spec 3.4). */
export interface DeepStackInput {
  /** Row indices (within this call's rows) of the image and video placeholders, ascending. */
  positions: readonly number[];
  /** features[i] ([positions.length, hidden]) is added after decoder layer i. */
  features: readonly tf.Tensor2D[];
}

export interface TextForwardOptions {
  /** Positions of the rows: three axes (t, h, w) for MRoPE, or one row for plain RoPE. */
  positions: MropePositions | ArrayLike<number>;
  /** KV cache; the rows are appended after what it holds. Absent: a standalone causal forward. */
  cache?: KVCache;
  deepstack?: DeepStackInput;
  /**
   * Hidden states to return, by transformers' output_hidden_states index: 0 = the inputs, k (1 ≤ k < layers) =
   * output of decoder layer k-1 before its DeepStack addition, `layers` = the final norm output.
   */
  hiddenStates?: readonly number[];
  /** Which rows get logits: 'last' (default; generation), 'all', or 'none'. */
  logits?: 'last' | 'all' | 'none';
  /** Training: MoE combine weights computed on the device so the routers get gradients (see sparseMoe). */
  differentiableRouting?: boolean;
  /**
   * Packed sequences (no cache; training): the lengths of independent sequences laid end to end in the rows, each
   * attending only to itself (see decoderAttention). Positions are each sequence's own.
   */
  segments?: readonly number[];
}

export interface TextForwardResult {
  /** [S, vocab] or [1, vocab] per `logits`. Owned by the caller. */
  logits?: tf.Tensor2D;
  /** Final-norm output [S, hidden]. Owned by the caller. */
  lastHiddenState: tf.Tensor2D;
  /** Requested hidden states [S, hidden] each, by index. Owned by the caller. */
  hiddenStates: Map<number, tf.Tensor2D>;
}

/**
 * The Qwen3-Omni MoE text decoder and its head (`thinker.model` + `thinker.lm_head`, spec 3.4): token embedding with
 * multimodal rows spliced in, N decoder layers (RMSNorm → q/k-normed GQA attention with interleaved MRoPE → RMSNorm →
 * sparse MoE), DeepStack additions, final RMSNorm, lm_head. Batch 1.
 *
 * The embedding table stays in host memory (a row copy per token): on the wasm backend device memory is the 4 GiB
 * wasm heap, and the table (152064 × 2048 f32 = 1.2 GB for the release) is only ever read row by row.
 *
 * ```ts
 * const model = TextModel.load(ckpt, config.thinker_config.text_config);
 * const cache = model.createCache();
 * const x = model.embed([1, 2, 3]);
 * const { logits, lastHiddenState } = model.forward(x, { positions: [[0, 1, 2], [0, 1, 2], [0, 1, 2]], cache });
 * ```
 */
export class TextModel {
  private constructor(
    readonly config: ThinkerTextConfig,
    readonly embedTokens: Float32Array,
    readonly layers: readonly TextDecoderLayer[],
    readonly norm: RMSNorm,
    readonly lmHead: Linear | undefined,
  ) {}

  get hidden(): number {
    return this.config.hidden_size;
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  /**
   * Loads the text model from a checkpoint (or any WeightSource); every tensor's shape is checked against the config.
   * `weights: 'bf16'` keeps the projections, experts and lm_head as packed bf16 (half the bytes per decode step), 'int8'
   * as per-column int8 (a quarter; approximate), see WeightDtype; norms, routers and the host embedding table stay
   * float32. `fuseQkv` loads each layer's q/k/v
   * projections as one matrix (see DecoderAttention; fewer kernels per decode step, inference only: the talker and
   * code predictor use it, the trainable captioner does not).
   */
  static load(ckpt: WeightSource, config: ThinkerTextConfig, keys: TextModelKeys = THINKER_TEXT_KEYS, options: TextModelLoadOptions = {}): TextModel {
    const c = config, f = options.weights ?? 'float32';
    const D = c.hidden_size;
    const embed = ckpt.get(`${keys.embed}.weight`, [c.vocab_size, D]).data as Float32Array;
    // Inside tidy so a missing or mis-shaped tensor half-way through disposes what was already loaded.
    const parts = tf.tidy(() => {
      const layers: TextDecoderLayer[] = [];
      for (let i = 0; i < c.num_hidden_layers; i++) {
        const p = `${keys.model}.layers.${i}`;
        layers.push({
          input_layernorm: loadRMSNorm(ckpt, `${p}.input_layernorm.weight`, D, c.rms_norm_eps),
          self_attn: loadDecoderAttention(ckpt, `${p}.self_attn`, {
            hidden: D, numHeads: c.num_attention_heads, numKvHeads: c.num_key_value_heads, headDim: c.head_dim,
            rmsNormEps: c.rms_norm_eps, attentionBias: c.attention_bias, weights: f, fuseQkv: options.fuseQkv,
          }),
          post_attention_layernorm: loadRMSNorm(ckpt, `${p}.post_attention_layernorm.weight`, D, c.rms_norm_eps),
          mlp: isSparseLayer(c, i)
            ? loadSparseMoe(ckpt, `${p}.mlp`, {
              hidden: D, numExperts: c.num_experts, topK: c.num_experts_per_tok, moeIntermediate: c.moe_intermediate_size,
              normTopKProb: c.norm_topk_prob, sharedExpertIntermediate: c.shared_expert_intermediate_size, weights: f,
            })
            : loadSwiGluMlp(ckpt, `${p}.mlp`, D, c.intermediate_size, f),
        });
      }
      const norm = loadRMSNorm(ckpt, `${keys.model}.norm.weight`, D, c.rms_norm_eps);
      const lmHead = keys.lmHead ? loadLinear(ckpt, keys.lmHead, D, c.vocab_size, false, f) : undefined;
      return { layers, norm, lmHead } as unknown as tf.TensorContainer;
    }) as unknown as { layers: TextDecoderLayer[]; norm: RMSNorm; lmHead?: Linear };
    return new TextModel(c, embed, parts.layers, parts.norm, parts.lmHead);
  }

  /** A KV cache sized for this model (one per session; the caller disposes it). */
  createCache(options: { capacity?: number } = {}): KVCache {
    return new KVCache({
      layers: this.config.num_hidden_layers, kvHeads: this.config.num_key_value_heads, headDim: this.config.head_dim,
      maxLength: this.config.max_position_embeddings, capacity: options.capacity,
    });
  }

  /**
   * `embed_tokens(ids)` with multimodal rows written over their placeholder tokens in sequence order (the reference's
   * masked_scatter). The number of placeholders must equal the number of rows of each splice.
   */
  embed(inputIds: ArrayLike<number>, splices: readonly EmbeddingSplice[] = []): tf.Tensor2D {
    const S = inputIds.length, D = this.hidden, V = this.vocabSize;
    const rows = new Float32Array(S * D);
    for (let p = 0; p < S; p++) {
      const id = inputIds[p]!;
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new Error(`TextModel.embed: token id ${id} at position ${p} is outside the vocabulary [0, ${V})`);
      rows.set(this.embedTokens.subarray(id * D, (id + 1) * D), p * D);
    }
    if (!splices.length) return tf.tensor2d(rows, [S, D]);
    // One gather over [token rows; splice rows…]: position p takes its own row, or the next row of its splice.
    const source = new Int32Array(S);
    let offset = S;
    const counters = splices.map(() => 0);
    for (let p = 0; p < S; p++) source[p] = p;
    splices.forEach((sp, i) => {
      if (sp.rows.shape[1] !== D) throw new Error(`TextModel.embed: ${sp.name ?? `splice ${i}`} rows have ${sp.rows.shape[1]} features but the model's hidden size is ${D}`);
      for (let p = 0; p < S; p++) if (inputIds[p] === sp.tokenId) source[p] = offset + counters[i]++;
      if (counters[i] !== sp.rows.shape[0]) {
        throw new Error(`TextModel.embed: ${sp.name ?? `splice ${i}`} has ${sp.rows.shape[0]} rows but the ids hold ${counters[i]} placeholder tokens (id ${sp.tokenId})`);
      }
      offset += sp.rows.shape[0];
    });
    return tf.tidy(() => tf.gather(tf.concat([tf.tensor2d(rows, [S, D]), ...splices.map((s) => s.rows)], 0), tf.tensor1d(source, 'int32')) as tf.Tensor2D);
  }

  /** Runs the decoder over `inputsEmbeds` ([S, hidden]); see {@link TextForwardOptions}. */
  forward(inputsEmbeds: tf.Tensor2D, options: TextForwardOptions): TextForwardResult {
    const S = inputsEmbeds.shape[0];
    const L = this.layers.length;
    const keep = new Set(options.hiddenStates ?? []);
    for (const k of keep) if (!Number.isInteger(k) || k < 0 || k > L) throw new Error(`TextModel.forward: hidden state index ${k} is outside [0, ${L}]`);
    const ds = options.deepstack;
    if (ds) {
      for (const [i, f] of ds.features.entries()) {
        if (f.shape[0] !== ds.positions.length || f.shape[1] !== this.hidden) {
          throw new Error(`TextModel.forward: DeepStack feature ${i} is [${f.shape}] but ${ds.positions.length} visual positions × hidden ${this.hidden} were expected`);
        }
      }
      if (ds.features.length > L) throw new Error(`TextModel.forward: ${ds.features.length} DeepStack features for ${L} layers`);
    }
    const hiddenStates = new Map<number, tf.Tensor2D>();
    let out: { logits?: tf.Tensor2D; last: tf.Tensor2D };
    try {
      out = tf.tidy(() => {
        const [cos, sin] = this.ropeFor(options.positions, S);
        // Each DeepStack feature scattered to [S, hidden] (zeros off the visual positions) so it is one add per layer.
        const dsIndex = ds && ds.positions.length ? scatterIndex(ds.positions, S) : undefined;
        let h: tf.Tensor2D = inputsEmbeds;
        if (keep.has(0)) hiddenStates.set(0, tf.keep(tf.clone(inputsEmbeds)));
        for (let i = 0; i < L; i++) {
          const layer = this.layers[i]!;
          h = tf.tidy(() => {
            const attn = decoderAttention(normRope(h, layer.input_layernorm) as tf.Tensor2D, layer.self_attn, cos, sin, options.cache ? { cache: options.cache, layer: i } : undefined, options.segments);
            const r = tf.add(h, attn) as tf.Tensor2D;
            const x2 = normRope(r, layer.post_attention_layernorm) as tf.Tensor2D;
            const m = 'router' in layer.mlp ? sparseMoe(x2, layer.mlp, { differentiableRouting: options.differentiableRouting }).output : swiGlu(x2, layer.mlp);
            return tf.add(r, m) as tf.Tensor2D;
          });
          if (i + 1 < L && keep.has(i + 1)) hiddenStates.set(i + 1, tf.keep(tf.clone(h)));
          if (ds && dsIndex && i < ds.features.length) {
            const f = ds.features[i]!;
            h = tf.add(h, tf.gather(tf.concat([tf.zeros([1, this.hidden]), f], 0), dsIndex)) as tf.Tensor2D;
          }
        }
        const last = normRope(h, this.norm) as tf.Tensor2D;
        if (keep.has(L)) hiddenStates.set(L, tf.keep(tf.clone(last)));
        let logits: tf.Tensor2D | undefined;
        const which = options.logits ?? 'last';
        if (which !== 'none') {
          if (!this.lmHead) throw new Error('TextModel.forward: logits requested but the model was loaded without an lm_head');
          const rows = which === 'all' || S === 1 ? last : tf.slice(last, [S - 1, 0], [1, this.hidden]);
          logits = linear(rows, this.lmHead) as tf.Tensor2D;
        }
        return logits ? { logits, last } : { last };
      });
    } catch (err) {
      // Hidden states were kept out of the tidy scope as they were produced; nobody will own them now.
      for (const t of hiddenStates.values()) t.dispose();
      throw err;
    }
    return { logits: out.logits, lastHiddenState: out.last, hiddenStates };
  }

  /** cos/sin `[S, 1, head_dim]` for the rows' positions: MRoPE when the config has an mrope_section, else 1-D. */
  private ropeFor(positions: MropePositions | ArrayLike<number>, S: number): [tf.Tensor3D, tf.Tensor3D] {
    const c = this.config;
    const threeAxes = isThreeAxes(positions);
    const section = c.rope.mropeSection;
    if (threeAxes ? positions[0].length !== S : positions.length !== S) {
      throw new Error(`TextModel.forward: ${threeAxes ? positions[0].length : positions.length} positions for ${S} rows`);
    }
    if (section) {
      const p3: MropePositions = threeAxes ? positions : [positions, positions, positions];
      return ropeTensors(mropeTables(p3, c.head_dim, c.rope.theta, section, c.rope.interleaved));
    }
    return ropeTensors(ropeTables(threeAxes ? positions[0] : positions, c.head_dim, c.rope.theta));
  }

  dispose(): void {
    for (const l of this.layers) disposeLayer(l);
    this.norm.weight.dispose();
    if (this.lmHead) disposeLinear(this.lmHead);
  }
}

function isThreeAxes(p: MropePositions | ArrayLike<number>): p is MropePositions {
  return p.length === 3 && typeof (p as MropePositions)[0] === 'object';
}

/** Whether layer i is a sparse MoE layer (transformers: not in mlp_only_layers, experts > 0, (i+1) % step == 0). */
function isSparseLayer(c: ThinkerTextConfig, i: number): boolean {
  return !c.mlp_only_layers.includes(i) && c.num_experts > 0 && (i + 1) % c.decoder_sparse_step === 0;
}

/** Gather index mapping row p to 1 + (its rank among `positions`), or 0 (a zero row) when p is not listed. */
function scatterIndex(positions: readonly number[], S: number): tf.Tensor1D {
  const idx = new Int32Array(S);
  positions.forEach((p, j) => {
    if (!Number.isInteger(p) || p < 0 || p >= S) throw new Error(`TextModel.forward: DeepStack position ${p} is outside [0, ${S})`);
    idx[p] = j + 1;
  });
  return tf.tensor1d(idx, 'int32');
}

function disposeLayer(l: TextDecoderLayer): void {
  l.input_layernorm.weight.dispose();
  l.post_attention_layernorm.weight.dispose();
  disposeDecoderAttention(l.self_attn);
  if ('router' in l.mlp) disposeSparseMoe(l.mlp);
  else disposeSwiGluMlp(l.mlp);
}
