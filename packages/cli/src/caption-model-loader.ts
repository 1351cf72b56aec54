import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { CaptionModel } from '@omniflow/nodes';

/**
 * Where the built-in captioner lives: `OMNIFLOW_MODEL` when set, else the model shipped with omniflow.
 * Returns undefined when neither exists.
 */
export function builtinModelDir(): string | undefined {
  const env = process.env.OMNIFLOW_MODEL;
  if (env) return env;
  return undefined;
}

function modelDirOrThrow(dir: string | null): string {
  const d = dir ?? builtinModelDir();
  if (!d) throw new Error('no model: pass --model <dir> (a folder with config.json and model.safetensors), or set OMNIFLOW_MODEL');
  if (!existsSync(d) || !statSync(d).isDirectory()) throw new Error(`model folder ${d}: no such folder`);
  if (!existsSync(join(d, 'config.json'))) throw new Error(`model folder ${d}: no config.json`);
  return d;
}

/**
 * The id caption outputs carry for a model folder: its name and a hash of config.json, the tokenizer and
 * the weights (whole files up to 64 MiB; beyond that the safetensors header and 16 spread 64 KiB samples,
 * which tells apart two trainings of one architecture without reading gigabytes). Cheap enough that the
 * queue enqueuer computes it without loading the model.
 *
 * ```ts
 * captionModelId('/models/qwen3-omni-tiny'); // 'qwen3-omni-tiny@3f9a0c1d2b4e'
 * ```
 */
export function captionModelId(dir: string | null): string {
  const d = modelDirOrThrow(dir);
  const h = createHash('sha256');
  const files = readdirSync(d)
    .filter((f) => f === 'config.json' || f.startsWith('tokenizer') || f.endsWith('.safetensors') || f.endsWith('.safetensors.index.json'))
    .sort();
  for (const f of files) {
    h.update(`${f}\u0000`);
    hashFile(join(d, f), h);
  }
  return `${basename(d)}@${h.digest('hex').slice(0, 12)}`;
}

function hashFile(path: string, h: ReturnType<typeof createHash>): void {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    h.update(String(size));
    if (size <= 64 * 2 ** 20) {
      h.update(readFileSync(fd));
      return;
    }
    const block = Buffer.alloc(64 * 1024);
    for (let i = 0; i < 17; i++) {
      const at = i === 0 ? 0 : Math.floor(((size - block.length) * i) / 16);
      const n = readSync(fd, block, 0, block.length, at);
      h.update(block.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Loads a captioner from a model folder (`null`: the built-in one).
 *
 * ```ts
 * const model = await loadCaptionModel('/models/qwen3-omni-tiny');
 * ```
 */
export async function loadCaptionModel(dir: string | null): Promise<CaptionModel> {
  const d = modelDirOrThrow(dir);
  throw new Error(`model folder ${d}: loading is not wired yet`);
}
