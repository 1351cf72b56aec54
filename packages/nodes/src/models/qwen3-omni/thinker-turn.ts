import type * as tf from '@tensorflow/tfjs-core';
import { generate } from './generate.js';
import type { Qwen3OmniModel } from './load.js';
import type { SamplerOptions } from './sampler.js';
import { prepareThinkerPrompt, type ThinkerMessage } from './thinker-prompt.js';

/*
 * One assistant turn of the thinker as an async iterable: prompt preparation, KV-cached generation and streaming
 * detokenisation, with every tensor freed when the turn ends, fails or is aborted. The `thinker` and `captioner`
 * nodes are RxJS wrappers around it; scripts and job runners can use it directly.
 */

export interface ThinkerTurnOptions {
  /** Most tokens to generate (default 256). */
  readonly maxNewTokens?: number;
  /** Sampling (default greedy). The README's recommendation for real checkpoints: temperature 0.6, topP 0.95, topK 20. */
  readonly sampler?: SamplerOptions;
  /** Aborts between decode steps. */
  readonly signal?: AbortSignal;
  /**
   * Hand each step's hidden_states[0] and hidden_states[talker_config.accept_hidden_layer] rows to the consumer (the
   * talker's input). The consumer owns and disposes them. Needs a config with a talker_config.
   */
  readonly talkerHidden?: boolean;
}

/** One generated token. */
export interface ThinkerDelta {
  readonly token: number;
  /** Text this token completes (may be '' mid-character, or for a stop token). */
  readonly text: string;
  /** 0 for the prefill's token, k for decode step k. */
  readonly index: number;
  /** On the last delta: why generation ended. */
  readonly finishReason?: 'stop' | 'length';
  /** With `talkerHidden`: rows fed at this step; the consumer owns them. */
  readonly fed?: { readonly embeds: tf.Tensor2D; readonly hidden: tf.Tensor2D };
}

/** What a finished turn produced. */
export interface ThinkerTurnResult {
  readonly text: string;
  readonly tokens: number[];
  readonly finishReason: 'stop' | 'length';
  readonly promptTokens: number;
}

/**
 * Runs one assistant turn over `messages` (media parts carry encoder outputs, which the caller keeps owning) and
 * yields each token with the text it completes.
 *
 * ```ts
 * const turn = runThinkerTurn(model, [{ role: 'user', content: 'Say hi.' }], { maxNewTokens: 32 });
 * for await (const d of turn) process.stdout.write(d.text);
 * ```
 */
export async function* runThinkerTurn(
  model: Qwen3OmniModel,
  messages: readonly ThinkerMessage[],
  options: ThinkerTurnOptions = {},
): AsyncGenerator<ThinkerDelta, ThinkerTurnResult> {
  const acceptLayer = model.config.talker_config?.accept_hidden_layer;
  if (options.talkerHidden && acceptLayer === undefined) throw new Error('thinker: talkerHidden needs a config with talker_config.accept_hidden_layer');
  const prompt = prepareThinkerPrompt(model, messages);
  const detok = model.tokenizer.detokenizer();
  const tokens: number[] = [];
  try {
    const steps = generate(model.thinker, {
      inputIds: prompt.prompt.ids,
      inputsEmbeds: prompt.inputsEmbeds,
      positions: prompt.positions,
      ropeDelta: prompt.ropeDelta,
      deepstack: prompt.deepstack,
      sampler: options.sampler,
      maxNewTokens: options.maxNewTokens ?? 256,
      stopTokens: model.tokenizer.stopTokenIds,
      signal: options.signal,
      talkerHiddenLayer: options.talkerHidden ? acceptLayer : undefined,
    });
    for await (const step of steps) {
      tokens.push(step.token);
      let text = detok.push(step.token);
      if (step.finishReason) text += detok.flush();
      yield { token: step.token, text, index: step.index, finishReason: step.finishReason, fed: step.fed };
      if (step.finishReason) {
        return { text: detok.text, tokens, finishReason: step.finishReason, promptTokens: prompt.prompt.ids.length };
      }
    }
    throw new Error('thinker: generation ended without a finish reason');
  } finally {
    prompt.dispose();
  }
}

/**
 * Runs a whole turn and returns its text (for batch jobs).
 *
 * ```ts
 * const { text } = await thinkerReply(model, [{ role: 'user', content: [{ type: 'audio', embeds, frames }] }]);
 * ```
 */
export async function thinkerReply(
  model: Qwen3OmniModel,
  messages: readonly ThinkerMessage[],
  options: Omit<ThinkerTurnOptions, 'talkerHidden'> = {},
): Promise<ThinkerTurnResult> {
  const turn = runThinkerTurn(model, messages, options);
  for (;;) {
    const r = await turn.next();
    if (r.done) return r.value;
  }
}
