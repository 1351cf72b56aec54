import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import { WorkerStage, type BackendName } from '@omniflow/runtime-gpu';
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
  /**
   * Compute log-mel features on a worker thread as requests are queued (see `prefetch`), overlapping them with the
   * batch in progress. Default: on for the wasm backend (single-threaded in Node) when the machine has a second core.
   */
  readonly featureWorker?: boolean;
}

/**
 * A Qwen3-Omni checkpoint as a {@link CaptionModel}: log-mel (on a worker thread for requests announced through
 * `prefetch`, as `CaptionBatcher` does) → the audio encoder, clip by clip → thinker prompt with
 * the audio rows spliced in → `generateBatch` (one decode forward per step for the whole batch) → detokenized text.
 * Text-only requests (summaries) join the same batch.
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
   * `callMs` is the whole of every `caption` call, the stages are parts of it (the rest is sampling and detokenizing);
   * `featuresMs` is the log-mel computed here plus any wait for the worker's. `workerFeatures` counts the clips whose
   * features came from the worker.
   */
  readonly stats = { requests: 0, calls: 0, decodeSteps: 0, workerFeatures: 0, callMs: 0, featuresMs: 0, encoderMs: 0, promptMs: 0, prefillMs: 0, decodeMs: 0 };
  private readonly logMel: LogMel;
  /** The log-mel worker, started on the first prefetch. */
  private worker: Promise<WorkerStage> | undefined;
  private workerCalls = 0;
  /** Features of queued requests being computed on the worker; undefined when the worker failed (computed here then). */
  private readonly prefetched = new WeakMap<CaptionRequest, Promise<Float32Array | undefined>>();

  private constructor(
    readonly id: string,
    readonly model: Qwen3OmniModel,
    private readonly featureWorker: boolean,
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
    const featureWorker = options.featureWorker ?? (tf.getBackend() === 'wasm' && availableParallelism() > 1);
    return new Qwen3OmniCaptioner(id, model, featureWorker);
  }

  /**
   * Starts the log-mel features of an audio request on the worker thread (when `featureWorker` is on), so they are
   * ready when its batch runs. The worker runs the same kernels, so captions do not change; if it fails, `caption`
   * computes the features itself.
   */
  prefetch(request: CaptionRequest): void {
    const audio = request.audio;
    if (!this.featureWorker || !audio || this.prefetched.has(request)) return;
    const nMels = this.logMel.options.nMels;
    this.worker ??= WorkerStage.start({
      module: new URL(import.meta.url.endsWith('.ts') ? './log-mel-worker.ts' : './log-mel-worker.js', import.meta.url),
      backend: tf.getBackend() as BackendName,
      setup: { nMels },
    });
    const worker = this.worker;
    if (this.workerCalls++ === 0) void worker.then((w) => w.keepAlive(true), () => undefined);
    const features = worker
      .then((w) => w.run({ pcm: { dtype: 'float32', shape: [audio.length], data: audio.slice() } }))
      .then((out) => out.out.data as Float32Array)
      .catch(() => undefined)
      .finally(() => {
        // Idle workers must not keep the process alive (a program may never dispose the model).
        if (--this.workerCalls === 0) void worker.then((w) => w.keepAlive(false), () => undefined);
      });
    this.prefetched.set(request, features);
  }

  async caption(requests: readonly CaptionRequest[], generation: CaptionGeneration): Promise<string[]> {
    if (requests.length === 0) return [];
    const started = performance.now();
    const prompts: ThinkerPrompt[] = [];
    const owned: tf.Tensor[] = [];
    try {
      const audioRows = await this.encodeAudio(requests, owned);
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
   * Log-mel and encoder rows of every audio request, clip by clip. Packing the clips of a batch into one log-mel pass
   * or one encoder call gives the same numbers but is about twice as slow on the wasm backend (measured: 8 clips of
   * 30 s, log-mel 690 ms packed against 360 ms clip by clip, encoder 540 against 235): its big tensors fall out of
   * cache, and per-op overhead is small next to 30 s of audio. Features of prefetched requests come from the worker.
   */
  private async encodeAudio(requests: readonly CaptionRequest[], owned: tf.Tensor[]): Promise<Map<number, { embeds: tf.Tensor2D; frames: number }>> {
    const which = requests.flatMap((r, i) => (r.audio ? [i] : []));
    const rows = new Map<number, { embeds: tf.Tensor2D; frames: number }>();
    if (which.length === 0) return rows;
    const nMels = this.logMel.options.nMels;
    const t0 = performance.now();
    const prefetched = await Promise.all(which.map((i) => this.prefetched.get(requests[i])));
    for (const i of which) this.prefetched.delete(requests[i]);
    this.stats.featuresMs += performance.now() - t0;
    for (const [k, i] of which.entries()) {
      const t1 = performance.now();
      const host = prefetched[k];
      if (host) this.stats.workerFeatures += 1;
      const features = host ? tf.tensor2d(host, [nMels, host.length / nMels]) : tf.tidy(() => this.logMel.features(requests[i].audio!));
      const frames = features.shape[1];
      try {
        features.dataSync(); // settle it, so the time split between features and encoder means something
        const t2 = performance.now();
        this.stats.featuresMs += t2 - t1;
        const enc = this.model.audioEncoder!.encode(features, [frames]);
        owned.push(enc.embeds);
        enc.embeds.dataSync();
        this.stats.encoderMs += performance.now() - t2;
        rows.set(i, { embeds: enc.embeds, frames });
      } finally {
        features.dispose();
      }
    }
    return rows;
  }

  dispose(): void {
    void this.worker?.then((w) => w.close(), () => undefined);
    this.worker = undefined;
    this.logMel.dispose();
    this.model.dispose();
  }
}
