import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { writeFixtureTokenizer } from '@omniflow/nodes';

/**
 * A model folder in the official layout made from the tiny golden fixture (random weights): config.json and
 * model.safetensors linked from ../shared, plus the fixture tokenizer written beside them. Captions from it are
 * nonsense text, but every stage of the real caption path runs.
 *
 * ```ts
 * const dir = fixtureModelFolder('/tmp/omniflow-test'); // '/tmp/omniflow-test/qwen3-omni-tiny'
 * ```
 */
export function fixtureModelFolder(parent: string): string {
  const dir = join(parent, 'qwen3-omni-tiny');
  if (existsSync(join(dir, 'tokenizer.json'))) return dir;
  mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) symlinkSync(join(fixtureDir(), f), join(dir, f));
  writeFixtureTokenizer(dir);
  return dir;
}
