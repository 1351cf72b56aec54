import * as tf from '@tensorflow/tfjs-core';
import type { Qwen3OmniConfig } from './config.js';

/** The token ids talker-input construction reads, gathered from the top-level and talker configs. */
export interface TalkerTokenIds {
  imStart: number;
  user: number;
  assistant: number;
  /** Thinker placeholder ids whose rows take hidden_projection(accept-layer hidden state). */
  multimodal: readonly number[];
  ttsPad: number;
  ttsBos: number;
  ttsEos: number;
  codecNothink: number;
  codecThinkBos: number;
  codecThinkEos: number;
  codecPad: number;
  codecBos: number;
  speakers: Readonly<Record<string, number>>;
}

/**
 * Token ids of a Qwen3-Omni config, with an error naming any the config lacks.
 *
 * ```ts
 * const ids = talkerTokenIds(config); // ids.speakers → { chelsie: 2301, ethan: 2302, aiden: 2303 }
 * ```
 */
export function talkerTokenIds(config: Qwen3OmniConfig): TalkerTokenIds {
  const t = config.talker_config;
  if (!t) throw new Error('config.json has no talker_config: this checkpoint has no speech output (Thinking/Captioner)');
  const need = (name: string, v: number | undefined): number => {
    if (v === undefined) throw new Error(`config.json: ${name} is missing; the talker prompt needs it`);
    return v;
  };
  return {
    imStart: need('im_start_token_id', config.im_start_token_id),
    user: need('user_token_id', config.user_token_id ?? config.thinker_config.user_token_id),
    assistant: need('assistant_token_id', config.assistant_token_id),
    multimodal: [t.audio_token_id, t.image_token_id, t.video_token_id],
    ttsPad: need('tts_pad_token_id', config.tts_pad_token_id),
    ttsBos: need('tts_bos_token_id', config.tts_bos_token_id),
    ttsEos: need('tts_eos_token_id', config.tts_eos_token_id),
    codecNothink: t.codec_nothink_id,
    codecThinkBos: t.codec_think_bos_id,
    codecThinkEos: t.codec_think_eos_id,
    codecPad: t.codec_pad_id,
    codecBos: t.codec_bos_id,
    speakers: t.speaker_id,
  };
}

/**
 * Positions of every user turn: tokens whose most recent `<|im_start|>` is followed by the user role token, the
 * `<|im_start|>` itself included (the reference's `_get_talker_user_parts`). System and assistant turns are skipped.
 *
 * ```ts
 * userTurnIndices([240, 97, 198, 5, 241, 240, 98, 198], 240, 97); // Int32Array [0, 1, 2, 3, 4]
 * ```
 */
export function userTurnIndices(ids: ArrayLike<number>, imStart: number, user: number, length = ids.length): Int32Array {
  const out: number[] = [];
  let inUser = false;
  for (let p = 0; p < length; p++) {
    if (ids[p] === imStart) inUser = p + 1 < ids.length && ids[p + 1] === user;
    if (inUser) out.push(p);
  }
  return Int32Array.from(out);
}

/** Index of the last `<|im_start|>` followed by the assistant role token: where the answer being voiced begins. */
export function assistantStartIndex(ids: ArrayLike<number>, imStart: number, assistant: number): number {
  for (let p = ids.length - 2; p >= 0; p--) if (ids[p] === imStart && ids[p + 1] === assistant) return p;
  throw new Error(`talker input: the token ids hold no '<|im_start|>assistant' (ids ${imStart}, ${assistant}); there is no answer to voice`);
}

/** The projections and embeddings the prompt is built from (the Talker provides them). */
export interface TalkerProjections {
  /** text_projection over [n, thinkerHidden] rows -> [n, hidden]. */
  textProjection(x: tf.Tensor2D): tf.Tensor2D;
  /** hidden_projection over [n, thinkerHidden] rows -> [n, hidden]. */
  hiddenProjection(x: tf.Tensor2D): tf.Tensor2D;
  /** talker.model.codec_embedding rows for codec ids -> [n, hidden]. */
  codecEmbedding(ids: readonly number[]): tf.Tensor2D;
  /** text_projection(thinker embed_tokens([tts_bos, tts_eos, tts_pad])), [3, hidden]. */
  readonly ttsSpecialEmbeds: tf.Tensor2D;
}

export interface TalkerPromptInput {
  /** Thinker token ids: the prompt and the generated answer (a final EOS may be included; it is never fed). */
  ids: ArrayLike<number>;
  /** Thinker hidden_states[0] (embedding output) for the fed positions, [S, thinkerHidden], S ≤ ids.length. */
  thinkerEmbeds: tf.Tensor2D;
  /** Thinker hidden_states[accept_hidden_layer] for the same positions, [S, thinkerHidden]. */
  thinkerHidden: tf.Tensor2D;
  /** Voice by name, one of the config's speaker_id keys (default 'ethan'). */
  speaker?: string;
}

/** The talker's prefill and the text it reads one row per frame afterwards. Owns its tensors. */
export interface TalkerPrompt {
  /** [user turns; 9-row assistant prefix], [U + 9, hidden]. */
  readonly inputsEmbeds: tf.Tensor2D;
  /** talker_input_ids (user-turn thinker ids, then tts_pad): only for MRoPE position ids. */
  readonly inputIds: Int32Array;
  readonly userIndices: Int32Array;
  readonly assistantStart: number;
  /** text_projection of the generated tokens from the second on, then tts_eos: one row per decode step. */
  readonly trailingText: tf.Tensor2D;
  /** The projected tts_pad row fed once the trailing text is used up, [1, hidden]. */
  readonly ttsPad: tf.Tensor2D;
  /** For parity: the user rows and the assistant prefix separately. */
  readonly userEmbeds: tf.Tensor2D;
  readonly assistantEmbeds: tf.Tensor2D;
  dispose(): void;
}

/**
 * Builds the talker's input as the reference's generate() does (spec 3.8): every user turn (multimodal placeholder
 * rows through hidden_projection of the accept-layer hidden state, everything else through text_projection of the
 * thinker embedding), then the current assistant turn's 9-row prefix — text track [<|im_start|>, assistant, \n,
 * tts_pad x4, tts_bos, first answer token] plus codec track [0, 0, 0, nothink, think_bos, think_eos, speaker,
 * codec_pad, codec_bos] — and the trailing text [answer tokens 2.., tts_eos] fed one per frame. With
 * `textComplete: false` the answer is still being generated: the trailing text holds the tokens so far, without
 * tts_eos, and the rest is pushed to the TalkerGeneration as it comes.
 *
 * ```ts
 * const prompt = buildTalkerPrompt(talker, talkerTokenIds(config), { ids, thinkerEmbeds, thinkerHidden, speaker: 'chelsie' });
 * // prefill with prompt.inputsEmbeds, then one prompt.trailingText row per frame, then prompt.ttsPad
 * prompt.dispose();
 * ```
 */
export function buildTalkerPrompt(
  proj: TalkerProjections, tokens: TalkerTokenIds, input: TalkerPromptInput, options: { textComplete?: boolean } = {},
): TalkerPrompt {
  const textComplete = options.textComplete ?? true;
  const { ids, thinkerEmbeds, thinkerHidden } = input;
  const S = thinkerEmbeds.shape[0];
  if (thinkerHidden.shape[0] !== S || thinkerHidden.shape[1] !== thinkerEmbeds.shape[1]) {
    throw new Error(`talker input: thinkerHidden is [${thinkerHidden.shape}] but thinkerEmbeds is [${thinkerEmbeds.shape}]; both must cover the same fed positions`);
  }
  if (S > ids.length) throw new Error(`talker input: ${S} thinker rows but only ${ids.length} token ids`);
  const speaker = (input.speaker ?? 'ethan').toLowerCase();
  const speakerId = tokens.speakers[speaker];
  if (speakerId === undefined) throw new Error(`talker input: unknown speaker '${input.speaker}'; this checkpoint has ${Object.keys(tokens.speakers).join(', ')}`);
  const start = assistantStartIndex(ids, tokens.imStart, tokens.assistant);
  if (S - start < 4) throw new Error(`talker input: the answer has no text to voice (the assistant turn at ${start} holds ${S - start} fed rows; 4 needed: <|im_start|>, assistant, \\n and a first token)`);
  const userIndices = userTurnIndices(ids, tokens.imStart, tokens.user, Math.min(S, start));
  const mm = new Set(tokens.multimodal);
  const textRows = [...userIndices].filter((p) => !mm.has(ids[p]));
  const mmRows = [...userIndices].filter((p) => mm.has(ids[p]));
  const [tb, te, tp] = [0, 1, 2].map((i) => tf.slice(proj.ttsSpecialEmbeds, [i, 0], [1, -1]) as tf.Tensor2D);
  try {
    return tf.tidy(() => {
      const rows = (x: tf.Tensor2D, at: readonly number[]) => tf.gather(x, tf.tensor1d(Int32Array.from(at), 'int32')) as tf.Tensor2D;
      // User rows: both projections over their own rows, then one gather back into sequence order.
      const parts: tf.Tensor2D[] = [];
      if (textRows.length) parts.push(proj.textProjection(rows(thinkerEmbeds, textRows)));
      if (mmRows.length) parts.push(proj.hiddenProjection(rows(thinkerHidden, mmRows)));
      const rank = new Map<number, number>([...textRows.map((p, i) => [p, i] as const), ...mmRows.map((p, i) => [p, textRows.length + i] as const)]);
      const hidden = proj.ttsSpecialEmbeds.shape[1];
      const userEmbeds = parts.length
        ? rows(parts.length === 1 ? parts[0] : tf.concat(parts, 0) as tf.Tensor2D, [...userIndices].map((p) => rank.get(p)!))
        : tf.zeros([0, hidden]) as tf.Tensor2D;
      const A = proj.textProjection(tf.slice(thinkerEmbeds, [start, 0], [S - start, -1]) as tf.Tensor2D);
      const a = (i: number) => tf.slice(A, [i, 0], [1, -1]) as tf.Tensor2D;
      const text = tf.concat([a(0), a(1), a(2), tp, tp, tp, tp, tb, a(3)], 0);
      const codec = tf.concat([
        tf.zeros([3, hidden]),
        proj.codecEmbedding([tokens.codecNothink, tokens.codecThinkBos, tokens.codecThinkEos, speakerId, tokens.codecPad, tokens.codecBos]),
      ], 0);
      const assistantEmbeds = tf.add(text, codec) as tf.Tensor2D;
      // While the answer is still being generated, tts_eos is not appended yet (TalkerGeneration.endText does it).
      const trailingText = tf.concat([tf.slice(A, [4, 0], [S - start - 4, -1]), ...(textComplete ? [te] : [])], 0) as tf.Tensor2D;
      const inputsEmbeds = tf.concat([userEmbeds, assistantEmbeds], 0) as tf.Tensor2D;
      const inputIds = Int32Array.from([...Array.from(userIndices, (p) => ids[p]), ...new Array(9).fill(tokens.ttsPad)]);
      const ttsPad = tf.clone(tp);
      const owned = [inputsEmbeds, trailingText, ttsPad, userEmbeds, assistantEmbeds];
      return {
        inputsEmbeds, inputIds, userIndices, assistantStart: start, trailingText, ttsPad, userEmbeds, assistantEmbeds,
        dispose: () => tf.dispose(owned),
      } as unknown as tf.TensorContainer;
    }) as unknown as TalkerPrompt;
  } finally {
    tf.dispose([tb, te, tp]);
  }
}
