/**
 * Caption job throughput on the tiny fixture checkpoint (random weights, so every caption runs to maxNewTokens),
 * with the CLI's default options:
 * - one process, files captioned one at a time (concurrency 1, batch 1) vs batched across files (16 files in
 *   flight, 8 segments per batch) — the baseline and the batched run use the same files and options in the same process;
 * - the BullMQ queue with one worker process vs two (needs redis-server; a private one is started on a free loopback
 *   port, or OMNIFLOW_TEST_REDIS_URL is used), timed from enqueue to the last result, workers warm.
 * Reported: files per minute and audio hours per hour (= × real time). Noisy when other processes share the CPUs.
 */
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { captionOptionsHash, parseCaptionOptions, resolveFfmpeg } from '@omniflow/nodes';
import { captionFiles, captionJobId, CaptionStore, collectCaptionResults, enqueueCaptionJobs, loadCaptionModel, captionModelId } from '@omniflow/cli';
import { fixtureModelFolder } from '../packages/cli/src/testing/fixture-model.js';
import { testRedis } from '../packages/cli/src/testing/redis-server.js';
import { startCli, waitFor } from '../packages/cli/src/testing/run-cli.js';

const FILES = 16;
const QUEUE_FILES = 16; // enough that each of two workers still fills its batches
const SECONDS = 60; // minute-long recordings: two 30 s segments and a summary each
// The CLI's defaults (30 s segments, up to 64 new tokens, greedy): what `omniflow caption` does out of the box.
const options = parseCaptionOptions();

function rate(files: number, audioSeconds: number, wallSeconds: number) {
  return {
    wallSeconds: +wallSeconds.toFixed(2),
    filesPerMinute: +((files / wallSeconds) * 60).toFixed(1),
    audioHoursPerHour: +(audioSeconds / wallSeconds).toFixed(2),
  };
}

export async function run(): Promise<object> {
  const root = mkdtempSync(join(tmpdir(), 'omniflow-caption-bench-'));
  try {
    const modelDir = fixtureModelFolder(root);
    const ffmpeg = resolveFfmpeg().path;
    const all = Array.from({ length: QUEUE_FILES }, (_, i) => {
      const p = join(root, `tone-${i}.wav`);
      execFileSync(ffmpeg, ['-nostdin', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', `sine=frequency=${220 + 110 * i}:sample_rate=16000:duration=${SECONDS}`, p]);
      return p;
    });
    const files = all.slice(0, FILES);
    const model = await loadCaptionModel(modelDir);
    const local = async (name: string, concurrency: number, batchSize: number) => {
      const store = CaptionStore.open(join(root, `${name}.jsonl`));
      const before = { ...(model as unknown as { stats: Record<string, number> }).stats };
      try {
        const s = await captionFiles(files, store, { model, options, concurrency, batchSize });
        if (s.captioned !== FILES) throw new Error(`caption bench: ${name} captioned ${s.captioned} of ${FILES} files`);
        const st = (model as unknown as { stats: Record<string, number> }).stats;
        const ms = (k: string) => Math.round(st[k] - (before[k] ?? 0));
        const stages = ['featuresMs', 'encoderMs', 'promptMs', 'prefillMs', 'decodeMs'];
        const split = Object.fromEntries(stages.map((k) => [k, ms(k)]));
        // featuresMs is log-mel on the main thread plus waits for the worker's (clipsWithWorkerFeatures). Inside model
        // calls but in no stage: sampling, detokenizing, tensor bookkeeping. Outside them: decoding the files, batching
        // waits, writing results — time the model sits idle.
        const inCalls = ms('callMs');
        const otherInCallsMs = inCalls - stages.reduce((a, k) => a + split[k], 0);
        const outsideCallsMs = Math.round(s.wallSeconds * 1000 - inCalls);
        return {
          ...rate(FILES, s.audioSeconds, s.wallSeconds),
          modelCalls: s.batches,
          meanBatch: +(s.requests / s.batches).toFixed(1),
          decodeSteps: ms('decodeSteps'),
          clipsWithWorkerFeatures: ms('workerFeatures'),
          modelTime: { ...split, otherInCallsMs, outsideCallsMs },
        };
      } finally {
        store.close();
      }
    };
    await local('warmup', 2, 4); // first-use costs (wasm kernels, page faults) out of the measured runs
    const oneAtATime = await local('one-at-a-time', 1, 1);
    // More files in flight than a batch holds, so the next files decode while a batch runs.
    const batched = await local('batched', 16, 8);
    model.dispose();

    const queue = await queueRuns(root, modelDir, all, QUEUE_FILES * SECONDS);
    return {
      checkpoint: 'qwen3-omni-tiny fixture (random weights)',
      files: FILES,
      queueFiles: QUEUE_FILES,
      secondsPerFile: SECONDS,
      options: { segmentSeconds: options.segmentSeconds, maxNewTokens: options.maxNewTokens },
      oneAtATime,
      batched,
      batchedSpeedup: +(oneAtATime.wallSeconds / batched.wallSeconds).toFixed(2),
      queue,
    };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

async function queueRuns(root: string, modelDir: string, files: string[], audioSeconds: number): Promise<object> {
  const redis = await testRedis();
  if (!redis) return { skipped: 'no redis-server on PATH and OMNIFLOW_TEST_REDIS_URL unset' };
  const modelId = captionModelId(modelDir);
  const timed = async (workers: number) => {
    const name = `bench-${randomUUID().slice(0, 8)}`;
    // Fresh copies so job ids differ from any earlier run of the same files.
    const mine = files.map((f, i) => {
      const p = join(root, `${name}-${i}.wav`);
      copyFileSync(f, p);
      return p;
    });
    const procs = Array.from({ length: workers }, () => startCli(['worker', '--queue', redis.url, '--queue-name', name, '--model', modelDir, '--concurrency', '8', '--batch-size', '16']));
    procs.forEach((p) => p.proc.stderr?.on('data', () => undefined));
    try {
      await waitFor(() => procs.every((p) => p.stdout().includes('"event":"ready"')), `${workers} worker(s) ready`, 120_000);
      const t0 = performance.now();
      const conn = { url: redis.url, name };
      const ids = await enqueueCaptionJobs(conn, mine, { options, modelDir, modelId });
      let ok = 0;
      const hash = captionOptionsHash(options, modelId);
      await collectCaptionResults(conn, ids, {
        pollMs: 100,
        describe: (id) => ({ path: mine.find((p) => captionJobId(p, hash) === id)!, model: modelId, options, optionsHash: hash }),
        onRecord: (r) => void (r.status === 'ok' && ok++),
      });
      const wall = (performance.now() - t0) / 1000;
      if (ok !== files.length) throw new Error(`caption bench: queue with ${workers} worker(s) captioned ${ok} of ${files.length}`);
      return rate(files.length, audioSeconds, wall);
    } finally {
      for (const p of procs) p.proc.kill('SIGTERM');
      await Promise.all(procs.map((p) => p.exited));
    }
  };
  try {
    const one = await timed(1);
    const two = await timed(2);
    return { oneWorker: one, twoWorkers: two, twoWorkerSpeedup: +(one.wallSeconds / two.wallSeconds).toFixed(2) };
  } finally {
    await redis.stop();
  }
}
