import type { CaptionGeneration, CaptionModel, CaptionRequest } from './caption-model.js';

export interface CaptionBatcherOptions {
  /** Most requests in one model call. */
  readonly maxBatch: number;
  /** How long the first waiting request may wait for company before a smaller batch runs. */
  readonly maxWaitMs: number;
  readonly generation: CaptionGeneration;
}

interface Waiting {
  readonly request: CaptionRequest;
  readonly resolve: (text: string) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Gathers caption requests from many files into model batches: one batch runs at a time (the model owns
 * the CPU), and whatever arrived meanwhile forms the next one, up to `maxBatch`. A batch that fails
 * fails every request in it with the model's error.
 *
 * ```ts
 * const batcher = new CaptionBatcher(model, { maxBatch: 8, maxWaitMs: 5, generation });
 * const texts = await Promise.all(segments.map((s) => batcher.caption({ prompt, audio: s.pcm })));
 * ```
 */
export class CaptionBatcher {
  private readonly queue: Waiting[] = [];
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  /** Model calls made and requests served, for reports and benchmarks. */
  readonly stats = { batches: 0, requests: 0 };

  constructor(
    private readonly model: CaptionModel,
    private readonly options: CaptionBatcherOptions,
  ) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1) throw new Error(`CaptionBatcher: maxBatch must be an integer >= 1, got ${options.maxBatch}`);
    if (!(options.maxWaitMs >= 0)) throw new Error(`CaptionBatcher: maxWaitMs must be >= 0, got ${options.maxWaitMs}`);
  }

  /** The decoding settings every request of this batcher uses. */
  get generation(): CaptionGeneration {
    return this.options.generation;
  }

  /** Number of requests waiting for a batch. */
  get pending(): number {
    return this.queue.length;
  }

  caption(request: CaptionRequest): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.running || this.queue.length === 0) return;
    if (this.queue.length >= this.options.maxBatch) {
      clearTimeout(this.timer);
      this.timer = undefined;
      void this.runBatch();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.runBatch();
      }, this.options.maxWaitMs);
    }
  }

  private async runBatch(): Promise<void> {
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    const batch = this.queue.splice(0, this.options.maxBatch);
    try {
      const texts = await this.model.caption(
        batch.map((w) => w.request),
        this.options.generation,
      );
      if (texts.length !== batch.length) throw new Error(`caption model ${this.model.id} returned ${texts.length} captions for ${batch.length} requests`);
      this.stats.batches += 1;
      this.stats.requests += batch.length;
      batch.forEach((w, i) => w.resolve(texts[i]));
    } catch (err) {
      for (const w of batch) w.reject(err);
    } finally {
      this.running = false;
      this.schedule();
    }
  }

  /** Stops the wait timer; requests still queued are rejected. */
  dispose(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.queue.splice(0)) w.reject(new Error('CaptionBatcher disposed with requests still waiting'));
  }
}
