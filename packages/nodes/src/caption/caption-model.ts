/**
 * The contract between caption jobs and a model. Jobs hand over many requests at once (segments of
 * different files), so one call can run them as one batch; the model decides how it batches inside.
 */

/** Sample rate of the PCM a caption model takes: Qwen3-Omni's audio front end runs at 16 kHz mono. */
export const CAPTION_SAMPLE_RATE = 16_000;

/** How captions are decoded. `temperature: 0` is greedy, so a caption is a pure function of its audio. */
export interface CaptionGeneration {
  readonly maxNewTokens: number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  /** Seed for sampling when `temperature > 0`; each request derives its own stream from it. */
  readonly seed: number;
}

/** One caption to write: audio (16 kHz mono PCM in [-1, 1]) with an optional instruction, or text alone (summaries). */
export interface CaptionRequest {
  /** Instruction after the audio; '' sends the audio alone. */
  readonly prompt: string;
  readonly audio?: Float32Array;
}

/**
 * A model that captions. `caption` returns one text per request, in order; requests in one call may be
 * run as one batch. Implementations own their tensors and free them in `dispose()`.
 *
 * ```ts
 * const [text] = await model.caption([{ prompt: 'Describe this audio.', audio: pcm16k }], generation);
 * ```
 */
export interface CaptionModel {
  /** Names the weights (folder name and a content hash) so outputs can say which model wrote them. */
  readonly id: string;
  caption(requests: readonly CaptionRequest[], generation: CaptionGeneration): Promise<string[]>;
  /**
   * Optional: told about a request as soon as it is queued, before its batch runs, so work that depends on the
   * request alone (audio features) can start early, e.g. on another thread. Must not change what `caption` returns.
   */
  prefetch?(request: CaptionRequest): void;
  dispose(): void;
}
