import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { Queue, UnrecoverableError, Worker, MetricsTime, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { CaptionBatcher, captionOptionsHash, generationOf, type CaptionModel, type CaptionJobOptions } from '@omniflow/nodes';
import { BATCH_WAIT_MS, captionOne } from './caption-run.js';
import type { CaptionErrorRecord, CaptionRecord } from './caption-store.js';

/** Default BullMQ queue name for caption jobs. */
export const DEFAULT_CAPTION_QUEUE = 'omniflow-caption';

/** What a caption job carries: everything a worker on another machine needs, nothing it must share. */
export interface CaptionJobData {
  readonly path: string;
  readonly options: CaptionJobOptions;
  /** Model folder as the enqueuer named it (`null`: the built-in model). A worker's `--model` overrides it. */
  readonly modelDir: string | null;
  /** The model id the enqueuer expects; a worker whose model has another id refuses the job. */
  readonly modelId: string;
  readonly optionsHash: string;
}

export interface QueueConnection {
  /** `redis://[user:pass@]host:port[/db]` */
  readonly url: string;
  readonly name?: string;
  /** BullMQ key prefix (default `bull`). */
  readonly prefix?: string;
}

const prefixOf = (c: QueueConnection) => c.prefix ?? 'bull';

/**
 * A BullMQ Queue handle. Its connection reports errors as events; unheard, a late 'Connection is closed' (a handle
 * closed while still connecting) would crash the process. Real failures surface as rejected calls instead.
 */
function openQueue<T>(c: QueueConnection): Queue<T> {
  const queue = new Queue<T>(nameOf(c), { connection: { url: c.url }, prefix: prefixOf(c) });
  queue.on('error', () => undefined);
  return queue;
}
const nameOf = (c: QueueConnection) => c.name ?? DEFAULT_CAPTION_QUEUE;
/** Results live beside BullMQ's own keys: one hash field per job id, written once. */
export const resultsKey = (c: QueueConnection) => `${prefixOf(c)}:${nameOf(c)}:omniflow:results`;
const statsKey = (c: QueueConnection) => `${prefixOf(c)}:${nameOf(c)}:omniflow:stats`;

/** The job id of a file under given options: the same file and options always map to the same job. */
export function captionJobId(path: string, optionsHash: string): string {
  // BullMQ ids may not be integers nor contain ':'.
  return `cap-${createHash('sha256').update(`${optionsHash}\u0000${path}`).digest('hex').slice(0, 32)}`;
}

/**
 * Connects to Redis once with no retries, so a wrong URL fails in seconds with the reason instead of
 * hanging in ioredis' reconnect loop.
 *
 * ```ts
 * await checkRedis('redis://127.0.0.1:6379');
 * ```
 */
export async function checkRedis(url: string): Promise<void> {
  const probe = new Redis(url, { lazyConnect: true, connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  // The socket's own error (ECONNREFUSED, ENOTFOUND, auth) says more than the 'Connection is closed' that follows.
  let first: Error | undefined;
  probe.on('error', (err: Error) => (first ??= err));
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    throw new Error(`cannot reach Redis at ${redactUrl(url)}: ${(first ?? (err as Error)).message}`, { cause: err });
  } finally {
    probe.disconnect();
  }
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

// HSETNX the record; only the first writer bumps the counters. One script, so a crash cannot split them.
const WRITE_ONCE = `
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  redis.call('HINCRBYFLOAT', KEYS[2], 'audioSeconds', ARGV[4])
  redis.call('HSETNX', KEYS[2], 'firstAt', ARGV[5])
  redis.call('HSET', KEYS[2], 'lastAt', ARGV[5])
  return 1
end
return 0`;

/** Writes a job's record unless one is there already; true when this call wrote it. */
export async function writeResultOnce(redis: Redis, c: QueueConnection, jobId: string, record: CaptionRecord): Promise<boolean> {
  const audio = record.status === 'ok' ? record.duration : 0;
  const counter = record.status === 'ok' ? 'captioned' : 'failed';
  const wrote = await redis.eval(WRITE_ONCE, 2, resultsKey(c), statsKey(c), jobId, JSON.stringify(record), counter, String(audio), String(Date.now()));
  return wrote === 1;
}

export interface EnqueueOptions {
  readonly attempts?: number;
  /** First retry delay; each further retry doubles it. */
  readonly backoffMs?: number;
}

/**
 * Adds one BullMQ job per file. Job ids come from (file, options, model), so enqueuing the same files
 * twice adds nothing new: BullMQ ignores an id it already holds, and results are keyed by the same id.
 *
 * ```ts
 * const ids = await enqueueCaptionJobs({ url: 'redis://127.0.0.1:6379' }, files, { options, modelDir: null, modelId });
 * ```
 */
export async function enqueueCaptionJobs(
  c: QueueConnection,
  files: readonly string[],
  what: { options: CaptionJobOptions; modelDir: string | null; modelId: string },
  opts: EnqueueOptions = {},
): Promise<string[]> {
  const queue = openQueue<CaptionJobData>(c);
  try {
    const optionsHash = captionOptionsHash(what.options, what.modelId);
    const jobs = files.map((path) => ({
      name: 'caption',
      data: { path, options: what.options, modelDir: what.modelDir, modelId: what.modelId, optionsHash },
      opts: {
        jobId: captionJobId(path, optionsHash),
        attempts: opts.attempts ?? 3,
        backoff: { type: 'exponential' as const, delay: opts.backoffMs ?? 2000 },
        // Kept a week so re-enqueuing finished files stays a no-op; results live in their own hash.
        removeOnComplete: { age: 7 * 24 * 3600 },
        removeOnFail: { age: 7 * 24 * 3600 },
      },
    }));
    for (let i = 0; i < jobs.length; i += 500) await queue.addBulk(jobs.slice(i, i + 500));
    return jobs.map((j) => j.opts.jobId);
  } finally {
    await queue.close();
  }
}

export interface CollectOptions {
  /** Called once per job as its record appears (records of failed jobs with no record are made up from BullMQ's failure reason). */
  readonly onRecord: (record: CaptionRecord, jobId: string) => void;
  readonly pollMs?: number;
  readonly signal?: AbortSignal;
  /** Only for records synthesised from failed jobs. */
  readonly describe: (jobId: string) => { path: string; model: string; options: CaptionJobOptions; optionsHash: string };
}

/**
 * Waits for the given jobs' records in Redis and hands each over once. A job that BullMQ failed without a
 * record (stalled too often, for instance) is reported as an error record built from its failure reason.
 *
 * ```ts
 * await collectCaptionResults(conn, ids, { onRecord: (r) => store.append(r), describe });
 * ```
 */
export async function collectCaptionResults(c: QueueConnection, jobIds: readonly string[], opts: CollectOptions): Promise<void> {
  const redis = new Redis(c.url, { maxRetriesPerRequest: null });
  redis.on('error', () => undefined);
  // Opened only if some job needs its state looked up (most runs never do).
  let queue: Queue<CaptionJobData> | undefined;
  const pending = new Set(jobIds);
  const pollMs = opts.pollMs ?? 500;
  let lastFailedCheck = 0;
  try {
    while (pending.size > 0 && !opts.signal?.aborted) {
      const ids = [...pending];
      for (let i = 0; i < ids.length; i += 1000) {
        const chunk = ids.slice(i, i + 1000);
        const values = await redis.hmget(resultsKey(c), ...chunk);
        values.forEach((v, k) => {
          if (v === null) return;
          pending.delete(chunk[k]);
          opts.onRecord(JSON.parse(v) as CaptionRecord, chunk[k]);
        });
      }
      if (pending.size > 0 && Date.now() - lastFailedCheck > 5000) {
        lastFailedCheck = Date.now();
        queue ??= openQueue<CaptionJobData>(c);
        for (const id of pending) {
          const job = await queue.getJob(id);
          if (!job) continue;
          if ((await job.getState()) !== 'failed') continue;
          // A failure may have written its record just now: take that one if it is there.
          const late = await redis.hget(resultsKey(c), id);
          const record: CaptionRecord = late ? (JSON.parse(late) as CaptionRecord) : failedRecord(opts.describe(id), job);
          pending.delete(id);
          opts.onRecord(record, id);
        }
      }
      if (pending.size > 0) await sleep(pollMs, opts.signal);
    }
  } finally {
    await queue?.close();
    redis.disconnect();
  }
}

function failedRecord(d: { path: string; model: string; options: CaptionJobOptions; optionsHash: string }, job: Job): CaptionErrorRecord {
  return { ...d, status: 'error', error: { reason: 'job-failed', message: `${d.path}: job ${job.id} failed after ${job.attemptsMade} attempt(s): ${job.failedReason}` }, elapsed: 0, finishedAt: new Date().toISOString(), by: `job ${job.id}` };
}

export interface CaptionWorkerOptions {
  /** Loads (and caches) the model a job asks for; `override` set means every job uses that one. */
  readonly loadModel: (modelDir: string | null) => Promise<CaptionModel>;
  /** Jobs (files) worked on at once; their segments share model batches. */
  readonly concurrency: number;
  readonly batchSize: number;
  /** How long a job's lock lasts without renewal: a dead worker's job is re-picked after about this long. */
  readonly lockDurationMs?: number;
  /** Times a job may be found stalled before it fails. */
  readonly maxStalledCount?: number;
  readonly log?: (event: Record<string, unknown>) => void;
}

/**
 * A running caption worker: takes jobs from the queue, captions the file, writes its record once (keyed by
 * job id, so a job re-run after its worker died mid-way does not write twice), and retries failures of
 * the model with backoff. A file that cannot be decoded is recorded as an error and not retried.
 *
 * ```ts
 * const worker = await startCaptionWorker(conn, { loadModel, concurrency: 4, batchSize: 8 });
 * process.on('SIGTERM', () => void worker.close());
 * ```
 */
export async function startCaptionWorker(c: QueueConnection, opts: CaptionWorkerOptions): Promise<{ close: () => Promise<void>; worker: Worker<CaptionJobData> }> {
  const redis = new Redis(c.url, { maxRetriesPerRequest: null });
  const log = opts.log ?? (() => undefined);
  redis.on('error', (err: Error) => log({ event: 'error', error: `redis: ${err.message}` }));
  const by = `${hostname()}:${process.pid}`;
  const batchers = new Map<CaptionModel, CaptionBatcher>();
  const batcherFor = (model: CaptionModel, options: CaptionJobOptions): CaptionBatcher => {
    // One batcher per (model, generation settings): requests in a batch must decode alike.
    let b = batchers.get(model);
    const gen = generationOf(options);
    if (b && JSON.stringify(b.generation) !== JSON.stringify(gen)) b = undefined;
    if (!b) {
      b = new CaptionBatcher(model, { maxBatch: opts.batchSize, maxWaitMs: BATCH_WAIT_MS, generation: gen });
      batchers.set(model, b);
    }
    return b;
  };

  const process_ = async (job: Job<CaptionJobData>) => {
    const id = job.id!;
    const { path, options, modelDir, modelId } = job.data;
    log({ event: 'active', job: id, path, attempt: job.attemptsMade + 1 });
    if ((await redis.hexists(resultsKey(c), id)) === 1) {
      // An earlier run of this job wrote its record and then lost its lock: nothing left to do.
      log({ event: 'already-written', job: id, path });
      return { written: false };
    }
    const model = await opts.loadModel(modelDir);
    if (model.id !== modelId) throw new UnrecoverableError(`job ${id}: this worker's model is ${model.id} but the job was enqueued for ${modelId}`);
    const record = await captionOne(path, batcherFor(model, options), { model, options }, job.data.optionsHash, `${by} job ${id}`);
    if (record.status === 'error' && record.error.reason === 'caption-failed') {
      const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      if (!last) throw new Error(record.error.message); // the model failed, not the file: retry with backoff
      await writeResultOnce(redis, c, id, record);
      throw new UnrecoverableError(record.error.message);
    }
    const written = await writeResultOnce(redis, c, id, record);
    log({ event: record.status === 'ok' ? 'captioned' : 'bad-file', job: id, path, written, ...(record.status === 'error' ? { error: record.error.message } : { duration: record.duration }) });
    if (record.status === 'error') throw new UnrecoverableError(record.error.message);
    return { written };
  };

  const worker = new Worker<CaptionJobData>(nameOf(c), process_, {
    connection: { url: c.url, maxRetriesPerRequest: null },
    prefix: prefixOf(c),
    concurrency: opts.concurrency,
    lockDuration: opts.lockDurationMs ?? 30_000,
    stalledInterval: Math.max(1000, Math.floor((opts.lockDurationMs ?? 30_000) / 2)),
    maxStalledCount: opts.maxStalledCount ?? 2,
    metrics: { maxDataPoints: MetricsTime.ONE_WEEK },
    autorun: false,
  });
  worker.on('failed', (job, err) => log({ event: 'failed', job: job?.id, path: job?.data.path, error: err.message, attemptsMade: job?.attemptsMade }));
  worker.on('stalled', (jobId) => log({ event: 'stalled', job: jobId }));
  worker.on('error', (err) => log({ event: 'error', error: err.message }));
  void worker.run();
  await worker.waitUntilReady();
  log({ event: 'ready', queue: nameOf(c), by });
  return {
    worker,
    close: async () => {
      await worker.close();
      for (const b of batchers.values()) b.dispose();
      redis.disconnect();
    },
  };
}

export interface QueueStatus {
  readonly queue: string;
  readonly counts: Record<string, number>;
  readonly workers: number;
  /** Records written so far, by outcome, and the audio they cover. */
  readonly results: { captioned: number; failed: number; audioHours: number };
  /**
   * `jobsInWindow` completed in the last `windowMinutes` (BullMQ metrics), as a rate over that window or over the time
   * since the first result when that is shorter; `realTime`: seconds of audio captioned per wall second between the
   * first and the last result (null before two results).
   */
  readonly throughput: { windowMinutes: number; jobsInWindow: number; jobsPerMinute: number; realTime: number | null };
}

/**
 * Queue depth (waiting, active, delayed, completed, failed), live workers and throughput.
 *
 * ```ts
 * console.log(await captionQueueStatus({ url: 'redis://127.0.0.1:6379' }));
 * ```
 */
export async function captionQueueStatus(c: QueueConnection, windowMinutes = 15): Promise<QueueStatus> {
  const queue = openQueue(c);
  const redis = new Redis(c.url, { maxRetriesPerRequest: null });
  redis.on('error', () => undefined);
  try {
    const counts = await queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'completed', 'failed', 'paused');
    const workers = (await queue.getWorkers()).length;
    const s = await redis.hgetall(statsKey(c));
    // Finished minutes are data points; the minute in progress is count - prevCount.
    const m = await queue.getMetrics('completed', 0, windowMinutes - 2);
    const jobsInWindow = m.data.reduce((a, b) => a + b, 0) + Math.max(0, m.meta.count - m.meta.prevCount);
    const firstAt = Number(s.firstAt ?? 0);
    const sinceFirst = firstAt > 0 ? (Date.now() - firstAt) / 60_000 : windowMinutes;
    const minutes = Math.max(1 / 60, Math.min(windowMinutes, sinceFirst));
    const audioSeconds = Number(s.audioSeconds ?? 0);
    const span = (Number(s.lastAt ?? 0) - firstAt) / 1000;
    return {
      queue: nameOf(c),
      counts,
      workers,
      results: { captioned: Number(s.captioned ?? 0), failed: Number(s.failed ?? 0), audioHours: audioSeconds / 3600 },
      throughput: { windowMinutes, jobsInWindow, jobsPerMinute: jobsInWindow / minutes, realTime: span > 0 ? audioSeconds / span : null },
    };
  } finally {
    await queue.close();
    redis.disconnect();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });
}
