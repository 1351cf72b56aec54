import type * as tf from '@tensorflow/tfjs-core';
import type { KVCache } from '@omniflow/runtime-gpu';
import { generate } from './generate.js';
import type { Qwen3OmniModel } from './load.js';
import type { SamplerOptions } from './sampler.js';
import { prepareThinkerPrompt, type PromptContinuation, type ThinkerMessage } from './thinker-prompt.js';

/**
 * A conversation with the thinker. Its KV cache and MRoPE position carry over from turn to turn, so each new turn
 * feeds only its own tokens — the same as re-running the whole conversation's prompt, without recomputing it. An
 * interrupted answer stays in the context as far as it was generated.
 *
 * ```ts
 * const chat = new ThinkerConversation(model);
 * await thinkerReply(model, [{ role: 'user', content: 'Hi!' }], { conversation: chat });
 * await thinkerReply(model, [{ role: 'user', content: 'And again?' }], { conversation: chat }); // sees turn 1
 * chat.dispose();
 * ```
 */
export class ThinkerConversation {
  private kv: KVCache | undefined;
  private nextPosition = 0;
  // Generated ids not yet in the cache (the last token of an answer is sampled but never fed).
  private unfed: number[] = [];
  private open = false;
  private busy = false;

  constructor(readonly model: Qwen3OmniModel) {}

  /** True while a turn is running. */
  get running(): boolean {
    return this.busy;
  }

  /** Rows in the KV cache. */
  get length(): number {
    return this.kv?.length ?? 0;
  }

  /** True once a turn has been prefilled: the next turn continues it (and should not repeat the system prompt). */
  get started(): boolean {
    return this.open || this.length > 0;
  }

  /** @internal Claims the conversation for one turn. */
  begin(): { cache: KVCache; continuation: PromptContinuation } {
    if (this.busy) throw new Error('ThinkerConversation: a turn is already running; turns of one conversation run one at a time');
    this.busy = true;
    this.kv ??= this.model.thinker.createCache();
    const prefixIds: number[] = [];
    if (this.open) {
      // Close the previous assistant message as the chat template would: …answer<|im_end|>\n
      const imEnd = this.model.tokenizer.specialTokens.imEnd;
      prefixIds.push(...this.unfed);
      if (prefixIds.at(-1) !== imEnd) prefixIds.push(imEnd);
      prefixIds.push(...this.model.tokenizer.encode('\n'));
    }
    return { cache: this.kv, continuation: { pastLength: this.kv.length, nextPosition: this.nextPosition, prefixIds } };
  }

  /** @internal The turn's prefill is in the cache; `token` is the newest generated id (not yet fed). */
  step(token: number): void {
    this.open = true;
    this.unfed = [token];
  }

  /** @internal The turn ended (or was aborted); positions continue after what the cache holds. */
  end(ropeDelta: number, prefilled: boolean): void {
    if (prefilled && this.kv) this.nextPosition = this.kv.length + ropeDelta;
    this.busy = false;
  }

  /** Frees the KV cache. */
  dispose(): void {
    this.kv?.dispose();
    this.kv = undefined;
  }
}

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
  /** Continue this conversation (its context and KV cache) instead of starting a fresh one. */
  readonly conversation?: ThinkerConversation;
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
  /**
   * With `talkerHidden`: the rows fed at this step (the prompt for index 0, then the previous token) — their token
   * ids, hidden_states[0] and hidden_states[accept_hidden_layer]. The consumer owns the tensors.
   */
  readonly fed?: { readonly ids: readonly number[]; readonly embeds: tf.Tensor2D; readonly hidden: tf.Tensor2D };
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
  const conversation = options.conversation;
  const session = conversation?.begin();
  let prompt;
  try {
    prompt = prepareThinkerPrompt(model, messages, session?.continuation);
  } catch (err) {
    conversation?.end(0, false);
    throw err;
  }
  const detok = model.tokenizer.detokenizer();
  const tokens: number[] = [];
  try {
    const steps = generate(model.thinker, {
      cache: session?.cache,
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
      conversation?.step(step.token);
      tokens.push(step.token);
      let text = detok.push(step.token);
      if (step.finishReason) text += detok.flush();
      const fedIds = step.index === 0 ? prompt.prompt.ids : [tokens[tokens.length - 2]];
      const fed = step.fed ? { ids: fedIds, embeds: step.fed.embeds, hidden: step.fed.hidden } : undefined;
      yield { token: step.token, text, index: step.index, finishReason: step.finishReason, fed };
      if (step.finishReason) {
        return { text: detok.text, tokens, finishReason: step.finishReason, promptTokens: prompt.prompt.ids.length };
      }
    }
    throw new Error('thinker: generation ended without a finish reason');
  } finally {
    conversation?.end(prompt.ropeDelta, tokens.length > 0);
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
