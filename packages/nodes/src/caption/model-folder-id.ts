import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

const WHOLE_FILE_LIMIT = 64 * 2 ** 20;
const SAMPLE_BYTES = 64 * 1024;

/**
 * The id caption outputs carry for a model folder: its name and a hash of config.json, the tokenizer files and the
 * weights (whole files up to 64 MiB; beyond that the size, the first 64 KiB — the safetensors header — and 16
 * evenly spread 64 KiB samples, which tells two trainings of one architecture apart without reading gigabytes).
 * Cheap enough for a queue enqueuer to compute without loading the model.
 *
 * ```ts
 * modelFolderId('/models/qwen3-omni-tiny'); // 'qwen3-omni-tiny@3f9a0c1d2b4e'
 * ```
 */
export function modelFolderId(dir: string): string {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`model folder ${dir}: no such folder`);
  if (!existsSync(join(dir, 'config.json'))) throw new Error(`model folder ${dir}: no config.json`);
  const h = createHash('sha256');
  const files = readdirSync(dir)
    .filter((f) => f === 'config.json' || f.startsWith('tokenizer') || f.startsWith('chat_template') || f.endsWith('.safetensors') || f.endsWith('.safetensors.index.json'))
    .sort();
  for (const f of files) {
    h.update(`${f}\u0000`);
    hashFile(join(dir, f), h);
  }
  return `${basename(dir)}@${h.digest('hex').slice(0, 12)}`;
}

function hashFile(path: string, h: ReturnType<typeof createHash>): void {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    h.update(`${size}\u0000`);
    const whole = size <= WHOLE_FILE_LIMIT;
    const block = Buffer.alloc(whole ? size : SAMPLE_BYTES);
    const offsets = whole ? [0] : Array.from({ length: 17 }, (_, i) => Math.floor(((size - SAMPLE_BYTES) * i) / 16));
    for (const at of offsets) {
      const n = readSync(fd, block, 0, block.length, at);
      h.update(block.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
}
