import * as tf from '@tensorflow/tfjs-core';
import { LogMel } from '../media/log-mel.js';
import { loadQwen3Omni, type Qwen3OmniModel } from '../models/qwen3-omni/load.js';
import { Sampler } from '../models/qwen3-omni/sampler.js';
import { prepareThinkerPrompt, type ThinkerContentPart, type ThinkerPrompt } from '../models/qwen3-omni/thinker-prompt.js';
import type { Qwen3OmniTokenizer } from '../models/qwen3-omni/tokenizer.js';
import type { CaptionGeneration, CaptionModel, CaptionRequest } from './caption-model.js';
import { generateBatch } from './generate-batch.js';
import { modelFolderId } from './model-folder-id.js';

export interface Qwen3OmniCaptionerOptions {
  /** Tokenizer folder or instance when the model folder has none (the tiny fixture: `fixtureTokenizer()`). */
  readonly tokenizer?: string | Qwen3OmniTokenizer;
  /** Id to report; default `modelFolderId(dir)`. */
  readonly id?: string;
}

/**
 * A Qwen3-Omni checkpoint as a {@link CaptionModel}: log-mel and the audio encoder over all clips of the batch at once → thinker prompt with the audio rows spliced in → `generateBatch` (one decode forward per step for the whole
 * batch) → detokenized text. Text-only requests (summaries) join the same batch.
 *
 * ```ts
 * const model = await Qwen3OmniCaptioner.load('models/omniflow-captioner');
 * const [text] = await model.caption([{ prompt: 'Describe this audio.', audio: pcm16k }], { maxNewTokens: 64, temperature: 0, topK: 0, topP: 1, seed: 0 });
 * model.dispose();
 * ```
 */
export class Qwen3OmniCaptioner implements CaptionModel {
  /**
   * Requests served, model calls, decode steps (a batch counts once per step) and where the time went, in ms:
   * `callMs` is the whole of every `caption` call, the stages are parts of it (the rest is sampling and detokenizing).
   */
  readonly stats = { requests: 0, calls: 0, decodeSteps: 0, callMs: 0, featuresMs: 0, encoderMs: 0, promptMs: 0, prefillMs: 0, decodeMs: 0 };
  private readonly logMel: LogMel;

  private constructor(
    readonly id: string,
    readonly model: Qwen3OmniModel,
  ) {
    this.logMel = new LogMel({ nMels: model.config.thinker_config.audio_config.num_mel_bins });
  }

  /** Loads the thinker and the audio encoder of a checkpoint folder (the vision encoder and speech modules are left out). */
  static async load(dir: string, options: Qwen3OmniCaptionerOptions = {}): Promise<Qwen3OmniCaptioner> {
    const id = options.id ?? modelFolderId(dir);
    const model = await loadQwen3Omni(dir, { modules: ['thinker', 'audio_tower'], tokenizer: options.tokenizer });
    if (!model.audioEncoder) {
      model.dispose();
      throw new Error(`model folder ${dir}: the checkpoint has no audio encoder (thinker.audio_tower.*), so it cannot caption audio`);
    }
    return new Qwen3OmniCaptioner(id, model);
  }

  async caption(requests: readonly CaptionRequest[], generation: CaptionGeneration): Promise<string[]> {
    if (requests.length === 0) return [];
    const started = performance.now();
    const prompts: ThinkerPrompt[] = [];
    const owned: tf.Tensor[] = [];
    try {
      const audioRows = this.encodeAudio(requests, owned);
      const t0 = performance.now();
      for (let i = 0; i < requests.length; i++) {
        const r = requests[i];
        const content: ThinkerContentPart[] = [];
        const a = audioRows.get(i);
        if (a) content.push({ type: 'audio', embeds: a.embeds, frames: a.frames });
        if (r.prompt || !a) content.push({ type: 'text', text: r.prompt });
        prompts.push(prepareThinkerPrompt(this.model, [{ role: 'user', content }]));
      }
      for (const t of owned.splice(0)) t.dispose(); // the prompts hold their own copies of the audio rows
      this.stats.promptMs += performance.now() - t0;
      const sampler = () =>
        new Sampler(generation.temperature === 0 ? { greedy: true } : { temperature: generation.temperature, topK: generation.topK, topP: generation.topP, seed: generation.seed });
      const tokens = await generateBatch(
        this.model.thinker,
        prompts.map((p) => ({ inputIds: p.prompt.ids, inputsEmbeds: p.inputsEmbeds, positions: p.positions, ropeDelta: p.ropeDelta, sampler: sampler() })),
        { maxNewTokens: generation.maxNewTokens, stopTokens: this.model.tokenizer.stopTokenIds },
        this.stats,
      );
      this.stats.requests += requests.length;
      this.stats.calls += 1;
      return tokens.map((t) => this.model.tokenizer.decode(t, { skipSpecialTokens: true }).trim());
    } finally {
      for (const p of prompts) p.dispose();
      for (const t of owned) t.dispose();
      this.stats.callMs += performance.now() - started;
    }
  }

  /**
   * Log-mel and encoder rows of every audio request, the whole batch at once: one log-mel pass over the frames of
   * all clips, then one encoder call over every clip of at least one full chunk (2·n_window frames). Those clips pad
   * their last chunk to a full one whether alone or packed, and the encoder's windows never cross clips, so their
   * rows are the ones a call per clip gives. A shorter clip is padded only to its own length when alone, so it is
   * encoded alone, as it would be in a batch of one.
   */
  private encodeAudio(requests: readonly CaptionRequest[], owned: tf.Tensor[]): Map<number, { embeds: tf.Tensor2D; frames: number }> {
    const which = requests.flatMap((r, i) => (r.audio ? [i] : []));
    const rows = new Map<number, { embeds: tf.Tensor2D; frames: number }>();
    if (which.length === 0) return rows;
    const t0 = performance.now();
    const { features, frames } = this.logMel.featuresOfClips(which.map((i) => requests[i].audio!));
    try {
      features.dataSync(); // settle it, so the time split between features and encoder means something
      const t1 = performance.now();
      this.stats.featuresMs += t1 - t0;
      const encoder = this.model.audioEncoder!;
      const fullChunk = 2 * encoder.config.n_window;
      const offsets = frames.map((_, k) => frames.slice(0, k).reduce((a, b) => a + b, 0));
      const packed = which.flatMap((_, k) => (frames[k] >= fullChunk ? [k] : []));
      const alone = which.flatMap((_, k) => (frames[k] < fullChunk ? [k] : []));
      const encode = (ks: number[]) => {
        // Features of these clips, side by side (all of them when every clip is packed: no copy).
        const f = ks.length === which.length ? features : (tf.tidy(() => tf.concat(ks.map((k) => tf.slice(features, [0, offsets[k]], [-1, frames[k]])), 1)) as tf.Tensor2D);
        try {
          const enc = encoder.encode(f, ks.map((k) => frames[k]));
          const parts = ks.length === 1 ? [enc.embeds] : (tf.split(enc.embeds, enc.outputLengths, 0) as tf.Tensor2D[]);
          if (ks.length > 1) enc.embeds.dispose();
          ks.forEach((k, n) => {
            owned.push(parts[n]);
            rows.set(which[k], { embeds: parts[n], frames: frames[k] });
          });
        } finally {
          if (f !== features) f.dispose();
        }
      };
      if (packed.length) encode(packed);
      for (const k of alone) encode([k]);
      for (const { embeds } of rows.values()) embeds.dataSync();
      this.stats.encoderMs += performance.now() - t1;
    } finally {
      features.dispose();
    }
    return rows;
  }

  dispose(): void {
    this.logMel.dispose();
    this.model.dispose();
  }
}
