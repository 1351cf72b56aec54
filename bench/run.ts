/**
 * `npm run bench [-- name ...]`: runs the benchmark suites in bench/ (each `*.bench.ts` exports
 * `run(): Promise<object>`), prints one JSON document and writes it to bench/results/<suite>.json.
 * Every suite measures its own baseline in the same run, so figures compare like with like.
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const wanted = process.argv.slice(2);
const suites = readdirSync(here)
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.replace(/\.bench\.ts$/, ''))
  .filter((name) => wanted.length === 0 || wanted.includes(name));

if (suites.length === 0) {
  console.error(`no benchmark suite matches ${JSON.stringify(wanted)}`);
  process.exit(2);
}

const machine = { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, node: process.version, totalMemGiB: +(os.totalmem() / 2 ** 30).toFixed(1) };
const results: Record<string, unknown> = {};
mkdirSync(join(here, 'results'), { recursive: true });
for (const name of suites) {
  const mod = (await import(`./${name}.bench.ts`)) as { run: () => Promise<object> };
  const started = Date.now();
  const result = { suite: name, machine, startedAt: new Date(started).toISOString(), ...(await mod.run()), wallSeconds: (Date.now() - started) / 1000 };
  results[name] = result;
  writeFileSync(join(here, 'results', `${name}.json`), JSON.stringify(result, null, 2) + '\n');
  console.log(JSON.stringify(result));
}
