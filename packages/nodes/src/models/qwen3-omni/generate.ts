import * as tf from '@tensorflow/tfjs-core';
import type { KVCache } from '@omniflow/runtime-gpu';
import type { MropePositions } from '../../layers/mrope.js';
import { Sampler, type SamplerOptions } from './sampler.js';
import type { DeepStackInput, TextForwardResult, TextModel } from './text-model.js';

export interface GenerateOptions {
  /** Prompt token ids (they feed the repetition penalty and, without `inputsEmbeds`, the embedding). */
  inputIds: readonly number[];
  /** Prompt embeddings with multimodal rows spliced in ([S, hidden], see `TextModel.embed`); the caller keeps ownership. */
  inputsEmbeds?: tf.Tensor2D;
  /** Prefill positions (t, h, w rows, from getRopeIndex); default: text positions after what the cache holds. */
  positions?: MropePositions;
  /** get_rope_index's rope delta: decode positions are cache length + ropeDelta on all three axes. Default 0. */
  ropeDelta?: number;
  deepstack?: DeepStackInput;
  /** Continue a session: the prompt is appended to this cache, which the caller keeps. Default: a fresh cache, freed at the end. */
  cache?: KVCache;
  /** A sampler, or options for one. Default greedy. */
  sampler?: Sampler | SamplerOptions;
  /** Most tokens to generate (default 1024, transformers' thinker_max_new_tokens). */
  maxNewTokens?: number;
  /** Ids that end generation (e.g. <|im_end|>); the stop token itself is yielded with `finishReason: 'stop'`. */
  stopTokens?: readonly number[];
  /** Aborts between steps: the generator throws the signal's reason (an AbortError by default). */
  signal?: AbortSignal;
  /**
   * Hand the talker what it needs: with a layer index (accept_hidden_layer), every step carries the rows fed at that step
   * as hidden_states[0] (`fed.embeds`) and hidden_states[layer] (`fed.hidden`).
   */
  talkerHiddenLayer?: number;
  /** Attach the raw logits that produced each token (a Float32Array copy). */
  returnLogits?: boolean;
  /**
   * Prefill the prompt in chunks of this many rows (default 512): attention scores of a chunk take
   * heads × chunk × cached-length floats, which bounds activation memory for long multimodal prompts.
   */
  prefillChunk?: number;
}

export interface GenerateStep {
  /** The generated token id. */
  token: number;
  /** 0 for the token produced by the prefill, k for decode step k. */
  index: number;
  /** Set on the last step: 'stop' (a stop token) or 'length' (maxNewTokens reached). */
  finishReason?: 'stop' | 'length';
  /** Position (all three axes) of the row fed at this step; undefined for the prefill step. */
  fedPosition?: number;
  /** Raw logits that produced `token`, when `returnLogits` is set. */
  logits?: Float32Array;
  /**
   * With `talkerHiddenLayer`: the rows fed at this step ([S, hidden] for the prefill, [1, hidden] after), as
   * hidden_states[0] and hidden_states[talkerHiddenLayer]. The CONSUMER owns these tensors and must dispose them.
   */
  fed?: { embeds: tf.Tensor2D; hidden: tf.Tensor2D };
}

export interface GenerateResult {
  tokens: number[];
  finishReason: 'stop' | 'length';
}

/**
 * Autoregressive decoding with the KV cache: one prefill over the prompt, then one token per step, yielding each token
 * as soon as it is chosen. Cancellation is checked between steps (the event loop gets a turn there, so an abort from a
 * timer or socket lands), and every tensor of the loop is freed, also on abort or error.
 *
 * ```ts
 * for await (const step of generate(model, { inputIds: ids, stopTokens: [imEnd], sampler: { temperature: 0.7, seed: 1 }, signal })) {
 *   process.stdout.write(detok.push(step.token));
 * }
 * ```
 */
export async function* generate(model: TextModel, options: GenerateOptions): AsyncGenerator<GenerateStep, GenerateResult> {
  const maxNewTokens = options.maxNewTokens ?? 1024;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new Error(`generate: maxNewTokens must be a positive integer, got ${maxNewTokens}`);
  if (!options.inputIds.length) throw new Error('generate: inputIds is empty');
  const layer = options.talkerHiddenLayer;
  const L = model.config.num_hidden_layers;
  if (layer !== undefined && (!Number.isInteger(layer) || layer < 0 || layer > L)) {
    throw new Error(`generate: talkerHiddenLayer ${layer} is outside [0, ${L}]`);
  }
  if (options.inputsEmbeds && options.inputsEmbeds.shape[0] !== options.inputIds.length) {
    throw new Error(`generate: inputsEmbeds has ${options.inputsEmbeds.shape[0]} rows for ${options.inputIds.length} input ids`);
  }
  const sampler = options.sampler instanceof Sampler ? options.sampler : new Sampler({ greedy: true, ...options.sampler });
  const stops = new Set(options.stopTokens ?? []);
  const ropeDelta = options.ropeDelta ?? 0;
  const ownCache = !options.cache;
  const cache = options.cache ?? model.createCache();
  const history = [...options.inputIds];
  const tokens: number[] = [];
  const hiddenStates = layer === undefined ? [] : [0, layer];

  try {
    await betweenSteps(options.signal);
    const S = options.inputIds.length;
    const past = cache.length;
    const prefillPositions = options.positions ?? textPositions(past + ropeDelta, S);
    const embeds = options.inputsEmbeds ?? model.embed(options.inputIds);
    let out: TextForwardResult;
    try {
      out = prefill(model, embeds, prefillPositions, cache, options.deepstack, hiddenStates, options.prefillChunk ?? 512);
    } finally {
      if (!options.inputsEmbeds) embeds.dispose();
    }
    let fedPosition: number | undefined;
    for (let index = 0; ; index++) {
      const logits = out.logits!.dataSync() as Float32Array;
      out.logits!.dispose();
      out.lastHiddenState.dispose();
      const fed = layer === undefined ? undefined : { embeds: out.hiddenStates.get(0)!, hidden: out.hiddenStates.get(layer)! };
      const token = sampler.sample(logits, history);
      tokens.push(token);
      history.push(token);
      const finishReason = stops.has(token) ? 'stop' : tokens.length >= maxNewTokens ? 'length' : undefined;
      yield { token, index, finishReason, fedPosition, logits: options.returnLogits ? Float32Array.from(logits) : undefined, fed };
      if (finishReason) return { tokens, finishReason };
      await betweenSteps(options.signal);
      fedPosition = cache.length + ropeDelta;
      const x = model.embed([token]);
      try {
        out = model.forward(x, { positions: [fedPosition], cache, hiddenStates, logits: 'last' });
      } finally {
        x.dispose();
      }
    }
  } finally {
    if (ownCache) cache.dispose();
  }
}

/**
 * The prompt through the model in chunks of `chunk` rows, each attending to the cache filled by the ones before: the
 * same result as one forward, with attention activations bounded by the chunk. DeepStack rows and requested hidden
 * states are split and joined along with the rows; logits (and lastHiddenState) come from the last chunk.
 */
function prefill(
  model: TextModel, embeds: tf.Tensor2D, positions: MropePositions, cache: KVCache, deepstack: DeepStackInput | undefined,
  hiddenStates: readonly number[], chunk: number,
): TextForwardResult {
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`generate: prefillChunk must be a positive integer, got ${chunk}`);
  const S = embeds.shape[0];
  if (S <= chunk) return model.forward(embeds, { positions, cache, deepstack, hiddenStates, logits: 'last' });
  const parts = new Map<number, tf.Tensor2D[]>(hiddenStates.map((i) => [i, []]));
  let last: TextForwardResult | undefined;
  try {
    for (let start = 0; start < S; start += chunk) {
      const end = Math.min(S, start + chunk);
      const rows = tf.slice(embeds, [start, 0], [end - start, embeds.shape[1]]);
      const slicePos = (p: ArrayLike<number>) => Array.from({ length: end - start }, (_, i) => p[start + i]!);
      let ds: DeepStackInput | undefined;
      if (deepstack) {
        // Visual positions are ascending, so the chunk's ones are a contiguous run of feature rows.
        const from = deepstack.positions.findIndex((p) => p >= start);
        const to = from < 0 ? from : deepstack.positions.findIndex((p) => p >= end);
        const j0 = from < 0 ? deepstack.positions.length : from, j1 = to < 0 ? deepstack.positions.length : to;
        if (j1 > j0) {
          ds = {
            positions: deepstack.positions.slice(j0, j1).map((p) => p - start),
            features: deepstack.features.map((f) => tf.slice(f, [j0, 0], [j1 - j0, f.shape[1]])),
          };
        }
      }
      try {
        last?.lastHiddenState.dispose();
        last = model.forward(rows, {
          positions: [slicePos(positions[0]), slicePos(positions[1]), slicePos(positions[2])], cache, deepstack: ds, hiddenStates,
          logits: end === S ? 'last' : 'none',
        });
      } finally {
        rows.dispose();
        if (ds) tf.dispose(ds.features as tf.Tensor2D[]);
      }
      for (const [i, t] of last.hiddenStates) parts.get(i)!.push(t);
    }
  } catch (err) {
    for (const list of parts.values()) tf.dispose(list);
    last?.lastHiddenState.dispose();
    last?.logits?.dispose();
    throw err;
  }
  const joined = new Map<number, tf.Tensor2D>();
  for (const [i, list] of parts) {
    joined.set(i, tf.concat(list, 0));
    tf.dispose(list);
  }
  return { logits: last!.logits, lastHiddenState: last!.lastHiddenState, hiddenStates: joined };
}

/** Positions start, start+1, … on all three axes (text after the cache). */
function textPositions(start: number, n: number): MropePositions {
  const p = Float32Array.from({ length: n }, (_, i) => start + i);
  return [p, p, p];
}

/** Gives the event loop a turn (so abort events fire), then throws if the signal was aborted. */
async function betweenSteps(signal: AbortSignal | undefined): Promise<void> {
  if (signal) await new Promise<void>((resolve) => setImmediate(resolve));
  if (signal?.aborted) throw signal.reason ?? new DOMException('generation aborted', 'AbortError');
}
