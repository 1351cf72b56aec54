/**
 * The queue path on one machine: a Redis, two `omniflow worker` processes, and this script enqueuing a folder and
 * collecting the captions as the workers finish them. On many machines, run the workers there instead
 * (`omniflow worker --queue redis://host:6379`), with the files at the same paths (a shared disk).
 *
 *   node --conditions=source --import tsx examples/caption-queue.ts                       # demo files, private redis-server
 *   node --conditions=source --import tsx examples/caption-queue.ts ~/recordings --queue redis://127.0.0.1:6379
 *
 * Needs redis-server on PATH when no --queue is given (apt-get install redis-server). Model choice as in
 * caption-folder.ts.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { captionOptionsHash, parseCaptionOptions } from '@omniflow/nodes';
import { builtinModelDir, captionJobId, captionModelId, captionQueueStatus, collectCaptionResults, enqueueCaptionJobs, expandInputs } from '@omniflow/cli';
import { fixtureModelFolder } from '../packages/cli/src/testing/fixture-model.js';
import { makeMediaFolder } from '../packages/cli/src/testing/media-folder.js';
import { testRedis } from '../packages/cli/src/testing/redis-server.js';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { queue: { type: 'string' }, model: { type: 'string' } } });
const scratch = mkdtempSync(join(tmpdir(), 'omniflow-caption-queue-'));
let folder = positionals[0];
if (!folder) {
  folder = join(scratch, 'demo');
  makeMediaFolder(folder, { seconds: 4 });
}
const modelDir = values.model ? resolve(values.model) : (builtinModelDir() ?? fixtureModelFolder(scratch));
const redis = values.queue ? { url: values.queue, stop: async () => undefined } : await testRedis();
if (!redis) throw new Error('no --queue given and no redis-server on PATH (apt-get install redis-server)');
const conn = { url: redis.url, name: `example-${process.pid}` };

// Two local workers: the omniflow CLI from source (the installed `omniflow worker` does the same).
const main = join(dirname(fileURLToPath(import.meta.url)), '..', 'packages', 'cli', 'src', 'main.ts');
const workers = [1, 2].map((n) => {
  const w = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', main, 'worker', '--queue', conn.url, '--queue-name', conn.name, '--model', modelDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  w.stdout.setEncoding('utf8').on('data', (s: string) => {
    for (const line of s.split('\n').filter(Boolean)) {
      const e = JSON.parse(line) as { event: string; path?: string };
      if (e.event !== 'active') console.error(`worker ${n}: ${e.event}${e.path ? ` ${e.path}` : ''}`);
    }
  });
  return w;
});

try {
  const options = parseCaptionOptions();
  const modelId = captionModelId(modelDir);
  const hash = captionOptionsHash(options, modelId);
  const { files } = await expandInputs([folder]);
  const ids = await enqueueCaptionJobs(conn, files, { options, modelDir, modelId });
  console.error(`enqueued ${ids.length} jobs on ${conn.name}`);
  const pathOf = new Map(files.map((f) => [captionJobId(f, hash), f]));
  await collectCaptionResults(conn, ids, {
    describe: (id) => ({ path: pathOf.get(id)!, model: modelId, options, optionsHash: hash }),
    onRecord: (r) => console.log(JSON.stringify(r.status === 'ok' ? { path: r.path, duration: r.duration, summary: r.summary } : { path: r.path, error: r.error.message })),
  });
  console.error(JSON.stringify(await captionQueueStatus(conn)));
} finally {
  for (const w of workers) w.kill('SIGTERM');
  await Promise.all(workers.map((w) => new Promise((r) => w.once('close', r))));
  await redis.stop();
}
