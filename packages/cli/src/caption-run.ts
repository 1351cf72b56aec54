import { hostname } from 'node:os';
import {
  AudioFileError,
  CaptionBatcher,
  captionAudioFile,
  captionOptionsHash,
  generationOf,
  type CaptionModel,
  type CaptionJobOptions,
} from '@omniflow/nodes';
import type { CaptionErrorRecord, CaptionOkRecord, CaptionRecord, CaptionStore } from './caption-store.js';

/** Shortest wait of a partly filled batch for segments of other files (the batcher adapts it to the model's speed). */
export const BATCH_WAIT_MS = 20;

/** What the caption runner reports after each file (also for files skipped because they were done). */
export interface CaptionProgressEvent {
  readonly record: CaptionRecord;
  /** True when the record was already in the output (resume), not made by this run. */
  readonly skipped: boolean;
}

export interface CaptionRunOptions {
  readonly model: CaptionModel;
  readonly options: CaptionJobOptions;
  /** Files decoded and captioned at once; their segments share model batches. */
  readonly concurrency: number;
  /** Most segments in one model call. */
  readonly batchSize: number;
  /** Redo files whose earlier record is an error (by default they count as done). */
  readonly retryErrors?: boolean;
  readonly onFile?: (event: CaptionProgressEvent) => void;
  readonly signal?: AbortSignal;
}

export interface CaptionRunSummary {
  readonly files: number;
  readonly captioned: number;
  readonly failed: number;
  /** Files whose record was already there; `failedBefore` of them are error records. */
  readonly skipped: number;
  readonly failedBefore: number;
  /** Seconds of audio captioned by this run. */
  readonly audioSeconds: number;
  readonly wallSeconds: number;
  /** Model calls and the segments/summaries they served (requests / batches = mean batch size). */
  readonly batches: number;
  readonly requests: number;
}

/**
 * Captions `files` into `store`, skipping those the store already holds for these options and model,
 * `concurrency` files at a time with their segments batched together. A file that cannot be decoded (or
 * whose captioning throws) becomes an error record and the run goes on. Records are appended as files
 * finish, so a run killed at any point loses at most the files in flight.
 *
 * ```ts
 * const store = CaptionStore.open('captions.jsonl');
 * const summary = await captionFiles(files, store, { model, options: parseCaptionOptions(), concurrency: 4, batchSize: 8 });
 * store.close();
 * ```
 */
export async function captionFiles(files: readonly string[], store: CaptionStore, run: CaptionRunOptions): Promise<CaptionRunSummary> {
  if (!Number.isInteger(run.concurrency) || run.concurrency < 1) throw new Error(`caption: --concurrency must be an integer >= 1, got ${run.concurrency}`);
  if (!Number.isInteger(run.batchSize) || run.batchSize < 1) throw new Error(`caption: --batch-size must be an integer >= 1, got ${run.batchSize}`);
  const started = performance.now();
  const optionsHash = captionOptionsHash(run.options, run.model.id);
  const batcher = new CaptionBatcher(run.model, { maxBatch: run.batchSize, maxWaitMs: BATCH_WAIT_MS, generation: generationOf(run.options) });
  const by = `${hostname()}:${process.pid}`;
  let captioned = 0;
  let failed = 0;
  let skipped = 0;
  let failedBefore = 0;
  let audioSeconds = 0;

  const todo: string[] = [];
  for (const path of files) {
    const prior = store.get(path, optionsHash);
    if (prior && !(run.retryErrors && prior.status === 'error')) {
      skipped += 1;
      if (prior.status === 'error') failedBefore += 1;
      run.onFile?.({ record: prior, skipped: true });
    } else {
      todo.push(path);
    }
  }

  let next = 0;
  const lane = async () => {
    while (next < todo.length && !run.signal?.aborted) {
      const path = todo[next++];
      const record = await captionOne(path, batcher, run, optionsHash, by);
      if (run.signal?.aborted) return; // stopping: the file is redone next time rather than half-trusted
      store.append(record);
      if (record.status === 'ok') {
        captioned += 1;
        audioSeconds += record.duration;
      } else {
        failed += 1;
      }
      run.onFile?.({ record, skipped: false });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(run.concurrency, todo.length) }, lane));
  } finally {
    batcher.dispose();
  }
  return {
    files: files.length,
    captioned,
    failed,
    skipped,
    failedBefore,
    audioSeconds,
    wallSeconds: (performance.now() - started) / 1000,
    batches: batcher.stats.batches,
    requests: batcher.stats.requests,
  };
}

/** Captions one file into a record; never throws for a bad file, only records it. */
export async function captionOne(path: string, batcher: CaptionBatcher, run: Pick<CaptionRunOptions, 'model' | 'options'>, optionsHash: string, by: string): Promise<CaptionOkRecord | CaptionErrorRecord> {
  const t0 = performance.now();
  // Field order is the order people read a line in: what, outcome, then provenance.
  const tail = () => ({ model: run.model.id, optionsHash, options: run.options, elapsed: round3((performance.now() - t0) / 1000), finishedAt: new Date().toISOString(), by });
  try {
    const c = await captionAudioFile(path, batcher, run.options);
    const segments = c.segments.map((s) => ({ start: round3(s.start), end: round3(s.end), text: s.text }));
    return { path, status: 'ok', duration: round3(c.duration), segments, summary: c.summary, ...tail() };
  } catch (err) {
    const reason = err instanceof AudioFileError ? err.reason : 'caption-failed';
    return { path, status: 'error', error: { reason, message: (err as Error).message }, ...tail() };
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;
