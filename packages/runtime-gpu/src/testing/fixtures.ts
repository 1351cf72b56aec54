import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Folder of the golden Qwen3-Omni tiny fixtures: `OMNIFLOW_FIXTURES` if set, else
 * `../shared/fixtures/qwen3-omni-tiny` beside the repository (read-only; never write there).
 */
export function fixtureDir(): string {
  if (process.env.OMNIFLOW_FIXTURES) return resolve(process.env.OMNIFLOW_FIXTURES);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    const candidate = join(dir, '..', 'shared', 'fixtures', 'qwen3-omni-tiny');
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'packages')) && existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error('qwen3-omni-tiny fixtures not found: set OMNIFLOW_FIXTURES or place ../shared beside the repository');
}

export function fixturePath(file: string): string {
  return join(fixtureDir(), file);
}
