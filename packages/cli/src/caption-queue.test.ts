import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resultsKey } from './caption-queue.js';
import type { CaptionRecord } from './caption-store.js';
import { fixtureModelFolder } from './testing/fixture-model.js';
import { makeMediaFolder } from './testing/media-folder.js';
import { testRedis, type TestRedis } from './testing/redis-server.js';
import { startCli, waitFor } from './testing/run-cli.js';

// The BullMQ path against a real redis-server: two worker processes, one SIGKILLed in the middle of a job, and every
// file must end up captioned (written) exactly once. Runs wherever redis-server exists; CI (CI=true) must have it.
const redis: TestRedis | undefined = await testRedis();
if (!redis && process.env.CI) throw new Error('CI=true but no Redis: .ci/run must install redis-server and export OMNIFLOW_TEST_REDIS_URL');
if (!redis) console.warn('caption queue tests skipped: no redis-server on PATH and OMNIFLOW_TEST_REDIS_URL unset (apt-get install redis-server)');

describe.skipIf(!redis)('omniflow caption --queue / worker / status', () => {
  const root = mkdtempSync(join(tmpdir(), 'omniflow-caption-queue-'));
  const queueName = `test-${randomUUID().slice(0, 8)}`;
  let model: string;
  const files: string[] = [];
  let corrupt: string;

  beforeAll(() => {
    model = fixtureModelFolder(root);
    const media = makeMediaFolder(join(root, 'media'), { seconds: 4 });
    const tone = media.find((m) => m.path.endsWith('tone-440.wav'))!.path;
    for (let i = 0; i < 5; i++) {
      files.push(join(root, `q-${i}.wav`));
      copyFileSync(tone, files[i]);
    }
    // Named to sort last, so the first job (the one worker A is killed in) is a long real file.
    corrupt = join(root, 'z-corrupt.wav');
    copyFileSync(media.find((m) => m.expect === 'corrupt')!.path, corrupt);
  });
  const started: Array<ReturnType<typeof startCli>> = [];
  afterAll(async () => {
    // A failed assertion must not leave worker processes behind.
    for (const p of started) if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill('SIGKILL');
    await redis?.stop();
  });

  it('two workers, one killed mid-job: every file is captioned exactly once and the JSONL has one line per file', async () => {
    const url = redis!.url;
    const common = ['--queue', url, '--queue-name', queueName];
    // Short locks so the dead worker's job is re-picked within seconds.
    const worker = () => {
      const w = startCli(['worker', ...common, '--model', model, '--concurrency', '1', '--lock-duration', '2000']);
      started.push(w);
      return w;
    };
    const a = worker();
    const b = worker();
    const events = (w: ReturnType<typeof worker>) =>
      w
        .stdout()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { event: string; job?: string; path?: string });
    await waitFor(() => events(a).some((e) => e.event === 'ready') && events(b).some((e) => e.event === 'ready'), 'both workers ready');

    const out = join(root, 'queue.jsonl');
    const enqueuer = startCli(['caption', ...files, corrupt, ...common, '--model', model, '--out', out, '--max-new-tokens', '6', '--segment-seconds', '1', '--backoff', '200']);
    // Kill worker A as soon as it holds a job (a 4 s file in 1 s segments takes it a while).
    await waitFor(() => events(a).some((e) => e.event === 'active'), 'worker A to take a job');
    a.proc.kill('SIGKILL');
    const victim = events(a).find((e) => e.event === 'active')!;
    const done = await enqueuer.exited;
    expect(done.code, done.stderr).toBe(1); // the corrupt file fails; everything else is captioned
    expect(done.stderr).toContain(`all ${files.length + 1} file(s) done, 1 failed`);

    const lines = readFileSync(out, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as CaptionRecord);
    expect(lines.map((l) => l.path).sort()).toEqual([...files, corrupt].sort());
    expect(lines.find((l) => l.path === corrupt)).toMatchObject({ status: 'error', error: { reason: 'corrupt' } });
    expect(lines.filter((l) => l.status === 'ok')).toHaveLength(files.length);
    // The killed worker never wrote its job: worker B picked it up after the lock ran out and wrote it.
    const bPid = String(b.proc.pid);
    const victimLine = lines.find((l) => l.path === victim.path)!;
    expect(victimLine.by).toContain(`:${bPid} job ${victim.job}`);
    await waitFor(() => events(b).some((e) => e.event === 'captioned' && e.job === victim.job), () => `worker B's log of captioning job ${victim.job}; B's log: ${b.stdout()}; A's log: ${a.stdout()}`, 15_000);

    // Exactly once in Redis too: one result per job, and the counters bumped once per job.
    const r = new Redis(url);
    try {
      expect(await r.hlen(resultsKey({ url, name: queueName }))).toBe(files.length + 1);
      const stats = await r.hgetall(`bull:${queueName}:omniflow:stats`);
      expect(Number(stats.captioned)).toBe(files.length);
      expect(Number(stats.failed)).toBe(1);
    } finally {
      r.disconnect();
    }

    const status = await startCli(['status', ...common, '--json']).exited;
    expect(status.code, status.stderr).toBe(0);
    const s = JSON.parse(status.stdout);
    expect(s.counts).toMatchObject({ waiting: 0, active: 0, completed: files.length, failed: 1 });
    expect(s.workers).toBe(1);
    expect(s.results).toMatchObject({ captioned: files.length, failed: 1 });
    expect(s.results.audioHours).toBeCloseTo((files.length * 4) / 3600, 4);
    expect(s.throughput.jobsInWindow).toBe(files.length);
    expect(s.throughput.realTime).toBeGreaterThan(0);

    // Enqueuing the same files again adds nothing and collects the stored results at once.
    const again = await startCli(['caption', ...files, ...common, '--model', model, '--out', join(root, 'again.jsonl'), '--max-new-tokens', '6', '--segment-seconds', '1']).exited;
    expect(again.code, again.stderr).toBe(0);
    const againLines = readFileSync(join(root, 'again.jsonl'), 'utf8').split('\n').filter(Boolean);
    expect(againLines).toHaveLength(files.length);

    b.proc.kill('SIGTERM');
    const bExit = await b.exited;
    expect(bExit.code).toBe(0);
    expect(events(b).at(-1)?.event).toBe('stopped');
  }, 240_000);
});
