import { resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { captionOptionsHash, parseCaptionOptions, type CaptionModel, type CaptionJobOptions } from '@omniflow/nodes';
import { captionFiles } from './caption-run.js';
import { CaptionStore, type CaptionRecord } from './caption-store.js';
import { captionQueueStatus, checkRedis, collectCaptionResults, enqueueCaptionJobs, redactUrl, startCaptionWorker, DEFAULT_CAPTION_QUEUE, captionJobId } from './caption-queue.js';
import { expandInputs } from './inputs.js';
import { captionModelId, loadCaptionModel } from './caption-model-loader.js';
import { CaptionProgress } from './progress.js';
import { addCaptionerTrainingCommands } from './commands/captioner-training.js';
import { int, num } from './option-parsers.js';

/** Exit codes: every file captioned; some file failed; the command could not run (usage, setup). */
export const EXIT_OK = 0;
export const EXIT_FILES_FAILED = 1;
export const EXIT_USAGE = 2;

/** An error the user made (options, paths, unreachable services): printed without a stack trace, exit 2. */
class UsageError extends Error {}

interface CaptionFlags {
  out: string;
  model?: string;
  concurrency: number;
  batchSize: number;
  prompt?: string;
  summaryPrompt?: string;
  segmentSeconds?: number;
  maxDuration?: number;
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  retryErrors?: boolean;
  progress?: boolean;
  verbose?: boolean;
  queue?: string;
  queueName: string;
  wait: boolean;
  attempts: number;
  backoff: number;
}

function optionsFrom(f: CaptionFlags): CaptionJobOptions {
  try {
    return parseCaptionOptions({
      prompt: f.prompt,
      summaryPrompt: f.summaryPrompt,
      segmentSeconds: f.segmentSeconds,
      maxDurationSeconds: f.maxDuration,
      maxNewTokens: f.maxNewTokens,
      temperature: f.temperature,
      topK: f.topK,
      topP: f.topP,
      seed: f.seed,
    });
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
}

/**
 * Builds the `omniflow` command line. `main` runs it; this is exported so tests and embedders can inspect
 * or extend it.
 *
 * ```ts
 * const program = buildProgram((code) => (exitCode = code));
 * await program.parseAsync(['caption', 'talks/'], { from: 'user' });
 * ```
 */
export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('omniflow')
    .description('omniflow: omni-modal AI pipelines. Caption audio collections locally or over a Redis job queue.')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('caption')
    .description('caption audio/video files to JSONL: one line per file, with timed segments and a summary')
    .argument('<inputs...>', 'files, folders (searched recursively for media files) or quoted glob patterns')
    .option('-o, --out <file>', 'JSONL output; files already in it with the same options are skipped', 'captions.jsonl')
    .option('-m, --model <dir>', 'model folder (config.json, model.safetensors, tokenizer.json); default: the built-in captioner')
    .option('-c, --concurrency <n>', 'files decoded and captioned at once', int('--concurrency', 1), 4)
    .option('-b, --batch-size <n>', 'most segments in one model batch', int('--batch-size', 1), 8)
    .option('--prompt <text>', 'text after each segment\'s audio (default: none, the audio alone)')
    .option('--summary-prompt <text>', 'instruction for the whole-file summary of a file with several segments')
    .option('--segment-seconds <s>', 'segment length in seconds (default: 30)', num('--segment-seconds'))
    .option('--max-duration <s>', 'refuse files longer than this many seconds (default: 14400)', num('--max-duration'))
    .option('--max-new-tokens <n>', 'most tokens per caption (default: 64)', int('--max-new-tokens', 1))
    .option('--temperature <t>', '0 = greedy (default); > 0 samples', num('--temperature'))
    .option('--top-k <k>', 'sample from the k most likely tokens (0 = all)', int('--top-k', 0))
    .option('--top-p <p>', 'nucleus sampling mass (default: 1)', num('--top-p'))
    .option('--seed <n>', 'sampling seed (default: 0)', int('--seed', 0))
    .option('--retry-errors', 'caption again files whose earlier line is an error')
    .option('--progress', 'always draw the progress bar (default: drawn when stderr is a terminal)')
    .option('--no-progress', 'never draw the progress bar')
    .option('-v, --verbose', 'without a bar, print a line per file to stderr')
    .option('-q, --queue <redis-url>', 'enqueue the files as BullMQ jobs on this Redis instead of captioning here')
    .option('--queue-name <name>', 'BullMQ queue name', DEFAULT_CAPTION_QUEUE)
    .option('--no-wait', 'with --queue: enqueue and exit without collecting results')
    .option('--attempts <n>', 'with --queue: tries per job when the model fails', int('--attempts', 1), 3)
    .option('--backoff <ms>', 'with --queue: first retry delay, doubling each time', int('--backoff', 0), 2000)
    .action(async (inputs: string[], flags: CaptionFlags) => setExit(await captionCommand(inputs, flags)));

  program
    .command('worker')
    .description('process caption jobs from a BullMQ queue until stopped (SIGINT/SIGTERM finish the jobs in hand)')
    .requiredOption('-q, --queue <redis-url>', 'Redis holding the queue')
    .option('--queue-name <name>', 'BullMQ queue name', DEFAULT_CAPTION_QUEUE)
    .option('-m, --model <dir>', 'model folder for every job (default: the folder each job names, or the built-in captioner)')
    .option('-c, --concurrency <n>', 'jobs worked on at once', int('--concurrency', 1), 4)
    .option('-b, --batch-size <n>', 'most segments in one model batch', int('--batch-size', 1), 8)
    .addOption(new Option('--lock-duration <ms>', 'job lock lifetime: a dead worker\'s job is picked up again after about this long').argParser(int('--lock-duration', 1000)).default(30_000))
    .action(async (flags: { queue: string; queueName: string; model?: string; concurrency: number; batchSize: number; lockDuration: number }) => setExit(await workerCommand(flags)));

  program
    .command('status')
    .description('queue depth, workers and throughput of a caption queue')
    .requiredOption('-q, --queue <redis-url>', 'Redis holding the queue')
    .option('--queue-name <name>', 'BullMQ queue name', DEFAULT_CAPTION_QUEUE)
    .option('--json', 'print JSON')
    .action(async (flags: { queue: string; queueName: string; json?: boolean }) => setExit(await statusCommand(flags)));

  addCaptionerTrainingCommands(program, setExit);
  return program;
}

/**
 * Runs the `omniflow` command line with `argv` (without node and script) and resolves to the exit code.
 *
 * ```ts
 * process.exitCode = await main(['caption', 'talks/', '--out', 'talks.jsonl']);
 * ```
 */
export async function main(argv: readonly string[]): Promise<number> {
  let code = EXIT_OK;
  const program = buildProgram((c) => (code = c));
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    if (err instanceof UsageError) {
      process.stderr.write(`omniflow: ${err.message}\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
}

async function captionCommand(inputs: string[], f: CaptionFlags): Promise<number> {
  const options = optionsFrom(f);
  const { files, unmatched } = await expandInputs(inputs);
  for (const u of unmatched) process.stderr.write(`omniflow: warning: ${JSON.stringify(u)} matched no media files\n`);
  if (files.length === 0) throw new UsageError(`no input files (${inputs.map((i) => JSON.stringify(i)).join(', ')})`);
  const modelDir = f.model ? resolve(f.model) : null;
  const modelId = await safe(() => captionModelId(modelDir));
  if (f.queue) await safe(() => checkRedis(f.queue!));
  const store = await safe(() => CaptionStore.open(resolve(f.out)));
  if (store.repairedBytes > 0) process.stderr.write(`omniflow: ${f.out}: removed a torn last line (${store.repairedBytes} bytes) left by an interrupted run\n`);
  const progress = new CaptionProgress({ total: files.length, enabled: f.progress, verbose: f.verbose });
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (f.queue) return await captionViaQueue(files, f, options, modelDir, modelId, store, progress, stop.signal);
    const model = await safe(() => loadCaptionModel(modelDir));
    try {
      const s = await captionFiles(files, store, { model, options, concurrency: f.concurrency, batchSize: f.batchSize, retryErrors: f.retryErrors, onFile: (e) => progress.update(e), signal: stop.signal });
      progress.stop();
      const speed = s.wallSeconds > 0 ? s.audioSeconds / s.wallSeconds : 0;
      process.stderr.write(
        `omniflow: ${s.captioned} captioned, ${s.failed} failed, ${s.skipped} already done${s.failedBefore ? ` (${s.failedBefore} of them errors)` : ''}; ` +
          `${(s.audioSeconds / 3600).toFixed(3)} h audio in ${s.wallSeconds.toFixed(1)} s (${speed.toFixed(1)}x real time); output ${f.out}\n`,
      );
      if (stop.signal.aborted) return 130;
      return s.failed + s.failedBefore > 0 ? EXIT_FILES_FAILED : EXIT_OK;
    } finally {
      model.dispose();
    }
  } finally {
    progress.stop();
    store.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function captionViaQueue(files: string[], f: CaptionFlags, options: CaptionJobOptions, modelDir: string | null, modelId: string, store: CaptionStore, progress: CaptionProgress, signal: AbortSignal): Promise<number> {
  const conn = { url: f.queue!, name: f.queueName };
  const optionsHash = captionOptionsHash(options, modelId);
  const todo: string[] = [];
  let failed = 0;
  for (const path of files) {
    const prior = store.get(path, optionsHash);
    if (prior && !(f.retryErrors && prior.status === 'error')) {
      if (prior.status === 'error') failed += 1;
      progress.update({ record: prior, skipped: true });
    } else todo.push(path);
  }
  const ids = await enqueueCaptionJobs(conn, todo, { options, modelDir, modelId }, { attempts: f.attempts, backoffMs: f.backoff });
  process.stderr.write(`omniflow: ${ids.length} job(s) on queue ${f.queueName} at ${redactUrl(f.queue!)} (${files.length - todo.length} file(s) already in ${f.out})\n`);
  if (!f.wait) return EXIT_OK;
  const pathOf = new Map(todo.map((p) => [captionJobId(p, optionsHash), p]));
  await collectCaptionResults(conn, ids, {
    signal,
    describe: (id) => ({ path: pathOf.get(id)!, model: modelId, options, optionsHash }),
    onRecord: (record: CaptionRecord) => {
      if (!store.get(record.path, record.optionsHash) || f.retryErrors) store.append(record);
      if (record.status === 'error') failed += 1;
      progress.update({ record, skipped: false });
    },
  });
  progress.stop();
  if (signal.aborted) {
    process.stderr.write('omniflow: stopped waiting; the jobs stay queued (run the same command again to collect them)\n');
    return 130;
  }
  process.stderr.write(`omniflow: all ${files.length} file(s) done, ${failed} failed; output ${f.out}\n`);
  return failed > 0 ? EXIT_FILES_FAILED : EXIT_OK;
}

async function workerCommand(f: { queue: string; queueName: string; model?: string; concurrency: number; batchSize: number; lockDuration: number }): Promise<number> {
  await safe(() => checkRedis(f.queue));
  const override = f.model ? resolve(f.model) : undefined;
  const models = new Map<string, Promise<CaptionModel>>();
  const loadModel = (dir: string | null) => {
    const key = override ?? dir ?? '';
    let m = models.get(key);
    if (!m) {
      m = loadCaptionModel(override ?? dir);
      models.set(key, m);
    }
    return m;
  };
  if (override) await safe(() => loadModel(null)); // a bad --model should stop the worker before it takes jobs
  const log = (e: Record<string, unknown>) => process.stdout.write(JSON.stringify({ t: new Date().toISOString(), ...e }) + '\n');
  const running = await startCaptionWorker({ url: f.queue, name: f.queueName }, { loadModel, concurrency: f.concurrency, batchSize: f.batchSize, lockDurationMs: f.lockDuration, log });
  await new Promise<void>((resolveStop) => {
    const stop = () => resolveStop();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  log({ event: 'stopping' });
  await running.close();
  for (const m of models.values()) (await m).dispose();
  log({ event: 'stopped' });
  return EXIT_OK;
}

async function statusCommand(f: { queue: string; queueName: string; json?: boolean }): Promise<number> {
  await safe(() => checkRedis(f.queue));
  const s = await captionQueueStatus({ url: f.queue, name: f.queueName });
  if (f.json) {
    process.stdout.write(JSON.stringify(s) + '\n');
    return EXIT_OK;
  }
  const c = s.counts;
  const rate = s.throughput.realTime;
  process.stdout.write(
    [
      `queue ${s.queue} at ${redactUrl(f.queue)}`,
      `  waiting ${c.waiting + (c.prioritized ?? 0)}  active ${c.active}  delayed ${c.delayed}  completed ${c.completed}  failed ${c.failed}${c.paused ? `  paused ${c.paused}` : ''}`,
      `  workers ${s.workers}`,
      `  results ${s.results.captioned} captioned, ${s.results.failed} failed, ${s.results.audioHours.toFixed(3)} h audio`,
      `  throughput ${s.throughput.jobsInWindow} jobs in the last ${s.throughput.windowMinutes} min (${s.throughput.jobsPerMinute.toFixed(1)}/min); ${rate === null ? 'speed n/a' : `${rate.toFixed(1)}x real time`} from first to last result`,
    ].join('\n') + '\n',
  );
  return EXIT_OK;
}

/** Runs a setup step, turning its failure into a usage error (message, exit 2, no stack). */
async function safe<T>(step: () => T | Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
}
