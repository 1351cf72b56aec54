import * as tf from '@tensorflow/tfjs-core';
import { Observable, filter, map, share, type OperatorFunction } from 'rxjs';
import { z } from 'zod';
import {
  controlPacket,
  defineNode,
  disposePacket,
  ports,
  textPacket,
  tensorPacket,
  tokensPacket,
  type ControlPacket,
  type NodeContext,
  type Packet,
  type TensorPacket,
  type TextPacket,
  type TokensPacket,
} from '@omniflow/core';
import { audioOutputLength } from './audio-encoder.js';
import { loadQwen3Omni, Qwen3OmniModel } from './load.js';
import { samplerOptionsSchema } from './sampler.js';
import type { ThinkerContentPart, ThinkerMessage } from './thinker-prompt.js';
import { ThinkerConversation, runThinkerTurn } from './thinker-turn.js';
import { Qwen3OmniTokenizer } from './tokenizer.js';

/*
 * The `thinker` node: packets of a user turn in, the assistant's streamed answer out.
 *
 * Input (one ordered stream, so the order of the user's content is the order of the packets):
 *  - text packets: user text; a text packet with `final: true` ends the user's turn;
 *  - tokens packets: user text as ids (decoded and templated like text);
 *  - tensor packets: encoder outputs, in content order —
 *      'audio_embeds'  [audio tokens, hidden] (the audioEncoder's output for one clip),
 *      'image_embeds' / 'video_embeds' [tokens, hidden] with extras `deepstack.<i>` ([tokens, hidden] each),
 *      `grid_thw` (int32 [3]) and, for videos, `second_per_grid` ([1]) and optionally `audio_embeds` (audio in video);
 *  - control packets: 'turn-end', 'flush' or 'end-of-stream' end the user's turn (so does the input completing).
 * Outputs: `text` (deltas, the last one `final`), `tokens` (one packet per generated id) and, with
 * `talkerHidden: true`, `hidden` — the talker's input: per step a tensor packet 'thinker_hidden' =
 * hidden_states[accept_hidden_layer] of the rows fed, with extras `embeds` (hidden_states[0]) and `ids` (int32, the
 * token id of each row), then a 'turn-end' control packet when the answer is complete. Whoever subscribes owns them.
 * With `history` (default) a session's turns form one conversation: its KV cache carries over, the system prompt
 * opens it once, an interrupted answer stays in the context as far as it got. An interrupt aborts generation between
 * decode steps.
 */

const modelParam = z.union([
  z.string().min(1),
  z.custom<Qwen3OmniModel>((v) => v instanceof Qwen3OmniModel, { message: 'expected a checkpoint folder or a model from loadQwen3Omni()' }),
]);

export const thinkerParams = z.object({
  /** A model from loadQwen3Omni, or a checkpoint folder to load when the node opens (and free when it closes). */
  model: modelParam,
  /** Folder holding tokenizer.json when `model` is a folder without one. */
  tokenizer: z.string().optional(),
  /** System prompt of every turn. */
  system: z.string().optional(),
  maxNewTokens: z.number().int().positive().default(256),
  sampler: samplerOptionsSchema.partial().default({ greedy: true }),
  /** Emit the talker's input on the `hidden` port. */
  talkerHidden: z.boolean().default(false),
  /** Keep each session's conversation (KV cache) across turns; false answers every turn on its own. */
  history: z.boolean().default(true),
});
export type ThinkerParams = z.output<typeof thinkerParams>;

/** The model a node works with, and whether the node loaded it (and so frees it). */
export interface ModelResource {
  readonly model: Qwen3OmniModel;
  readonly owned: boolean;
}

/** Resolves a `model` param: an instance is borrowed, a folder is loaded (and owned). */
export async function openModel(model: string | Qwen3OmniModel, tokenizer?: string): Promise<ModelResource> {
  if (model instanceof Qwen3OmniModel) return { model, owned: false };
  return { model: await loadQwen3Omni(model, tokenizer ? { tokenizer } : {}), owned: true };
}

/** A session's conversation (with `history`), and the end of its last turn: a session's turns run one after another. */
interface Chat {
  readonly conversation: ThinkerConversation | undefined;
  tail: Promise<void>;
}

/** Everything the user sent in one turn. */
interface UserTurn {
  readonly session: string;
  readonly turn: number;
  readonly pts: number;
  readonly parts: ThinkerContentPart[];
  readonly packets: TensorPacket[];
}

type ThinkerEvent =
  | { readonly port: 'text'; readonly packet: TextPacket }
  | { readonly port: 'tokens'; readonly packet: TokensPacket }
  | { readonly port: 'hidden'; readonly packet: TensorPacket | ControlPacket };

/**
 * Answers each user turn with streamed text.
 *
 * ```ts
 * const { text } = thinker({ model })(concat(audioEmbeds$, of(textPacket({ text: 'What is this sound?', final: true }))));
 * text.subscribe((p) => process.stdout.write(p.text));
 * ```
 */
export const thinker = defineNode({
  type: 'thinker',
  description: 'Qwen3-Omni thinker: user text and encoded media in, streamed answer (text, token ids, talker hidden states) out',
  inputs: { input: ports.of(['text', 'tokens', 'tensor', 'control'], { description: 'one user turn: text, token ids, encoder outputs, then turn-end' }) },
  outputs: {
    text: ports.text({ description: 'answer deltas; the last has final: true' }),
    tokens: ports.tokens({ description: 'one packet per generated id' }),
    hidden: ports.of(['tensor', 'control'], { description: "talker input (talkerHidden: true): 'thinker_hidden' rows with extras embeds and ids, then turn-end" }),
  },
  params: thinkerParams,
  open: (params) => openModel(params.model, params.tokenizer),
  operator: (params, ctx, resource) => (input$: Observable<Packet>) => {
    const { model } = resource;
    const chats = new Map<string, Chat>();
    ctx.onDispose(() => {
      for (const { conversation: c, tail } of chats.values()) {
        if (c?.running) void tail.then(() => c.dispose());
        else c?.dispose();
      }
      chats.clear();
    });
    const chatOf = (session: string): Chat => {
      let c = chats.get(session);
      if (!c) chats.set(session, (c = { conversation: params.history ? new ThinkerConversation(model) : undefined, tail: Promise.resolve() }));
      return c;
    };
    const events$ = input$.pipe(
      collectUserTurns(ctx, model.tokenizer),
      ctx.mapAsync((turn: UserTurn, signal) => answer(model, params, turn, signal, chatOf(turn.session)), { concurrency: 1 }),
      share(),
    );
    const text = events$.pipe(filter((e) => e.port === 'text'), map((e) => e.packet as TextPacket));
    const tokens = events$.pipe(filter((e) => e.port === 'tokens'), map((e) => e.packet as TokensPacket));
    const hidden = events$.pipe(filter((e) => e.port === 'hidden'), map((e) => e.packet as TensorPacket | ControlPacket));
    return { text, tokens, hidden };
  },
  close: (resource) => {
    if (resource.owned) resource.model.dispose();
  },
});

/** Groups the input into user turns: content packets accumulate until a turn-ending packet (or completion). */
function collectUserTurns(ctx: NodeContext, tokenizer: Qwen3OmniTokenizer): OperatorFunction<Packet, UserTurn> {
  return (input$) =>
    new Observable<UserTurn>((subscriber) => {
      let current: { session: string; turn: number; pts: number; parts: ThinkerContentPart[]; packets: TensorPacket[] } | undefined;
      const drop = () => {
        for (const p of current?.packets ?? []) disposePacket(p);
        current = undefined;
      };
      const emit = () => {
        if (current && current.parts.length) subscriber.next(current);
        else drop();
        current = undefined;
      };
      const sub = input$.subscribe({
        next: (p) => {
          if (p.turn < ctx.turn && !p.uninterruptible) {
            disposePacket(p); // a packet of an interrupted turn
            return;
          }
          if (current && (current.turn !== p.turn || current.session !== p.session)) drop();
          current ??= { session: p.session, turn: p.turn, pts: p.pts, parts: [], packets: [] };
          try {
            switch (p.kind) {
              case 'text':
                if (p.text) current.parts.push({ type: 'text', text: p.text });
                if (p.final) emit();
                return;
              case 'tokens':
                current.parts.push({ type: 'text', text: tokenizer.decode([...p.ids]) });
                return;
              case 'tensor':
                current.packets.push(p);
                current.parts.push(mediaPart(p));
                return;
              case 'control':
                if (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream') emit();
                return;
              default:
                throw new Error(`thinker: input port takes text, tokens, tensor and control packets, got a ${p.kind} packet`);
            }
          } catch (err) {
            drop();
            subscriber.error(err);
          }
        },
        error: (e) => {
          drop();
          subscriber.error(e);
        },
        complete: () => {
          emit();
          subscriber.complete();
        },
      });
      return () => {
        sub.unsubscribe();
        drop();
      };
    });
}

/** A tensor packet as a content part (see the input contract at the top of this file). */
function mediaPart(p: TensorPacket): ThinkerContentPart {
  const t = p.tensor as unknown as tf.Tensor;
  const extras = (p.extras ?? {}) as Record<string, tf.Tensor>;
  if (t.rank !== 2) throw new Error(`thinker: tensor packet '${p.name}' must be [tokens, hidden], got [${t.shape}]`);
  if (p.name === 'audio_embeds') return { type: 'audio', embeds: t as tf.Tensor2D, frames: framesForAudioTokens(t.shape[0]) };
  if (p.name !== 'image_embeds' && p.name !== 'video_embeds') {
    throw new Error(`thinker: tensor packet '${p.name}' is not one of audio_embeds, image_embeds, video_embeds`);
  }
  const grid = extras.grid_thw;
  if (!grid || grid.size !== 3) throw new Error(`thinker: '${p.name}' needs an int32 [3] extra 'grid_thw'`);
  const gridThw = Array.from(grid.dataSync()) as [number, number, number];
  const deepstack = Object.keys(extras)
    .filter((k) => /^deepstack\.\d+$/.test(k))
    .sort((a, b) => Number(a.split('.')[1]) - Number(b.split('.')[1]))
    .map((k) => extras[k] as tf.Tensor2D);
  if (p.name === 'image_embeds') return { type: 'image', embeds: t as tf.Tensor2D, deepstack, gridThw };
  const spg = extras.second_per_grid;
  if (!spg) throw new Error(`thinker: 'video_embeds' needs an extra 'second_per_grid' (temporal_patch_size / sampling fps)`);
  const audio = extras.audio_embeds as tf.Tensor2D | undefined;
  return {
    type: 'video', embeds: t as tf.Tensor2D, deepstack, gridThw, secondPerGrid: spg.dataSync()[0],
    ...(audio ? { audio: { embeds: audio, frames: framesForAudioTokens(audio.shape[0]) } } : {}),
  };
}

/**
 * A mel-frame count that yields exactly `tokens` audio tokens. Placeholders and positions depend only on the token
 * count, so this stands in for the clip's real length when only the encoder's rows travel: 13 tokens per full
 * 100-frame chunk, and ceil(r / 8) tokens for a remainder of r frames.
 */
export function framesForAudioTokens(tokens: number, nWindow = 50): number {
  const perChunk = audioOutputLength(2 * nWindow, nWindow);
  const frames = 2 * nWindow * Math.floor(tokens / perChunk) + 8 * (tokens % perChunk);
  if (audioOutputLength(frames, nWindow) !== tokens) throw new Error(`thinker: no mel length gives ${tokens} audio tokens`);
  return frames;
}

/** Runs one turn and turns its deltas into packets. Media tensors of the turn are freed when it ends. */
function answer(model: Qwen3OmniModel, params: ThinkerParams, turn: UserTurn, signal: AbortSignal, chat: Chat): Observable<ThinkerEvent> {
  return new Observable<ThinkerEvent>((subscriber) => {
    const stop = new AbortController();
    const onAbort = () => stop.abort(signal.reason);
    signal.addEventListener('abort', onAbort);
    const stamp = { session: turn.session, turn: turn.turn, pts: turn.pts };
    const previous = chat.tail;
    let finished!: () => void;
    chat.tail = new Promise<void>((resolve) => (finished = resolve));
    let failure: { err: unknown } | undefined;
    void (async () => {
      try {
        await previous;
        if (stop.signal.aborted) throw stop.signal.reason;
        // The system prompt opens a conversation once.
        const system = params.system && !chat.conversation?.started ? [{ role: 'system' as const, content: params.system }] : [];
        const messages: ThinkerMessage[] = [...system, { role: 'user', content: turn.parts }];
        const steps = runThinkerTurn(model, messages, {
          maxNewTokens: params.maxNewTokens,
          sampler: params.sampler,
          signal: stop.signal,
          talkerHidden: params.talkerHidden,
          conversation: chat.conversation,
        });
        for await (const d of steps) {
          if (d.fed) {
            if (subscriber.closed) {
              d.fed.embeds.dispose();
              d.fed.hidden.dispose();
            } else {
              const ids = tf.tensor1d(Int32Array.from(d.fed.ids), 'int32');
              subscriber.next({ port: 'hidden', packet: tensorPacket({ ...stamp, name: 'thinker_hidden', tensor: d.fed.hidden, extras: { embeds: d.fed.embeds, ids } }) });
            }
          }
          subscriber.next({ port: 'tokens', packet: tokensPacket({ ...stamp, ids: Int32Array.of(d.token) }) });
          if (d.text || d.finishReason) {
            subscriber.next({ port: 'text', packet: textPacket({ ...stamp, text: d.text, role: 'assistant', ...(d.finishReason ? { final: true } : {}) }) });
          }
        }
        // The talker needs to know the answer is complete (it then reads tts_eos).
        if (params.talkerHidden) subscriber.next({ port: 'hidden', packet: controlPacket({ ...stamp, signal: 'turn-end' }) });
      } catch (err) {
        if (!stop.signal.aborted) failure = { err }; // aborted (interrupted or unsubscribed) is not an error
      } finally {
        signal.removeEventListener('abort', onAbort);
        for (const p of turn.packets) disposePacket(p);
        finished();
      }
      // Only now: whoever reacts to the end of the answer finds the turn's resources released.
      if (failure) subscriber.error(failure.err);
      else subscriber.complete();
    })();
    return () => stop.abort(new Error('thinker: unsubscribed'));
  });
}
