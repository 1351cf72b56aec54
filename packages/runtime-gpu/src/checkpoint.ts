import * as tf from '@tensorflow/tfjs-core';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { SAFETENSORS_DTYPE_BYTES, SafetensorsFile, writeSafetensors, type HostTensor, type ReadOptions, type TensorEntry, type TensorToWrite } from './safetensors.js';

/** What a model expects of a checkpoint: tensor name → shape. */
export type ExpectedTensors = ReadonlyMap<string, readonly number[]> | Readonly<Record<string, readonly number[]>>;

/** Everything that differs between a checkpoint and what a model expects. */
export interface CheckpointMismatch {
  readonly missing: string[];
  readonly unexpected: string[];
  readonly misshaped: Array<{ name: string; expected: readonly number[]; got: readonly number[] }>;
}

/**
 * A once-at-load layout change. `transpose` permutes axes (`[1, 0]` turns a PyTorch Linear
 * `[out, in]` into the `[in, out]` the wasm backend multiplies 6x faster).
 */
export interface LayoutTransform {
  readonly transpose?: readonly number[];
}

/** Transposes a 2-D Linear weight [out, in] → [in, out] at load. */
export const LINEAR_IN_OUT: LayoutTransform = { transpose: [1, 0] };

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
    let indexMap: Record<string, string> | undefined;
    if (statSync(path).isDirectory()) {
      const index = join(path, 'model.safetensors.index.json');
      const single = join(path, 'model.safetensors');
      if (existsSync(index)) ({ shardPaths, weightMap: indexMap } = shardsOf(index));
      else if (existsSync(single)) shardPaths = [single];
      else throw new Error(`checkpoint ${path}: neither model.safetensors nor model.safetensors.index.json found`);
    } else if (path.endsWith('.index.json')) {
      ({ shardPaths, weightMap: indexMap } = shardsOf(path));
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
      if (indexMap) checkIndex(path, indexMap, where);
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
  get(name: string, expectedShape?: readonly number[], options?: ReadOptions): HostTensor {
    const e = this.entry(name);
    if (expectedShape && !sameShape(e.shape, expectedShape)) {
      throw new Error(`checkpoint ${this.path}: tensor '${name}' has shape [${e.shape}] but the model expects [${expectedShape}]`);
    }
    this.used.add(name);
    return this.where.get(name)!.read(name, options);
  }

  /**
   * Reads one tensor onto the active tfjs backend, applying a once-at-load layout transform.
   * The host copy is dropped as soon as the tensor is uploaded.
   *
   * ```ts
   * const w = ckpt.tensor('thinker.model.layers.0.self_attn.q_proj.weight', [64, 32], LINEAR_IN_OUT); // [32, 64]
   * ```
   */
  tensor(name: string, expectedShape?: readonly number[], layout: LayoutTransform = {}): tf.Tensor {
    const h = this.get(name, expectedShape);
    if (!layout.transpose) return tf.tensor(h.data, h.shape, h.dtype);
    const perm = layout.transpose;
    if (perm.length !== h.shape.length || [...perm].sort().some((p, i) => p !== i)) {
      throw new Error(`checkpoint ${this.path}: tensor '${name}' of rank ${h.shape.length} cannot be transposed by [${perm}]`);
    }
    if (perm.length === 2 && perm[0] === 1) {
      // A blocked host transpose avoids holding the tensor twice on the device.
      return tf.tensor(transpose2d(h.data, h.shape[0], h.shape[1]), [h.shape[1], h.shape[0]], h.dtype);
    }
    return tf.tidy(() => tf.transpose(tf.tensor(h.data, h.shape, h.dtype), [...perm]));
  }

  /**
   * Compares the checkpoint with what a model expects and lists every missing, unexpected and
   * mis-shaped tensor (no tensor data is read).
   */
  compare(expected: ExpectedTensors): CheckpointMismatch {
    const want = expected instanceof Map ? expected : new Map(Object.entries(expected));
    const missing: string[] = [];
    const misshaped: CheckpointMismatch['misshaped'] = [];
    for (const [name, shape] of want) {
      const f = this.where.get(name);
      if (!f) missing.push(name);
      else if (!sameShape(f.entry(name).shape, shape)) misshaped.push({ name, expected: shape, got: f.entry(name).shape });
    }
    const unexpected = this.keys().filter((k) => !want.has(k));
    return { missing, unexpected, misshaped };
  }

  /**
   * Throws one error listing ALL missing, unexpected and mis-shaped tensors, if there are any.
   * `allowUnexpected` accepts extra tensors (for example, loading only the thinker of a full model).
   *
   * ```ts
   * ckpt.validate(qwen3OmniExpectedTensors(config));
   * ```
   */
  validate(expected: ExpectedTensors, options: { allowUnexpected?: boolean } = {}): void {
    const m = this.compare(expected);
    const unexpected = options.allowUnexpected ? [] : m.unexpected;
    if (m.missing.length + unexpected.length + m.misshaped.length === 0) return;
    const lines = [`checkpoint ${this.path} does not match the model:`];
    if (m.missing.length) lines.push(`  ${m.missing.length} missing: ${m.missing.join(', ')}`);
    if (unexpected.length) lines.push(`  ${unexpected.length} unexpected: ${unexpected.join(', ')}`);
    if (m.misshaped.length) lines.push(`  ${m.misshaped.length} mis-shaped: ${m.misshaped.map((x) => `${x.name} (expected [${x.expected}], got [${x.got}])`).join(', ')}`);
    throw new Error(lines.join('\n'));
  }

  /**
   * Validates the whole checkpoint against `expected` (one error listing every mismatch), then loads
   * every expected tensor onto the active backend, one at a time, applying `layout(name, shape)` —
   * e.g. LINEAR_IN_OUT for 2-D `*_proj.weight`. On a failure midway, what was loaded is disposed.
   *
   * ```ts
   * const weights = ckpt.loadAll(qwen3OmniExpectedTensors(config), { layout: (n, s) => (s.length === 2 && n.endsWith('proj.weight') ? LINEAR_IN_OUT : undefined) });
   * ```
   */
  loadAll(expected: ExpectedTensors, options: { layout?: (name: string, shape: readonly number[]) => LayoutTransform | undefined; allowUnexpected?: boolean } = {}): Map<string, tf.Tensor> {
    this.validate(expected, { allowUnexpected: options.allowUnexpected });
    const want = expected instanceof Map ? expected : new Map(Object.entries(expected));
    const out = new Map<string, tf.Tensor>();
    try {
      for (const [name, shape] of want) out.set(name, this.tensor(name, shape, options.layout?.(name, shape) ?? {}));
    } catch (err) {
      tf.dispose([...out.values()]);
      throw err;
    }
    return out;
  }

  /** Keys present in the checkpoint that were never read. */
  unused(): string[] {
    return this.keys().filter((k) => !this.used.has(k));
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

function shardsOf(indexPath: string): { shardPaths: string[]; weightMap: Record<string, string> } {
  let index: { weight_map?: Record<string, string> };
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new Error(`checkpoint index ${indexPath}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  const map = index?.weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map)) throw new Error(`checkpoint index ${indexPath}: no weight_map object`);
  const dir = dirname(indexPath);
  const weightMap: Record<string, string> = {};
  for (const [k, f] of Object.entries(map)) {
    if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f === '..') throw new Error(`checkpoint index ${indexPath}: tensor '${k}' maps to ${JSON.stringify(f)}, not a shard file name`);
    weightMap[k] = join(dir, f);
  }
  const shardPaths = [...new Set(Object.values(weightMap))];
  const absent = shardPaths.filter((p) => !existsSync(p));
  if (absent.length) throw new Error(`checkpoint index ${indexPath}: shard file(s) missing: ${absent.map((p) => basename(p)).join(', ')}`);
  return { shardPaths, weightMap };
}

/** The index must name exactly the tensors the shards hold, each in the shard that holds it. */
function checkIndex(path: string, weightMap: Record<string, string>, where: Map<string, SafetensorsFile>): void {
  const problems: string[] = [];
  for (const [k, shard] of Object.entries(weightMap)) {
    const f = where.get(k);
    if (!f) problems.push(`'${k}' is listed for ${basename(shard)} but no shard holds it`);
    else if (f.path !== shard) problems.push(`'${k}' is listed for ${basename(shard)} but found in ${basename(f.path)}`);
  }
  for (const k of where.keys()) if (!(k in weightMap)) problems.push(`'${k}' is in ${basename(where.get(k)!.path)} but not in the index`);
  if (problems.length) throw new Error(`checkpoint ${path}: index and shards disagree: ${problems.slice(0, 20).join('; ')}${problems.length > 20 ? `; and ${problems.length - 20} more` : ''}`);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Row-major [rows, cols] → [cols, rows], in cache-sized blocks. */
export function transpose2d<T extends Float32Array | Int32Array>(src: T, rows: number, cols: number): T {
  const out = new (src.constructor as new (n: number) => T)(rows * cols);
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = src[r * cols + c];
    }
  }
  return out;
}

/**
 * Writes a sharded checkpoint in the Hugging Face layout: `model-0000i-of-0000n.safetensors` files of
 * at most `maxShardBytes` each (a tensor larger than that gets a shard of its own) plus
 * `model.safetensors.index.json`. Returns the shard file names.
 *
 * ```ts
 * writeShardedCheckpoint('/tmp/ckpt', { 'a.weight': { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } }, { maxShardBytes: 1 << 30 });
 * const ckpt = Checkpoint.open('/tmp/ckpt');
 * ```
 */
export function writeShardedCheckpoint(dir: string, tensors: Readonly<Record<string, TensorToWrite>>, options: { maxShardBytes: number; metadata?: Record<string, string> }): string[] {
  const groups: Array<Record<string, TensorToWrite>> = [];
  let size = Infinity;
  let totalSize = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * (SAFETENSORS_DTYPE_BYTES[t.dtype] ?? 0);
    if (size + bytes > options.maxShardBytes || groups.length === 0) {
      groups.push({});
      size = 0;
    }
    groups[groups.length - 1][name] = t;
    size += bytes;
    totalSize += bytes;
  }
  mkdirSync(dir, { recursive: true });
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = groups.map((_, i) => `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  groups.forEach((g, i) => {
    writeSafetensors(join(dir, names[i]), g, options.metadata ?? { format: 'pt' });
    for (const k of Object.keys(g)) weightMap[k] = names[i];
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) + '\n');
  return names;
}
