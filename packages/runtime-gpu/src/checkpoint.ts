import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SafetensorsFile, type HostTensor, type TensorEntry } from './safetensors.js';

/**
 * A checkpoint: one `.safetensors` file, or a folder holding `model.safetensors` or a sharded
 * `model.safetensors.index.json`. Tensors are read lazily, one at a time, and every key read is
 * recorded so a loader can report what the model never asked for.
 *
 * ```ts
 * const ckpt = Checkpoint.open('path/to/Qwen3-Omni-30B-A3B-Instruct');
 * const w = ckpt.get('thinker.lm_head.weight', [vocab, hidden]);
 * ckpt.close();
 * ```
 */
export class Checkpoint {
  private readonly used = new Set<string>();

  private constructor(
    readonly path: string,
    private readonly files: SafetensorsFile[],
    private readonly where: Map<string, SafetensorsFile>,
  ) {}

  static open(path: string): Checkpoint {
    if (!existsSync(path)) throw new Error(`checkpoint ${path}: no such file or folder`);
    let shardPaths: string[];
    if (statSync(path).isDirectory()) {
      const index = join(path, 'model.safetensors.index.json');
      const single = join(path, 'model.safetensors');
      if (existsSync(index)) shardPaths = shardsOf(index);
      else if (existsSync(single)) shardPaths = [single];
      else throw new Error(`checkpoint ${path}: neither model.safetensors nor model.safetensors.index.json found`);
    } else if (path.endsWith('.index.json')) {
      shardPaths = shardsOf(path);
    } else {
      shardPaths = [path];
    }
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    try {
      for (const p of shardPaths) {
        const f = SafetensorsFile.open(p);
        files.push(f);
        for (const k of f.keys()) {
          const prev = where.get(k);
          if (prev) throw new Error(`checkpoint ${path}: tensor '${k}' appears in both ${prev.path} and ${p}`);
          where.set(k, f);
        }
      }
    } catch (err) {
      for (const f of files) f.close();
      throw err;
    }
    return new Checkpoint(path, files, where);
  }

  keys(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  entry(name: string): TensorEntry {
    const f = this.where.get(name);
    if (!f) throw new Error(`checkpoint ${this.path}: missing tensor '${name}'`);
    return f.entry(name);
  }

  /** Reads one tensor (decoded to float32/int32), checking its shape when `expectedShape` is given. */
  get(name: string, expectedShape?: readonly number[]): HostTensor {
    const e = this.entry(name);
    if (expectedShape && (e.shape.length !== expectedShape.length || e.shape.some((d, i) => d !== expectedShape[i]))) {
      throw new Error(`checkpoint ${this.path}: tensor '${name}' has shape [${e.shape}] but the model expects [${expectedShape}]`);
    }
    this.used.add(name);
    return this.where.get(name)!.read(name);
  }

  /** Keys present in the checkpoint that were never read. */
  unused(): string[] {
    return this.keys().filter((k) => !this.used.has(k));
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

function shardsOf(indexPath: string): string[] {
  let index: { weight_map?: Record<string, string> };
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new Error(`checkpoint index ${indexPath}: not valid JSON (${(err as Error).message})`);
  }
  if (!index.weight_map || typeof index.weight_map !== 'object') throw new Error(`checkpoint index ${indexPath}: no weight_map object`);
  const dir = dirname(indexPath);
  return [...new Set(Object.values(index.weight_map))].map((f) => join(dir, f));
}
