import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import { loadLinear, linear, disposeLinear, type Linear, type WeightDtype } from '../../layers/linear.js';
import type { TalkerConfig } from './config.js';
import type { Sampler, SamplerOptions } from './sampler.js';

/** generate()'s talker defaults (spec 3.8): sampled, top-k 50, temperature 0.9, repetition penalty 1.05. */
export const TALKER_SAMPLING: SamplerOptions = { topK: 50, topP: 1, temperature: 0.9, repetitionPenalty: 1.05 };

/** The code predictor's defaults (spec 3.8): sampled, top-k 50, top-p 0.8, temperature 1. */
export const CODE_PREDICTOR_SAMPLING: SamplerOptions = { topK: 50, topP: 0.8, temperature: 1 };

/** Greedy decoding of the raw logits (what the golden fixtures record). */
export const GREEDY: SamplerOptions = { greedy: true };

/**
 * The talker's `codec_head` (Linear hidden -> codec vocab, no bias): codebook-0 logits from the talker's final-norm
 * hidden state, and the choice of the code with generate()'s suppression rule (ids past the codebook, except codec
 * EOS, are control tokens the talker must not emit).
 *
 * ```ts
 * const head = CodecHead.load(ckpt, config.talker_config!);
 * const logits = head.logits(hidden);                        // [1, 3072]
 * const code0 = head.pick(logits.dataSync() as Float32Array, new Sampler({ ...TALKER_SAMPLING, seed: 0 }), history);
 * ```
 */
export class CodecHead {
  /** The suppression list generate() applies when sampling the talker. */
  readonly suppressTokens: readonly number[];

  private constructor(readonly head: Linear, readonly eosTokenId: number, readonly codebookSize: number) {
    // Ids past the codebook are control tokens (pad, bos, think markers, speakers…); only EOS may be emitted. For the
    // release this is generate()'s suppress list, [vocab − 1024, vocab) = [2048, 3072) minus 2150.
    const suppress: number[] = [];
    for (let id = codebookSize; id < head.outFeatures; id++) if (id !== eosTokenId) suppress.push(id);
    this.suppressTokens = suppress;
  }

  /** Loads `${key}.weight`; `weights: 'bf16'` packs it (see WeightDtype). */
  static load(ckpt: Pick<Checkpoint, 'get'>, config: TalkerConfig, key = 'talker.codec_head', options: { weights?: WeightDtype } = {}): CodecHead {
    const c = config.text_config;
    return new CodecHead(loadLinear(ckpt, key, c.hidden_size, c.vocab_size, false, options.weights), config.codec_eos_token_id, config.code_predictor_config.vocab_size);
  }

  get vocabSize(): number {
    return this.head.outFeatures;
  }

  /** [n, hidden] final-norm hidden states -> [n, vocab] codebook-0 logits. */
  logits(hidden: tf.Tensor2D): tf.Tensor2D {
    return linear(hidden, this.head) as tf.Tensor2D;
  }

  /**
   * Chooses code 0 from one row of logits with the shared thinker Sampler. A drawing sampler gets the control-token
   * suppression first (as generate() does); a greedy one takes the argmax of what it is given, so `GREEDY`
   * reproduces the fixtures' raw-logit argmax.
   */
  pick(logits: Float32Array, sampler: Sampler, history: readonly number[] = []): number {
    if (sampler.isGreedy) return sampler.sample(logits, history);
    const allowed = Float32Array.from(logits);
    for (const id of this.suppressTokens) allowed[id] = -Infinity;
    return sampler.sample(allowed, history);
  }

  dispose(): void {
    disposeLinear(this.head);
  }
}
