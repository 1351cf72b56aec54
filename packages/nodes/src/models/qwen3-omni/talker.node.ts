import * as tf from '@tensorflow/tfjs-core';
import { Observable, type SchedulerLike, type Subscription } from 'rxjs';
import { z } from 'zod';
import { codesPacket, controlPacket, defineNode, disposePacket, ports, type CodesPacket, type ControlPacket, type Packet, type TensorPacket } from '@omniflow/core';
import { Checkpoint, initBackend } from '@omniflow/runtime-gpu';
import { CodecHead, GREEDY } from './codec-head.js';
import { CodePredictor } from './code-predictor.js';
import { readQwen3OmniConfig, type Qwen3OmniConfig } from './config.js';
import { samplerOptionsSchema } from './sampler.js';
import { Talker, TalkerGeneration, type CodecFrame, type TalkerGenerationOptions } from './talker.js';
import { buildTalkerPrompt, talkerTokenIds, assistantStartIndex, type TalkerPrompt } from './talker-input.js';

/*
 * The `talker` node: the thinker's fed rows in (hidden_states[0] and [accept_hidden_layer] with their token ids), codec
 * frames out, one packet per frame as soon as it is made. The talker's decoder, codec head and code predictor form a
 * per-frame feedback loop (each frame's codes are the next step's input), so they run together here; `codecHead` and
 * `codePredictor` are also nodes of their own for graphs that split the work.
 */

/** The speech half of an Instruct checkpoint. */
export interface TalkerParts {
  readonly talker: Talker;
  readonly codecHead: CodecHead;
  readonly codePredictor: CodePredictor;
}

/** Turns answer token ids into text, for the `voices` tags (a Qwen3OmniTokenizer does). */
export interface TokenDecoder {
  decode(ids: readonly number[]): string;
}

/** Codec frame period: 1920 samples at 24 kHz (12.5 Hz). */
export const CODEC_FRAME_MICROS = 80_000;

/** Loads the talker, codec head and code predictor from a checkpoint folder (the caller disposes them). */
export async function loadTalkerParts(dir: string): Promise<TalkerParts & { config: Qwen3OmniConfig; dispose(): void }> {
  await initBackend();
  const { config } = readQwen3OmniConfig(dir);
  if (!config.talker_config) throw new Error(`talker: ${dir}/config.json has no talker_config (not an Instruct checkpoint)`);
  const ckpt = Checkpoint.open(dir);
  const done: Array<{ dispose(): void }> = [];
  try {
    const talker = Talker.load(ckpt, config);
    done.push(talker);
    const codecHead = CodecHead.load(ckpt, config.talker_config);
    done.push(codecHead);
    const codePredictor = CodePredictor.load(ckpt, config.talker_config.code_predictor_config);
    return { talker, codecHead, codePredictor, config, dispose: () => [talker, codecHead, codePredictor].forEach((m) => m.dispose()) };
  } catch (err) {
    done.forEach((m) => m.dispose());
    throw err;
  } finally {
    ckpt.close();
  }
}

export interface SpeechTurnOptions extends Omit<TalkerGenerationOptions, 'streamingText' | 'positionIds'> {
  /** Voice: one of the config's speaker_id names (default 'ethan'). */
  speaker?: string;
  /** Decodes answer ids to text for the voices tags; without it frames carry no text. */
  tokenizer?: TokenDecoder;
  /**
   * Rows fed before this index are earlier turns of the conversation (their user turns are part of the talker's
   * prompt): the answer to voice starts at an `<|im_start|>assistant` at or after it.
   */
  startAfter?: number;
}

/** What one frame voices: the answer text the talker had read, [start, end) in characters. */
export interface VoicedFrame extends CodecFrame {
  readonly voices?: { start: number; end: number; text: string };
}

/**
 * One assistant turn spoken as it is written: thinker rows come in with `feed` as the thinker produces them, frames
 * come out of `next`. The talker starts as soon as the answer's first token is in (its 9-row prefix needs it) and
 * reads one further answer token per frame; `endText` ends the answer. The frames equal the reference's, which runs
 * the talker after the whole answer.
 *
 * ```ts
 * const turn = new SpeechTurn(parts, config, { speaker: 'chelsie', tokenizer });
 * turn.feed(ids, embeds, hidden);          // per thinker step; takes the tensors
 * while (turn.ready) send(turn.next()!);   // frames available now
 * turn.endText(); while (turn.ready) send(turn.next()!);
 * turn.dispose();
 * ```
 */
export class SpeechTurn {
  private readonly ids: number[] = [];
  private embeds: tf.Tensor2D[] = [];
  private hidden: tf.Tensor2D[] = [];
  private prompt?: TalkerPrompt;
  private gen?: TalkerGeneration;
  private ended = false;
  private voicedChars = 0;
  private readonly tokens: ReturnType<typeof talkerTokenIds>;

  constructor(readonly parts: TalkerParts, readonly config: Qwen3OmniConfig, readonly options: SpeechTurnOptions = {}) {
    this.tokens = talkerTokenIds(config);
  }

  /** Appends thinker rows ([n, thinkerHidden] each, with their n token ids); takes ownership of both tensors. */
  feed(ids: ArrayLike<number>, embeds: tf.Tensor2D, hidden: tf.Tensor2D): void {
    if (embeds.shape[0] !== ids.length || hidden.shape[0] !== ids.length) {
      const n = ids.length;
      tf.dispose([embeds, hidden]);
      throw new Error(`talker: ${n} token ids for thinker rows embeds [${embeds.shape}] and hidden [${hidden.shape}]; one id per row expected`);
    }
    if (this.ended) {
      tf.dispose([embeds, hidden]);
      throw new Error('talker: thinker rows after the end of the answer');
    }
    for (let i = 0; i < ids.length; i++) this.ids.push(ids[i]);
    if (this.gen) {
      // Every row after the prompt is an answer token the talker reads one per frame.
      const rows = tf.tidy(() => this.parts.talker.textProjection(embeds));
      this.gen.pushText(rows);
      tf.dispose([rows, embeds, hidden]);
      return;
    }
    this.embeds.push(embeds);
    this.hidden.push(hidden);
    this.tryStart();
  }

  /** The answer is complete (the thinker stopped). */
  endText(): void {
    if (this.ended) return;
    this.ended = true;
    this.gen?.endText();
  }

  /** A frame can be made now. */
  get ready(): boolean {
    return !!this.gen && !this.gen.done && !this.gen.needsText;
  }

  /** No more frames will come (codec EOS, the frame limit, or an answer with nothing to voice). */
  get done(): boolean {
    return this.gen ? this.gen.done : this.ended;
  }

  get frames(): number {
    return this.gen?.frameCount ?? 0;
  }

  next(): VoicedFrame | undefined {
    if (!this.gen) return undefined;
    const frame = this.gen.next();
    if (!frame || !this.options.tokenizer) return frame;
    const start = this.prompt!.assistantStart + 3;
    const text = this.options.tokenizer.decode(this.ids.slice(start, start + frame.textTokensRead));
    const voices = { start: this.voicedChars, end: Math.max(this.voicedChars, text.length), text: text.slice(this.voicedChars) };
    this.voicedChars = voices.end;
    return { ...frame, voices };
  }

  dispose(): void {
    this.gen?.dispose();
    this.prompt?.dispose();
    tf.dispose([...this.embeds, ...this.hidden]);
    this.embeds = [];
    this.hidden = [];
    this.gen = undefined;
    this.prompt = undefined;
  }

  private tryStart(): void {
    let start: number;
    try {
      start = assistantStartIndex(this.ids, this.tokens.imStart, this.tokens.assistant);
    } catch {
      return; // the assistant turn has not begun yet
    }
    if (start < (this.options.startAfter ?? 0)) return; // only an earlier turn's answer so far
    if (this.ids.length < start + 4) return; // the prefix needs the first answer token
    const embeds = this.embeds.length === 1 ? this.embeds[0] : (tf.concat(this.embeds) as tf.Tensor2D);
    const hidden = this.hidden.length === 1 ? this.hidden[0] : (tf.concat(this.hidden) as tf.Tensor2D);
    try {
      this.prompt = buildTalkerPrompt(this.parts.talker, this.tokens, { ids: this.ids, thinkerEmbeds: embeds, thinkerHidden: hidden, speaker: this.options.speaker }, { textComplete: false });
      this.gen = new TalkerGeneration(this.parts.talker, this.parts.codecHead, this.parts.codePredictor, this.prompt, { ...this.options, streamingText: true });
      if (this.ended) this.gen.endText();
    } finally {
      tf.dispose([...new Set([embeds, hidden, ...this.embeds, ...this.hidden])]);
      this.embeds = [];
      this.hidden = [];
    }
  }
}

/** What the `model` param may be besides a folder: a model from loadQwen3Omni (its talker borrowed) or the same shape. */
export interface TalkerModelLike {
  readonly talker?: TalkerParts;
  readonly config: Qwen3OmniConfig;
  readonly tokenizer?: TokenDecoder;
}

const partsParam = z.union([
  z.string().min(1),
  z.custom<TalkerModelLike>(
    (v) => typeof v === 'object' && v !== null && 'config' in v && typeof (v as { talker?: unknown }).talker === 'object' && (v as { talker?: unknown }).talker !== null,
    { message: 'expected a checkpoint folder or a model from loadQwen3Omni() with its talker loaded (an Instruct checkpoint)' },
  ),
]);

export const talkerParams = z.object({
  /** A model from loadQwen3Omni (its talker is borrowed) or a checkpoint folder loaded when the node opens. */
  model: partsParam,
  /** Voice, one of the checkpoint's speakers (release: chelsie, ethan, aiden). */
  speaker: z.string().default('ethan'),
  /** Codebook-0 sampling; default generate()'s (top-k 50, temperature 0.9, repetition penalty 1.05). */
  sampling: samplerOptionsSchema.partial().optional(),
  /** Code-predictor sampling; default top-k 50, top-p 0.8. */
  predictorSampling: samplerOptionsSchema.partial().optional(),
  /** Greedy everywhere (what the parity fixtures use); overrides the two above. */
  greedy: z.boolean().default(false),
  seed: z.number().int().default(0),
  maxFrames: z.number().int().positive().default(4096),
  /**
   * Real-time mode: how many frames the talker may run ahead of playback (frame f is made no earlier than
   * (f − leadFrames) · 80 ms after the turn began). Other modes run as fast as they can.
   */
  leadFrames: z.number().int().nonnegative().default(4),
});
export type TalkerParams = z.output<typeof talkerParams>;

interface TalkerResource {
  readonly parts: TalkerParts;
  readonly config: Qwen3OmniConfig;
  readonly tokenizer?: TokenDecoder;
  dispose?(): void;
}

/** Instances open synchronously (so a graph starts at once, also in virtual time); a folder is loaded. */
function openTalker(model: TalkerParams['model']): TalkerResource | Promise<TalkerResource> {
  if (typeof model !== 'string') return { parts: model.talker!, config: model.config, tokenizer: model.tokenizer };
  return loadTalkerParts(model).then((loaded) => ({ parts: loaded, config: loaded.config, dispose: loaded.dispose }));
}

/** Options of one SpeechTurn from the node params. */
export function speechTurnOptions(p: TalkerParams, tokenizer?: TokenDecoder): SpeechTurnOptions {
  return {
    speaker: p.speaker, seed: p.seed, maxFrames: p.maxFrames, tokenizer,
    ...(p.greedy ? { sampling: GREEDY, predictorSampling: GREEDY } : { sampling: p.sampling, predictorSampling: p.predictorSampling }),
  };
}

/**
 * Drives a SpeechTurn frame by frame on `scheduler` (virtual in tests): one frame per scheduled action, so an
 * interrupt (`stopped()` true) is seen between frames. Real-time pacing keeps at most `leadFrames` ahead.
 */
export class FramePump {
  private action?: Subscription;
  private readonly startedAt: number;

  constructor(
    private readonly turn: SpeechTurn,
    private readonly scheduler: SchedulerLike,
    private readonly emit: (frame: VoicedFrame) => void,
    private readonly finish: () => void,
    private readonly stopped: () => boolean,
    private readonly pace: { leadFrames: number } | undefined,
  ) {
    this.startedAt = scheduler.now();
  }

  /** Schedules the next frame if one can be made and none is scheduled. */
  kick(): void {
    if (this.action && !this.action.closed) return;
    if (this.stopped()) return;
    if (this.turn.done) {
      this.finish();
      return;
    }
    if (!this.turn.ready) return;
    const due = this.pace ? this.startedAt + ((this.turn.frames - this.pace.leadFrames) * CODEC_FRAME_MICROS) / 1000 : 0;
    this.action = this.scheduler.schedule(() => {
      this.action = undefined;
      if (this.stopped()) return;
      const frame = this.turn.next();
      if (frame) this.emit(frame);
      this.kick();
    }, Math.max(0, due - this.scheduler.now()));
  }

  cancel(): void {
    this.action?.unsubscribe();
    this.action = undefined;
  }
}

/**
 * Speaks each assistant answer as the thinker writes it. Input (one port, in order): tensor packets 'thinker_hidden'
 * (the thinker's fed rows at accept_hidden_layer) with extras `embeds` (hidden_states[0] rows) and `ids` (int32, the
 * token id of each row); the answer ends with a final text packet or a turn-end / flush / end-of-stream control packet.
 * Output: one codes packet per frame (pts = turn start + 80 ms per frame, `voices` = the answer text read so far),
 * then a turn-end control packet. An interrupt stops the turn between two frames.
 *
 * ```ts
 * thinkerRows$.pipe(talker({ model, speaker: 'chelsie' }), code2wav({ model })).subscribe(play);
 * ```
 */
export const talker = defineNode({
  type: 'talker',
  description: 'Qwen3-Omni talker + codec head + code predictor: thinker rows in, 16-group codec frames out at 12.5 Hz',
  inputs: { thinker: ports.of(['tensor', 'text', 'control'], { description: "'thinker_hidden' rows (extras embeds, ids), then a final text or turn-end" }) },
  outputs: { codes: ports.of(['codes', 'control'], { description: 'one codes packet per frame, then turn-end' }) },
  params: talkerParams,
  open: (params) => openTalker(params.model),
  operator: (params, ctx, resource) => (input$: Observable<Packet>) =>
    new Observable<CodesPacket | ControlPacket>((subscriber) => {
      const G = resource.config.talker_config!.num_code_groups;
      type Current = { session: string; turn: number; pts: number; speech: SpeechTurn; pump: FramePump; finished: boolean; answerEnded: boolean };
      let current: Current | undefined;
      // Every row the thinker fed in this conversation: the talker's prompt holds all its user turns.
      const history: { ids: number[]; embeds: tf.Tensor2D[]; hidden: tf.Tensor2D[] } = { ids: [], embeds: [], hidden: [] };
      // Packets of the next answer that arrive while the current one is still being spoken.
      let backlog: Packet[] = [];
      let completed = false;
      const drop = () => {
        current?.pump.cancel();
        current?.speech.dispose();
        current = undefined;
      };
      const clearBacklog = () => {
        backlog.forEach(disposePacket);
        backlog = [];
      };
      const epochs = ctx.turns$.subscribe((epoch) => {
        if (current && current.turn < epoch) drop(); // interrupted: stop between frames, nothing more is emitted
        backlog = backlog.filter((p) => (p.turn < epoch && !p.uninterruptible ? (disposePacket(p), false) : true));
      });
      const begin = (p: Packet): Current => {
        const speech = new SpeechTurn(resource.parts, resource.config, { ...speechTurnOptions(params, resource.tokenizer), startAfter: history.ids.length });
        if (history.ids.length) {
          const cat = (xs: tf.Tensor2D[]) => (xs.length === 1 ? tf.clone(xs[0]) : (tf.concat(xs) as tf.Tensor2D));
          speech.feed(history.ids, cat(history.embeds), cat(history.hidden));
        }
        const stamp = { session: p.session, turn: p.turn, pts: p.pts };
        const state = { ...stamp, speech, finished: false, answerEnded: false } as Current;
        state.pump = new FramePump(
          speech, ctx.scheduler,
          (f) => subscriber.next(codesPacket({ ...stamp, pts: stamp.pts + f.index * CODEC_FRAME_MICROS, codes: f.codes, groups: G, frames: 1, ...(f.voices ? { voices: f.voices } : {}) })),
          () => {
            if (state.finished) return;
            state.finished = true;
            subscriber.next(controlPacket({ ...stamp, pts: stamp.pts + speech.frames * CODEC_FRAME_MICROS, signal: 'turn-end' }));
            if (current === state) drop();
            // The next answer may have been waiting.
            const waiting = backlog;
            backlog = [];
            waiting.forEach(handle);
            if (completed && !current) subscriber.complete();
          },
          () => ctx.signal.aborted || current !== state,
          ctx.mode === 'realtime' ? { leadFrames: params.leadFrames } : undefined,
        );
        return state;
      };
      const handle = (p: Packet): void => {
        try {
          if (p.turn < ctx.turn && !p.uninterruptible) {
            disposePacket(p);
            return;
          }
          if (current && (current.turn !== p.turn || current.session !== p.session)) drop();
          if (current?.answerEnded) {
            backlog.push(p); // the next answer: it starts when this one has been spoken
            return;
          }
          if (p.kind === 'tensor') {
            const t = p as TensorPacket;
            const extras = (t.extras ?? {}) as Record<string, tf.Tensor>;
            if (t.name !== 'thinker_hidden' || !extras.embeds || !extras.ids) {
              disposePacket(p);
              throw new Error(`${ctx.node}: port 'thinker' takes 'thinker_hidden' tensor packets with extras 'embeds' and 'ids', got '${t.name}' with extras [${Object.keys(extras).join(', ')}]`);
            }
            current ??= begin(p);
            const ids = Array.from(extras.ids.dataSync());
            extras.ids.dispose();
            const embeds = extras.embeds as tf.Tensor2D, hidden = t.tensor as unknown as tf.Tensor2D;
            history.ids.push(...ids);
            history.embeds.push(tf.clone(embeds));
            history.hidden.push(tf.clone(hidden));
            current.speech.feed(ids, embeds, hidden);
          } else if ((p.kind === 'text' && p.final) || (p.kind === 'control' && ['turn-end', 'flush', 'end-of-stream'].includes(p.signal))) {
            if (!current) return;
            current.answerEnded = true;
            current.speech.endText();
          } else if (p.kind !== 'text' && p.kind !== 'control') {
            throw new Error(`${ctx.node}: port 'thinker' takes tensor, text and control packets, got a ${p.kind} packet`);
          }
          current?.pump.kick();
        } catch (err) {
          drop();
          subscriber.error(err);
        }
      };
      const sub = input$.subscribe({
        next: handle,
        error: (e) => {
          drop();
          subscriber.error(e);
        },
        complete: () => {
          // The input ended: the answer is complete; finish speaking it (and any waiting one), then complete.
          completed = true;
          if (!current) return subscriber.complete();
          current.answerEnded = true;
          current.speech.endText();
          current.pump.kick();
        },
      });
      subscriber.add(() => {
        clearBacklog();
        tf.dispose([...history.embeds, ...history.hidden]);
      });
      return () => {
        sub.unsubscribe();
        epochs.unsubscribe();
        drop();
      };
    }),
  close: (resource) => resource.dispose?.(),
});
