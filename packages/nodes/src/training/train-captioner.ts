import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { WorkerStage, writeSafetensors, type HostTensor, type HostTensors } from '@omniflow/runtime-gpu';
import { loadQwen3Omni, type Qwen3OmniModel } from '../models/qwen3-omni/load.js';
import { Adam, learningRate } from './adam.js';
import { captionExample, labelledClip, loadCaptionFolder, type CaptionDataSource } from './caption-data.js';
import { captionerConfig, growCaptioner, initialCaptionerWeights, readFloatTensors, writeCaptionerFolder, type CaptionerGrowth, type CaptionerSizes } from './captioner-model.js';
import { loadTrainableCaptioner, shardGradients } from './gradient-stage.js';
import type { TrainableCaptioner } from './trainable-captioner.js';

/*
 * The captioner training loop: teacher-forced cross-entropy over the model's own forward, Adam with global-norm
 * clipping, warmup + cosine learning rate, data-parallel gradients over worker threads, checkpoints that resume on the
 * same trajectory (weights in the official layout, optimizer moments, step; the data stream is a function of the step).
 */

export interface TrainCaptionerOptions {
  /** The trained model folder is written here; checkpoints go to `<outDir>/checkpoint`. */
  readonly outDir: string;
  /**
   * Start from random weights of these sizes (seeded), or fine-tune a model folder, optionally grown by new layers
   * that start as no-ops (growCaptioner; `seed` initialises them). Ignored when resuming.
   */
  readonly init: { readonly sizes: CaptionerSizes; readonly seed: number } | { readonly from: string; readonly grow?: CaptionerGrowth; readonly seed?: number };
  readonly data: CaptionDataSource;
  readonly steps: number;
  readonly batchSize: number;
  readonly learningRate?: number;
  readonly warmupSteps?: number;
  /** Final learning rate as a fraction of the peak (cosine decay). */
  readonly minLrRatio?: number;
  readonly clipNorm?: number;
  readonly weightDecay?: number;
  /**
   * Focal loss: weight each token's cross-entropy by (1 − p)^γ, p the probability the model gives the right token
   * (default 0: plain cross-entropy). Concentrates a fine-tuning run on the tokens still wrong; the logged loss is the
   * weighted one.
   */
  readonly focalGamma?: number;
  /** Steps between checkpoints (and always at the end). */
  readonly checkpointEvery?: number;
  /** Gradient worker threads beside the main thread (0: all in-process). The batch is split into workers + 1 shards. */
  readonly workers?: number;
  /** Continue from `<outDir>/checkpoint` when it exists (default true). */
  readonly resume?: boolean;
  /** Stop after this step (a checkpoint is written there) — a run split in parts follows the same trajectory. */
  readonly stopAtStep?: number;
  readonly onStep?: (report: TrainStepReport) => void;
  readonly onCheckpoint?: (step: number, dir: string) => void;
}

export interface TrainStepReport {
  /** Steps done (1-based). */
  readonly step: number;
  readonly steps: number;
  /** Mean cross-entropy per caption token of this step's batch. */
  readonly loss: number;
  readonly learningRate: number;
  readonly gradNorm: number;
  readonly tokens: number;
  readonly seconds: number;
}

export interface TrainCaptionerResult {
  readonly outDir: string;
  /** Step reached (equals `steps` unless stopAtStep stopped earlier). */
  readonly step: number;
  /** Loss of every step since the run began, resumed parts included. */
  readonly losses: number[];
  readonly seconds: number;
  readonly parameters: number;
  readonly finished: boolean;
}

interface TrainerState {
  step: number;
  losses: number[];
  seconds: number;
  hyper: Record<string, unknown>;
}

/**
 * Trains (or fine-tunes) a captioner and writes the model folder `outDir` (config.json, model.safetensors,
 * tokenizer files, loadable by loadQwen3Omni).
 *
 * ```ts
 * await trainCaptioner({
 *   outDir: 'runs/tiny', init: { sizes: TINY_CAPTIONER_SIZES, seed: 0 }, data: { kind: 'scenes', seed: 1 },
 *   steps: 200, batchSize: 8, onStep: (r) => console.log(r.step, r.loss),
 * });
 * ```
 */
export async function trainCaptioner(options: TrainCaptionerOptions): Promise<TrainCaptionerResult> {
  const o = {
    learningRate: 2e-3, warmupSteps: 50, minLrRatio: 0.05, clipNorm: 1, weightDecay: 0.01, focalGamma: 0, checkpointEvery: 100, workers: 0, resume: true,
    ...options,
  };
  if (!Number.isInteger(o.steps) || o.steps <= 0) throw new Error(`trainCaptioner: steps must be a positive integer, got ${o.steps}`);
  if (!Number.isInteger(o.batchSize) || o.batchSize <= 0) throw new Error(`trainCaptioner: batchSize must be a positive integer, got ${o.batchSize}`);
  if (!Number.isInteger(o.workers) || o.workers < 0) throw new Error(`trainCaptioner: workers must be a non-negative integer, got ${o.workers}`);
  if (!(o.focalGamma >= 0)) throw new Error(`trainCaptioner: focalGamma must be ≥ 0, got ${o.focalGamma}`);
  if (o.batchSize < o.workers + 1) throw new Error(`trainCaptioner: batchSize ${o.batchSize} is smaller than the ${o.workers + 1} shards (workers + 1)`);

  const ckptDir = join(o.outDir, 'checkpoint');
  // focalGamma is recorded only when used, so checkpoints written before it existed still resume.
  const hyper = { steps: o.steps, batchSize: o.batchSize, learningRate: o.learningRate, warmupSteps: o.warmupSteps, minLrRatio: o.minLrRatio, clipNorm: o.clipNorm, weightDecay: o.weightDecay, data: o.data, ...(o.focalGamma > 0 ? { focalGamma: o.focalGamma } : {}) };
  let state: TrainerState;
  if (o.resume && existsSync(join(ckptDir, 'trainer-state.json'))) {
    state = JSON.parse(readFileSync(join(ckptDir, 'trainer-state.json'), 'utf8')) as TrainerState;
    // Everything but the step count must match; a new `steps` re-plans the cosine decay from the current step on.
    for (const [k, v] of Object.entries(hyper)) {
      if (k === 'steps') continue;
      if (JSON.stringify(state.hyper[k]) !== JSON.stringify(v)) throw new Error(`trainCaptioner: ${ckptDir} was trained with ${k} = ${JSON.stringify(state.hyper[k])}, this run asks for ${JSON.stringify(v)}; resume with the same settings or use another outDir`);
    }
    if (state.hyper.steps !== o.steps) {
      if (o.steps < state.step) throw new Error(`trainCaptioner: ${ckptDir} is at step ${state.step}, past the ${o.steps} steps asked for`);
      state.hyper.changes ??= [];
      (state.hyper.changes as unknown[]).push({ atStep: state.step, steps: { from: state.hyper.steps, to: o.steps } });
      state.hyper.steps = o.steps;
    }
  } else {
    rmSync(ckptDir, { recursive: true, force: true });
    if ('from' in o.init) {
      mkdirSync(ckptDir, { recursive: true });
      const grow = o.init.grow && ((o.init.grow.audioLayers ?? 0) > 0 || (o.init.grow.textLayers ?? 0) > 0);
      for (const f of grow ? ['tokenizer.json', 'tokenizer_config.json'] : ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(o.init.from, f), join(ckptDir, f));
      if (grow) {
        const grown = growCaptioner(JSON.parse(readFileSync(join(o.init.from, 'config.json'), 'utf8')), readFloatTensors(join(o.init.from, 'model.safetensors')), o.init.grow!, o.init.seed ?? 0);
        writeFileSync(join(ckptDir, 'config.json'), `${JSON.stringify(grown.config, null, 2)}\n`);
        writeSafetensors(join(ckptDir, 'model.safetensors'), grown.weights, { format: 'pt' });
      }
    } else {
      const config = captionerConfig(o.init.sizes);
      writeCaptionerFolder(ckptDir, config, initialCaptionerWeights(config, o.init.seed));
    }
    state = { step: 0, losses: [], seconds: 0, hyper };
    writeFileSync(join(ckptDir, 'trainer-state.json'), JSON.stringify(state));
  }

  const { trainable, logMel } = await loadTrainableCaptioner(ckptDir);
  const model = trainable.model;
  const adam = new Adam(new Map(trainable.parameters.map((p) => [p.name, p.variable])), { clipNorm: o.clipNorm, weightDecay: o.weightDecay });
  const workers: WorkerStage[] = [];
  try {
    if (existsSync(join(ckptDir, 'optimizer.safetensors'))) adam.importState(state.step, readFloatTensors(join(ckptDir, 'optimizer.safetensors')));
    const folder = o.data.kind === 'folder' ? await loadCaptionFolder(o.data.dir) : undefined;
    for (let w = 0; w < o.workers; w++) {
      // From sources the sibling is gradient-stage.ts; in a build, gradient-stage.js.
      const module = new URL(import.meta.url.endsWith('.ts') ? './gradient-stage.ts' : './gradient-stage.js', import.meta.url);
      workers.push(await WorkerStage.start({ module, setup: { modelDir: ckptDir, data: o.data, focalGamma: o.focalGamma } }));
    }
    const schedule = { peak: o.learningRate, warmup: o.warmupSteps, total: o.steps, minRatio: o.minLrRatio };
    const stopAt = Math.min(o.steps, o.stopAtStep ?? o.steps);
    const t0 = performance.now() - state.seconds * 1000;
    try {
      while (state.step < stopAt) {
        const stepStart = performance.now();
        const first = state.step * o.batchSize;
        const indices = Array.from({ length: o.batchSize }, (_, i) => first + i);
        const shards = splitEven(indices, o.workers + 1);
        // Workers get the weights of this step; the main thread computes shard 0 meanwhile.
        const weights = workers.length ? currentWeights(trainable) : undefined;
        const remote = workers.map((w, k) => w.run({ ...copyWeights(weights!), __indices: { dtype: 'int32', shape: [shards[k + 1]!.length], data: Int32Array.from(shards[k + 1]!) } }));
        const examples = shards[0]!.map((i) => captionExample(labelledClip(o.data, i, folder), model.tokenizer, logMel));
        const local = shardGradients(trainable, examples, { focalGamma: o.focalGamma });
        const results = [local, ...(await Promise.all(remote)).map(fromWorker)];
        const tokens = results.reduce((a, r) => a + r.tokens, 0);
        const lossSum = results.reduce((a, r) => a + r.loss, 0);
        const grads: Record<string, Float32Array> = {};
        for (const p of trainable.parameters) {
          // Σ over shards in a fixed order, then / tokens: the mean-token loss's gradient, the same however it is split.
          const sum = new Float32Array(p.variable.size);
          for (const r of results) {
            const g = r.grads.get(p.name)!.data as Float32Array;
            for (let j = 0; j < sum.length; j++) sum[j]! += g[j]!;
          }
          for (let j = 0; j < sum.length; j++) sum[j]! /= tokens;
          grads[p.name] = sum;
        }
        const lr = learningRate(state.step, schedule);
        const { gradNorm } = adam.apply(grads, lr);
        state.step++;
        const loss = lossSum / tokens;
        state.losses.push(loss);
        state.seconds = (performance.now() - t0) / 1000;
        o.onStep?.({ step: state.step, steps: o.steps, loss, learningRate: lr, gradNorm, tokens, seconds: (performance.now() - stepStart) / 1000 });
        if (state.step % o.checkpointEvery === 0 || state.step === stopAt) {
          saveCheckpoint(ckptDir, trainable, adam, state);
          o.onCheckpoint?.(state.step, ckptDir);
        }
      }
    } finally {
      await Promise.all(workers.map((w) => w.close()));
    }
    const finished = state.step >= o.steps;
    if (finished) {
      mkdirSync(o.outDir, { recursive: true });
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(ckptDir, f), join(o.outDir, f));
    }
    return { outDir: o.outDir, step: state.step, losses: state.losses, seconds: state.seconds, parameters: trainable.parameterCount, finished };
  } finally {
    adam.dispose();
    model.dispose();
    trainable.embedTokens.dispose();
    logMel.dispose();
  }
}

/** Writes the checkpoint folder (model in the official layout, optimizer moments, trainer state), replacing the previous one atomically. */
function saveCheckpoint(dir: string, trainable: TrainableCaptioner, adam: Adam, state: TrainerState): void {
  const tmp = `${dir}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(dir, f), join(tmp, f));
  writeSafetensors(join(tmp, 'model.safetensors'), trainable.exportWeights(), { format: 'pt', step: String(state.step) });
  const opt = adam.exportState();
  writeSafetensors(join(tmp, 'optimizer.safetensors'), Object.fromEntries(Object.entries(opt.tensors).map(([k, t]) => [k, { dtype: 'F32' as const, shape: t.shape, data: t.data }])), { step: String(opt.step) });
  writeFileSync(join(tmp, 'trainer-state.json'), JSON.stringify(state));
  const old = `${dir}.old`;
  rmSync(old, { recursive: true, force: true });
  renameSync(dir, old);
  renameSync(tmp, dir);
  rmSync(old, { recursive: true, force: true });
}

function currentWeights(trainable: TrainableCaptioner): Map<string, Float32Array> {
  return new Map(trainable.parameters.map((p) => [p.name, p.variable.dataSync() as Float32Array]));
}

/** Worker inputs are transferred (unusable afterwards), so every worker gets its own copy. */
function copyWeights(weights: Map<string, Float32Array>): HostTensors {
  const out: HostTensors = {};
  for (const [name, data] of weights) out[name] = { dtype: 'float32', shape: [data.length], data: data.slice() };
  return out;
}

function fromWorker(out: HostTensors): { loss: number; tokens: number; grads: Map<string, HostTensor> } {
  const [loss, tokens] = out.__loss!.data as Float32Array;
  const grads = new Map(Object.entries(out).filter(([k]) => k !== '__loss'));
  return { loss: loss!, tokens: tokens!, grads };
}

function splitEven<T>(items: readonly T[], parts: number): T[][] {
  const out: T[][] = [];
  let start = 0;
  for (let p = 0; p < parts; p++) {
    const n = Math.floor(items.length / parts) + (p < items.length % parts ? 1 : 0);
    out.push(items.slice(start, start + n));
    start += n;
  }
  return out;
}

/**
 * Loads a trained folder for captioning (loadQwen3Omni with the captioner's two modules).
 *
 * ```ts
 * const model = await loadCaptioner('runs/my-captioner');
 * console.log(await captionText(model, pcm16k));
 * ```
 */
export function loadCaptioner(dir: string): Promise<Qwen3OmniModel> {
  return loadQwen3Omni(dir, { modules: ['thinker', 'audio_tower'] });
}
