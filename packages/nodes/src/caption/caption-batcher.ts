import type { CaptionGeneration, CaptionModel, CaptionRequest } from './caption-model.js';

export interface CaptionBatcherOptions {
  /** Most requests in one model call. */
  readonly maxBatch: number;
  /**
   * Shortest time a partly filled batch waits for company while some producer is still decoding. The wait actually
   * used is a quarter of the last model call's duration when that is longer (capped at 2 s; 1 s before the first
   * call): a call that takes a second is worth a quarter second's wait to double its batch. A batch never waits once
   * every open producer is itself waiting for captions (nothing more can arrive).
   */
  readonly maxWaitMs: number;
  readonly generation: CaptionGeneration;
}

interface Waiting {
  readonly request: CaptionRequest;
  readonly resolve: (text: string) => void;
  readonly reject: (err: unknown) => void;
}

/** A source of requests (one file being captioned) that tells the batcher when it waits for captions. */
export interface CaptionProducer {
  /** Awaits `p` as "blocked on captions": when every open producer is, the waiting requests run at once. */
  waitFor<T>(p: Promise<T>): Promise<T>;
  /** No more requests from this producer. */
  close(): void;
}

/**
 * Gathers caption requests from many files into model batches: one batch runs at a time (the model owns
 * the CPU), and whatever arrived meanwhile forms the next one, up to `maxBatch`. A partial batch runs as soon as
 * every open producer is waiting for captions, or after a wait (see `maxWaitMs`). A batch that fails
 * fails every request in it with the model's error.
 *
 * ```ts
 * const batcher = new CaptionBatcher(model, { maxBatch: 8, maxWaitMs: 20, generation });
 * const texts = await Promise.all(segments.map((s) => batcher.caption({ prompt, audio: s.pcm })));
 * ```
 */
export class CaptionBatcher {
  private readonly queue: Waiting[] = [];
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  private lastCallMs: number | undefined;
  private producers = 0;
  private blocked = 0;
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
    this.model.prefetch?.(request);
    return new Promise<string>((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      this.schedule();
    });
  }

  /**
   * Registers a producer of requests; see {@link CaptionProducer}.
   *
   * ```ts
   * const producer = batcher.openProducer();
   * try { const text = await producer.waitFor(batcher.caption(request)); } finally { producer.close(); }
   * ```
   */
  openProducer(): CaptionProducer {
    this.producers += 1;
    let open = true;
    return {
      waitFor: async <T>(p: Promise<T>): Promise<T> => {
        this.blocked += 1;
        this.schedule();
        try {
          return await p;
        } finally {
          this.blocked -= 1;
        }
      },
      close: () => {
        if (!open) return;
        open = false;
        this.producers -= 1;
        this.schedule();
      },
    };
  }

  private schedule(): void {
    if (this.running || this.queue.length === 0) return;
    const nothingMoreComing = this.producers > 0 && this.blocked >= this.producers;
    if (this.queue.length >= this.options.maxBatch || nothingMoreComing) {
      clearTimeout(this.timer);
      this.timer = undefined;
      void this.runBatch();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.runBatch();
      }, this.waitMs());
    }
  }

  private waitMs(): number {
    const adaptive = this.lastCallMs === undefined ? 1000 : Math.min(2000, this.lastCallMs / 4);
    return Math.max(this.options.maxWaitMs, adaptive);
  }

  private async runBatch(): Promise<void> {
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    const batch = this.queue.splice(0, this.options.maxBatch);
    const t0 = performance.now();
    try {
      const texts = await this.model.caption(
        batch.map((w) => w.request),
        this.options.generation,
      );
      if (texts.length !== batch.length) throw new Error(`caption model ${this.model.id} returned ${texts.length} captions for ${batch.length} requests`);
      this.lastCallMs = performance.now() - t0;
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
