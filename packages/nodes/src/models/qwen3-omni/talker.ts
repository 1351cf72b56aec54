import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint, KVCache } from '@omniflow/runtime-gpu';
import { loadLinear, linear, disposeLinear, type Linear, type WeightDtype } from '../../layers/linear.js';
import type { MropePositions } from '../../layers/mrope.js';
import { TextModel } from './text-model.js';
import { CodecHead, TALKER_SAMPLING, CODE_PREDICTOR_SAMPLING } from './codec-head.js';
import { Sampler, type SamplerOptions } from './sampler.js';
import { CodePredictor } from './code-predictor.js';
import { getRopeIndex, talkerRopeIndexConfigOf, type RopeIndexInput } from './rope-index.js';
import type { TalkerPrompt, TalkerProjections } from './talker-input.js';
import type { Qwen3OmniConfig, TalkerConfig } from './config.js';

/** ResizeMLP (`text_projection`, `hidden_projection`): linear_fc2(silu(linear_fc1(x))), both with bias. */
interface ResizeMlp {
  fc1: Linear;
  fc2: Linear;
}

function loadResizeMlp(ckpt: Checkpoint, prefix: string, inDim: number, hidden: number, outDim: number, f?: WeightDtype): ResizeMlp {
  return { fc1: loadLinear(ckpt, `${prefix}.linear_fc1`, inDim, hidden, true, f), fc2: loadLinear(ckpt, `${prefix}.linear_fc2`, hidden, outDim, true, f) };
}

function resizeMlp(x: tf.Tensor2D, m: ResizeMlp): tf.Tensor2D {
  return tf.tidy(() => {
    const h = linear(x, m.fc1);
    return linear(tf.mul(h, tf.sigmoid(h)), m.fc2) as tf.Tensor2D;
  });
}

/**
 * The Qwen3-Omni talker decoder (`talker.*` without its heads, spec 3.6): the thinker-to-talker projections
 * (`text_projection` over thinker token embeddings, `hidden_projection` over accept-layer hidden states), the MoE
 * decoder with a shared expert (`talker.model`, the shared Qwen3 text decoder with interleaved MRoPE) and its codec
 * embedding. It maps input rows to final-norm hidden states; `CodecHead` turns those into codebook-0 choices and
 * `CodePredictor` adds codebooks 1..G-1.
 *
 * ```ts
 * const talker = Talker.load(ckpt, config);
 * const cache = talker.createCache();
 * const hidden = talker.forward(prompt.inputsEmbeds, positions, cache); // [S, 1024]
 * ```
 */
export class Talker implements TalkerProjections {
  private constructor(
    readonly config: Qwen3OmniConfig,
    readonly model: TextModel,
    private readonly textProj: ResizeMlp,
    private readonly hiddenProj: ResizeMlp,
    readonly ttsSpecialEmbeds: tf.Tensor2D,
  ) {}

  /**
   * Loads `talker.model.*`, `talker.text_projection.*`, `talker.hidden_projection.*` and the three tts rows of
   * `thinker.model.embed_tokens`; `weights: 'bf16'` or `'int8'` packs the decoder's and projections' matrices (see WeightDtype).
   */
  static load(ckpt: Checkpoint, config: Qwen3OmniConfig, options: { weights?: WeightDtype } = {}): Talker {
    const t = talkerConfigOf(config);
    const c = t.text_config, Th = t.thinker_hidden_size;
    const model = TextModel.load(ckpt, c, { model: 'talker.model', embed: 'talker.model.codec_embedding' }, { ...options, fuseQkv: true });
    const textProj = loadResizeMlp(ckpt, 'talker.text_projection', Th, c.intermediate_size, c.hidden_size, options.weights);
    const hiddenProj = loadResizeMlp(ckpt, 'talker.hidden_projection', Th, c.intermediate_size, c.hidden_size, options.weights);
    const ids = [config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id];
    if (ids.some((i) => i === undefined)) throw new Error('config.json: tts_bos_token_id, tts_eos_token_id and tts_pad_token_id are needed by the talker');
    // Only three rows of the thinker's table are needed; read it once, keep the projected rows.
    const vocab = config.thinker_config.text_config.vocab_size;
    const table = ckpt.get('thinker.model.embed_tokens.weight', [vocab, Th]).data as Float32Array;
    const rows = new Float32Array(3 * Th);
    ids.forEach((id, i) => rows.set(table.subarray(id! * Th, (id! + 1) * Th), i * Th));
    const ttsSpecialEmbeds = tf.tidy(() => resizeMlp(tf.tensor2d(rows, [3, Th]), textProj));
    return new Talker(config, model, textProj, hiddenProj, ttsSpecialEmbeds);
  }

  get talkerConfig(): TalkerConfig {
    return talkerConfigOf(this.config);
  }

  get hidden(): number {
    return this.model.hidden;
  }

  textProjection(x: tf.Tensor2D): tf.Tensor2D {
    return resizeMlp(x, this.textProj);
  }

  hiddenProjection(x: tf.Tensor2D): tf.Tensor2D {
    return resizeMlp(x, this.hiddenProj);
  }

  /** talker.model.codec_embedding rows, [n, hidden]. */
  codecEmbedding(ids: readonly number[]): tf.Tensor2D {
    return this.model.embed(ids);
  }

  createCache(options: { capacity?: number } = {}): KVCache {
    return this.model.createCache(options);
  }

  /** Final-norm hidden states of `inputsEmbeds` ([S, hidden]) at MRoPE `positions`, appended to `cache` if given. */
  forward(inputsEmbeds: tf.Tensor2D, positions: MropePositions, cache?: KVCache): tf.Tensor2D {
    return this.model.forward(inputsEmbeds, { positions, cache, logits: 'none' }).lastHiddenState;
  }

  dispose(): void {
    this.model.dispose();
    for (const m of [this.textProj, this.hiddenProj]) {
      disposeLinear(m.fc1);
      disposeLinear(m.fc2);
    }
    this.ttsSpecialEmbeds.dispose();
  }
}

function talkerConfigOf(config: Qwen3OmniConfig): TalkerConfig {
  if (!config.talker_config) throw new Error('config.json has no talker_config: this checkpoint has no speech output (Thinking/Captioner)');
  return config.talker_config;
}

/** One codec frame: 16 codes (group 0 from the codec head, 1..15 from the code predictor). */
export interface CodecFrame {
  /** 0-based frame number in the turn. */
  readonly index: number;
  /** [G] codes, group 0 first. */
  readonly codes: Int32Array;
  /**
   * Answer tokens the talker had read when it made this frame (the prefill reads the first; each later frame one
   * more): an upper bound on the text this frame can voice.
   */
  readonly textTokensRead: number;
  /** Raw codebook-0 logits that chose codes[0]. */
  readonly code0Logits: Float32Array;
  /** Raw code-predictor logits, [(G-1) · codebook]. */
  readonly residualLogits: Float32Array;
  /** (t, h, w) position of the talker row that produced codes[0]; for frame 0 the last prefill row. */
  readonly position: readonly [number, number, number];
}

export interface TalkerGenerationOptions {
  /** Codebook-0 sampling (default generate()'s: TALKER_SAMPLING); GREEDY for the fixtures' raw argmax. */
  sampling?: SamplerOptions;
  /** Code-predictor sampling (default CODE_PREDICTOR_SAMPLING). */
  predictorSampling?: SamplerOptions;
  /** Seed of both samplers (default 0); a `seed` inside `sampling` / `predictorSampling` wins. */
  seed?: number;
  /** Stop after this many frames even without codec EOS (default 4096, generate()'s talker max_new_tokens). */
  maxFrames?: number;
  /**
   * Prefill MRoPE positions (t, h, w rows over the prompt). Default: get_rope_index over the talker input ids with
   * `media` (sequential when the prompt holds no media).
   */
  positionIds?: MropePositions;
  /** The prompt's media (image/video grids, audio lengths) for get_rope_index, as given to the thinker. */
  media?: Omit<RopeIndexInput, 'inputIds' | 'attentionMask'>;
  /**
   * The answer text is still being generated: trailing text arrives through `pushText` and ends with `endText`.
   * Default false: `prompt.trailingText` is the whole answer, already ending in tts_eos.
   */
  streamingText?: boolean;
}

/**
 * One turn of speech generation (generate()'s talker loop, spec 3.8): prefill the prompt, then per frame choose
 * code 0 with the codec head, codes 1..G-1 with the code predictor, and feed the talker the sum of the G code
 * embeddings plus the next trailing-text row (tts_pad once the text is used up), until codec EOS.
 *
 * Frames come out one `next()` at a time, so the caller decides between frames whether to go on (an interrupt
 * simply stops calling and disposes). With `streamingText`, trailing text can arrive while speech is generated;
 * a frame that needs a text row not yet pushed waits (`needsText`), which keeps the result identical to the
 * reference's thinker-then-talker order.
 *
 * ```ts
 * const gen = new TalkerGeneration(talker, head, predictor, prompt, { sampling: GREEDY, predictorSampling: GREEDY });
 * for (let f = gen.next(); f; f = gen.next()) code2wavStream.push(f.codes, 1);
 * gen.dispose(); prompt.dispose();
 * ```
 */
export class TalkerGeneration {
  private readonly cache: KVCache;
  private readonly sampler: Sampler;
  private readonly predictorSampler: Sampler;
  private readonly maxFrames: number;
  private readonly text: tf.Tensor2D[] = [];
  private textEnded: boolean;
  private readonly history: number[] = [];
  private ropeDelta = 0;
  private promptLength = 0;
  private positions?: MropePositions;
  private frames = 0;
  private finished = false;
  private nextInput?: tf.Tensor2D; // E0(code0) + Σ residual embeddings of the last frame
  /** Why generation stopped: codec EOS, the frame limit, or not yet. */
  stopReason: 'eos' | 'max-frames' | undefined;

  constructor(
    readonly talker: Talker,
    readonly codecHead: CodecHead,
    readonly codePredictor: CodePredictor,
    readonly prompt: TalkerPrompt,
    private readonly options: TalkerGenerationOptions = {},
  ) {
    this.cache = talker.createCache({ capacity: prompt.inputsEmbeds.shape[0] + 256 });
    const seed = options.seed ?? 0;
    this.sampler = new Sampler({ seed, ...(options.sampling ?? TALKER_SAMPLING) });
    this.predictorSampler = new Sampler({ seed: seed + 1, ...(options.predictorSampling ?? CODE_PREDICTOR_SAMPLING) });
    this.maxFrames = options.maxFrames ?? 4096;
    this.textEnded = !options.streamingText;
    const rows = prompt.trailingText.shape[0];
    for (let i = 0; i < rows; i++) this.text.push(tf.slice(prompt.trailingText, [i, 0], [1, -1]) as tf.Tensor2D);
  }

  /** The prefill's (t, h, w) positions, once the first frame is made. */
  get prefillPositionIds(): MropePositions | undefined {
    return this.positions;
  }

  /** max(prefill position) + 1 − prompt length: decode step f sits at position promptLength + f − 1 + delta. */
  get ropeDeltaValue(): number {
    return this.ropeDelta;
  }

  /** Frames produced so far. */
  get frameCount(): number {
    return this.frames;
  }

  /** True when the next frame needs a trailing-text row that has not been pushed yet (streamingText only). */
  get needsText(): boolean {
    return !this.finished && this.frames > 0 && !this.textEnded && this.frames - 1 >= this.text.length;
  }

  get done(): boolean {
    return this.finished;
  }

  /** Appends projected answer-token rows ([n, hidden], e.g. talker.textProjection(thinker embeddings)); copied. */
  pushText(rows: tf.Tensor2D): void {
    if (this.textEnded) throw new Error('TalkerGeneration.pushText: the text already ended');
    for (let i = 0; i < rows.shape[0]; i++) this.text.push(tf.slice(rows, [i, 0], [1, -1]) as tf.Tensor2D);
  }

  /** The answer is complete: tts_eos follows the pushed text, then tts_pad. */
  endText(): void {
    if (this.textEnded) return;
    this.text.push(tf.slice(this.talker.ttsSpecialEmbeds, [1, 0], [1, -1]) as tf.Tensor2D);
    this.textEnded = true;
  }

  /** The next frame, or undefined once codec EOS or the frame limit is reached. */
  next(): CodecFrame | undefined {
    if (this.finished) return undefined;
    if (this.needsText) throw new Error('TalkerGeneration.next: frame needs the next answer token; pushText() or endText() first');
    if (this.frames >= this.maxFrames) return this.stop('max-frames');
    const { hidden, logits, position } = this.frames === 0 ? this.prefill() : this.step();
    try {
      const code0 = this.codecHead.pick(logits, this.sampler, this.history);
      if (code0 === this.talker.talkerConfig.codec_eos_token_id) return this.stop('eos');
      this.history.push(code0);
      const e0 = this.talker.codecEmbedding([code0]);
      let predicted;
      try {
        predicted = this.codePredictor.predict(hidden, e0, this.predictorSampler);
      } catch (err) {
        e0.dispose();
        throw err;
      }
      this.nextInput?.dispose();
      this.nextInput = tf.tidy(() => tf.add(e0, predicted.embeddingSum) as tf.Tensor2D);
      e0.dispose();
      predicted.embeddingSum.dispose();
      const codes = new Int32Array(1 + predicted.residualCodes.length);
      codes[0] = code0;
      codes.set(predicted.residualCodes, 1);
      const textTokensRead = Math.min(this.frames + 1, this.answerTokens());
      return { index: this.frames++, codes, textTokensRead, code0Logits: logits, residualLogits: predicted.logits, position };
    } finally {
      hidden.dispose();
    }
  }

  /** Frees the cache and the queued text rows (the prompt stays the caller's). */
  dispose(): void {
    this.finished = true;
    this.cache.dispose();
    this.nextInput?.dispose();
    this.nextInput = undefined;
    tf.dispose(this.text);
    this.text.length = 0;
  }

  /** Answer tokens known so far: the first (in the prompt) plus the trailing rows that are text, not tts_eos. */
  private answerTokens(): number {
    return 1 + this.text.length - (this.textEnded ? 1 : 0);
  }

  private stop(reason: 'eos' | 'max-frames'): undefined {
    this.finished = true;
    this.stopReason = reason;
    return undefined;
  }

  private prefill(): { hidden: tf.Tensor2D; logits: Float32Array; position: [number, number, number] } {
    const embeds = this.prompt.inputsEmbeds;
    const S = embeds.shape[0];
    const positions = this.options.positionIds ?? this.prefillPositions();
    if (positions[0].length !== S) throw new Error(`TalkerGeneration: ${positions[0].length} prefill positions for a ${S}-row prompt`);
    let max = -Infinity;
    for (const row of positions) for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
    this.ropeDelta = max + 1 - S;
    this.promptLength = S;
    this.positions = positions;
    const all = this.talker.forward(embeds, positions, this.cache);
    const hidden = tf.tidy(() => tf.slice(all, [S - 1, 0], [1, -1]) as tf.Tensor2D);
    all.dispose();
    return { hidden, logits: this.logitsOf(hidden), position: [positions[0][S - 1], positions[1][S - 1], positions[2][S - 1]] };
  }

  private step(): { hidden: tf.Tensor2D; logits: Float32Array; position: [number, number, number] } {
    const row = this.frames - 1; // decode step f reads trailing row f-1
    const text = row < this.text.length ? this.text[row] : undefined;
    const p = Math.fround(this.promptLength + this.frames - 1 + this.ropeDelta);
    const x = tf.tidy(() => tf.add(this.nextInput!, text ?? tf.slice(this.talker.ttsSpecialEmbeds, [2, 0], [1, -1])) as tf.Tensor2D);
    try {
      const hidden = this.talker.forward(x, [[p], [p], [p]], this.cache);
      return { hidden, logits: this.logitsOf(hidden), position: [p, p, p] };
    } finally {
      x.dispose();
    }
  }

  private logitsOf(hidden: tf.Tensor2D): Float32Array {
    const l = this.codecHead.logits(hidden);
    try {
      return l.dataSync() as Float32Array;
    } finally {
      l.dispose();
    }
  }

  private prefillPositions(): MropePositions {
    const ids = Array.from(this.prompt.inputIds);
    const { positionIds, shape } = getRopeIndex({ inputIds: [ids], ...this.options.media }, talkerRopeIndexConfigOf(this.talker.talkerConfig));
    const S = shape[2];
    return [positionIds.subarray(0, S), positionIds.subarray(S, 2 * S), positionIds.subarray(2 * S, 3 * S)];
  }
}

