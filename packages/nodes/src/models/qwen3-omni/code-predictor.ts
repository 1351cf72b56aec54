import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint, KVCache } from '@omniflow/runtime-gpu';
import { loadLinear, linear, disposeLinear, type Linear, type WeightDtype } from '../../layers/linear.js';
import { TextModel } from './text-model.js';
import type { Sampler } from './sampler.js';
import type { CodePredictorConfig, ThinkerTextConfig } from './config.js';

/** What the code predictor made of one codec frame. */
export interface PredictedFrame {
  /** Codes of groups 1..G-1. */
  readonly residualCodes: Int32Array;
  /** Raw logits that chose them, [(G-1) · codebook], row g-1 for group g. */
  readonly logits: Float32Array;
  /**
   * Σ_{g=1..G-1} codec_embedding[g-1](code_g), [1, hidden]: with E0(code0) and the next trailing-text row it makes
   * the talker's next input. Owned by the caller.
   */
  readonly embeddingSum: tf.Tensor2D;
}

/**
 * The talker's code predictor ("MTP", `talker.code_predictor.*`, spec 3.7): a small dense Qwen3 decoder that, for
 * each codec frame, predicts codebooks 1..G-1 one after another. Per frame, with a fresh cache: prefill
 * [h_talker, E0(code0)] at positions 0-1 and take lm_head[0] -> code 1; then feed codec_embedding[k-1](code k) at
 * position k+1 and take lm_head[k] -> code k+1, up to G-1. Plain 1-D RoPE.
 *
 * ```ts
 * const mtp = CodePredictor.load(ckpt, config.talker_config!.code_predictor_config);
 * const frame = mtp.predict(hTalker, e0, new Sampler(GREEDY)); // hTalker, e0: [1, 1024]
 * frame.embeddingSum.dispose();
 * ```
 */
export class CodePredictor {
  private cache: KVCache;

  private constructor(
    readonly config: CodePredictorConfig,
    private readonly model: TextModel,
    /** codec_embedding[i] for group i+1, host [codebook, hidden] each (rows are copied per token). */
    private readonly embeddings: Float32Array[],
    private readonly heads: Linear[],
  ) {
    this.cache = model.createCache({ capacity: config.num_code_groups + 1 });
  }

  /** Loads `${prefix}.*`; `weights: 'bf16'` or `'int8'` packs the decoder's and heads' matrices (see WeightDtype). */
  static load(ckpt: Checkpoint, config: CodePredictorConfig, prefix = 'talker.code_predictor', options: { weights?: WeightDtype } = {}): CodePredictor {
    const c = config, G = c.num_code_groups, V = c.vocab_size, D = c.hidden_size;
    // The decoder is the shared Qwen3 text decoder with every layer dense. Its "embed_tokens" is codec_embedding.0
    // (the model has no single token table); the 15 heads are separate.
    const dense = { ...c, num_experts: 0, mlp_only_layers: [], decoder_sparse_step: 1, moe_intermediate_size: 1, num_experts_per_tok: 1, norm_topk_prob: true, shared_expert_intermediate_size: 0 } as unknown as ThinkerTextConfig;
    const model = TextModel.load(ckpt, dense, { model: `${prefix}.model`, embed: `${prefix}.model.codec_embedding.0` }, { ...options, fuseQkv: true });
    const embeddings = [model.embedTokens];
    for (let i = 1; i < G - 1; i++) embeddings.push(ckpt.get(`${prefix}.model.codec_embedding.${i}.weight`, [V, D]).data as Float32Array);
    const heads = Array.from({ length: G - 1 }, (_, i) => loadLinear(ckpt, `${prefix}.lm_head.${i}`, D, V, false, options.weights));
    return new CodePredictor(config, model, embeddings, heads);
  }

  get groups(): number {
    return this.config.num_code_groups;
  }

  /**
   * Predicts codes 1..G-1 of one frame from the talker's final-norm hidden state at the position that produced
   * code 0 (`hTalker`, [1, hidden]) and E0(code0) (`code0Embedding`, [1, hidden], the talker's codec_embedding row).
   */
  predict(hTalker: tf.Tensor2D, code0Embedding: tf.Tensor2D, sampler: Sampler): PredictedFrame {
    const G = this.groups, V = this.config.vocab_size, D = this.config.hidden_size;
    for (const [name, t] of [['hTalker', hTalker], ['code0Embedding', code0Embedding]] as const) {
      if (t.shape[0] !== 1 || t.shape[1] !== D) throw new Error(`CodePredictor.predict: ${name} is [${t.shape}] but [1, ${D}] was expected`);
    }
    const codes = new Int32Array(G - 1);
    const logits = new Float32Array((G - 1) * V);
    const sum = new Float32Array(D);
    this.cache.truncate(0); // a fresh mini-sequence per frame
    for (let k = 0; k < G - 1; k++) {
      const row = tf.tidy(() => {
        // Step 0 prefills [h_talker, E0(code0)] at positions 0, 1; step k feeds codec_embedding[k-1](code k) at k+1.
        const x = k === 0 ? tf.concat([hTalker, code0Embedding], 0) as tf.Tensor2D : tf.tensor2d(this.embeddingRow(k - 1, codes[k - 1]), [1, D]);
        const positions = k === 0 ? [0, 1] : [k + 1];
        const { lastHiddenState } = this.model.forward(x, { positions, cache: this.cache, logits: 'none' });
        const rows = lastHiddenState.shape[0];
        const last = rows === 1 ? lastHiddenState : tf.slice(lastHiddenState, [rows - 1, 0], [1, D]) as tf.Tensor2D;
        return linear(last, this.heads[k]);
      });
      const l = row.dataSync() as Float32Array;
      row.dispose();
      logits.set(l, k * V);
      codes[k] = sampler.sample(l);
      const e = this.embeddingRow(k, codes[k]);
      for (let d = 0; d < D; d++) sum[d] += e[d];
    }
    return { residualCodes: codes, logits, embeddingSum: tf.tensor2d(sum, [1, D]) };
  }

  /** codec_embedding[i](code) as a host row. */
  embeddingRow(i: number, code: number): Float32Array {
    const D = this.config.hidden_size, V = this.config.vocab_size;
    if (!Number.isInteger(code) || code < 0 || code >= V) throw new Error(`CodePredictor: code ${code} of group ${i + 1} is outside the codebook [0, ${V})`);
    return this.embeddings[i].subarray(code * D, (code + 1) * D);
  }

  dispose(): void {
    this.cache.dispose();
    this.model.dispose();
    for (const h of this.heads) disposeLinear(h);
  }
}
