/**
 * `npm run parity -- <fixture-dir> [--case <name>]…`: runs every case of the folder's cases.json against our
 * implementation. One JSON line per expected tensor {case, tensor, role, maxAbsDiff, atol, ok}, a JSON line per case
 * that did not run or whose runner failed, then `parity: N passed, M failed`. Exit code 1 when any output tensor fails
 * (including outputs of cases that did not run), 2 on a usage or fixture error.
 *
 * ```sh
 * npm run parity -- ../shared/fixtures/qwen3-omni-tiny
 * npm run parity -- ../shared/fixtures/qwen3-omni-tiny --case 5_thinker --case 6_moe_blocks
 * ```
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend } from '@omniflow/runtime-gpu';
import { runParity } from './run-parity.js';

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({ allowPositionals: true, options: { case: { type: 'string', multiple: true }, help: { type: 'boolean', short: 'h' } } });
  } catch (err) {
    console.error(`parity: ${(err as Error).message}`);
    return 2;
  }
  if (args.values.help || args.positionals.length !== 1) {
    console.error('usage: npm run parity -- <fixture-dir> [--case <case-name-or-substring>]…');
    return args.values.help ? 0 : 2;
  }
  const dir = resolve(args.positionals[0]!);
  const only = args.values.case;
  const backend = await initBackend();
  console.error(`parity: ${dir} on the ${backend.name} backend (${backend.reason})`);
  const report = await runParity(dir, {
    filter: only ? (name) => only.some((c) => name === c || name.includes(c)) : undefined,
    onCase: (c) => {
      if (!c.ran) console.log(JSON.stringify({ case: c.case, ran: false, reason: c.error }));
      else if (c.error) console.log(JSON.stringify({ case: c.case, runners: c.runners, error: c.error }));
      if (c.leakedTensors) console.error(`parity: ${c.case} left ${c.leakedTensors} tfjs tensors alive`);
    },
    onTensor: (t) => console.log(JSON.stringify(t)),
  });
  if (report.unknownConfigFields.length) console.error(`parity: config.json fields unknown to the schema: ${report.unknownConfigFields.join(', ')}`);
  const notRun = report.notRun.length ? ` (not run: ${report.notRun.join(', ')})` : '';
  console.log(`parity: ${report.passed} passed, ${report.failed} failed${notRun}`);
  return report.failedOutputs > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error((err as Error).message ?? err);
    process.exit(2);
  },
);
