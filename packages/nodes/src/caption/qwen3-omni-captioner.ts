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
 * A Qwen3-Omni checkpoint as a {@link CaptionModel}: log-mel → audio encoder (all clips of a call in one encoder
 * run) → thinker prompt with the audio rows spliced in → `generateBatch` (one decode forward per step for the whole
 * batch) → detokenized text. Text-only requests (summaries) join the same batch.
 *
 * ```ts
 * const model = await Qwen3OmniCaptioner.load('models/omniflow-captioner');
 * const [text] = await model.caption([{ prompt: 'Describe this audio.', audio: pcm16k }], { maxNewTokens: 64, temperature: 0, topK: 0, topP: 1, seed: 0 });
 * model.dispose();
 * ```
 */
export class Qwen3OmniCaptioner implements CaptionModel {
  /** Decode steps run so far (a batch of B sequences counts once per step). */
  readonly stats = { decodeSteps: 0, requests: 0 };
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
    const prompts: ThinkerPrompt[] = [];
    const owned: tf.Tensor[] = [];
    try {
      const audioRows = this.encodeAudio(requests, owned);
      for (let i = 0; i < requests.length; i++) {
        const r = requests[i];
        const content: ThinkerContentPart[] = [];
        const a = audioRows.get(i);
        if (a) content.push({ type: 'audio', embeds: a.embeds, frames: a.frames });
        if (r.prompt || !a) content.push({ type: 'text', text: r.prompt });
        prompts.push(prepareThinkerPrompt(this.model, [{ role: 'user', content }]));
      }
      for (const t of owned.splice(0)) t.dispose(); // the prompts hold their own copies of the audio rows
      const sampler = () =>
        new Sampler(generation.temperature === 0 ? { greedy: true } : { temperature: generation.temperature, topK: generation.topK, topP: generation.topP, seed: generation.seed });
      const tokens = await generateBatch(
        this.model.thinker,
        prompts.map((p) => ({ inputIds: p.prompt.ids, inputsEmbeds: p.inputsEmbeds, positions: p.positions, ropeDelta: p.ropeDelta, sampler: sampler() })),
        { maxNewTokens: generation.maxNewTokens, stopTokens: this.model.tokenizer.stopTokenIds },
        this.stats,
      );
      this.stats.requests += requests.length;
      return tokens.map((t) => this.model.tokenizer.decode(t, { skipSpecialTokens: true }).trim());
    } finally {
      for (const p of prompts) p.dispose();
      for (const t of owned) t.dispose();
    }
  }

  /** Log-mel of every audio request, then one encoder run over all of them; rows split back per request. */
  private encodeAudio(requests: readonly CaptionRequest[], owned: tf.Tensor[]): Map<number, { embeds: tf.Tensor2D; frames: number }> {
    const which = requests.flatMap((r, i) => (r.audio ? [i] : []));
    const rows = new Map<number, { embeds: tf.Tensor2D; frames: number }>();
    if (which.length === 0) return rows;
    const feats = which.map((i) => tf.tidy(() => this.logMel.features(tf.tensor1d(requests[i].audio!))));
    const frames = feats.map((f) => f.shape[1]);
    const all = tf.concat(feats, 1) as tf.Tensor2D;
    for (const f of feats) f.dispose();
    try {
      const enc = this.model.audioEncoder!.encode(all, frames);
      const parts = tf.split(enc.embeds, enc.outputLengths, 0) as tf.Tensor2D[];
      enc.embeds.dispose();
      which.forEach((i, k) => {
        owned.push(parts[k]);
        rows.set(i, { embeds: parts[k], frames: frames[k] });
      });
    } finally {
      all.dispose();
    }
    return rows;
  }

  dispose(): void {
    this.logMel.dispose();
    this.model.dispose();
  }
}
