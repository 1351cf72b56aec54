import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import {
  BUILTIN_CAPTIONER_SIZES, TINY_CAPTIONER_SIZES, builtinCaptionerDir, evaluateCaptioner, trainCaptioner,
  type CaptionDataSource, type TrainStepReport,
} from '@omniflow/nodes';
import { int, num } from '../option-parsers.js';

/*
 * `omniflow train-captioner` and `omniflow eval-captioner`: train (or fine-tune) a Qwen3-Omni-layout captioner on
 * generated scenes or a folder of WAV + .txt pairs, and score one on fresh scenes. docs/train-a-captioner.md.
 */

interface TrainFlags {
  out: string;
  data?: string;
  sceneSeed: number;
  from?: string;
  growAudioLayers: number;
  growTextLayers: number;
  size: 'builtin' | 'tiny';
  initSeed: number;
  steps: number;
  batchSize: number;
  lr: number;
  warmup: number;
  minLrRatio: number;
  clip: number;
  weightDecay: number;
  focalGamma: number;
  checkpointEvery: number;
  workers: number;
  resume: boolean;
  stopAt?: number;
  progress?: boolean;
}

interface EvalFlags {
  model?: string;
  seed: number;
  count: number;
  batchSize: number;
  files: string[];
  showErrors: number;
}

/**
 * Adds `train-captioner` and `eval-captioner` to the program.
 *
 * ```ts
 * const program = buildProgram(setExit);
 * addCaptionerTrainingCommands(program, setExit);
 * ```
 */
export function addCaptionerTrainingCommands(program: Command, setExit: (code: number) => void): void {
  program
    .command('train-captioner')
    .description('train a Qwen3-Omni-layout captioner on generated scenes or a folder of WAV files with .txt captions (or fine-tune one with --from)')
    .requiredOption('-o, --out <dir>', 'output model folder (checkpoints in <dir>/checkpoint; an existing checkpoint is resumed)')
    .option('--data <dir>', 'folder of *.wav files each with a *.txt caption (default: generated scenes)')
    .option('--scene-seed <n>', 'seed of the generated scenes (or of the folder shuffle)', int('--scene-seed', 0), 1)
    .option('--from <dir>', 'fine-tune this model folder instead of starting from random weights')
    .option('--grow-audio-layers <n>', 'with --from: append this many audio tower layers that start as no-ops (seeded by --init-seed)', int('--grow-audio-layers', 0), 0)
    .option('--grow-text-layers <n>', 'with --from: append this many text model layers that start as no-ops (seeded by --init-seed)', int('--grow-text-layers', 0), 0)
    .option('--size <name>', "sizes of a new model: 'builtin' (the shipped one's) or 'tiny'", 'builtin')
    .option('--init-seed <n>', 'seed of the random initial weights', int('--init-seed', 0), 0)
    .option('--steps <n>', 'optimizer steps', int('--steps', 1), 1200)
    .option('--batch-size <n>', 'clips per step', int('--batch-size', 1), 12)
    .option('--lr <x>', 'peak learning rate', num('--lr', { nonNegative: true }), 2e-3)
    .option('--warmup <n>', 'linear warmup steps', int('--warmup', 0), 60)
    .option('--min-lr-ratio <x>', 'final learning rate as a fraction of the peak (cosine decay)', num('--min-lr-ratio', { nonNegative: true }), 0.05)
    .option('--clip <x>', 'clip the global gradient norm to this (0: off)', num('--clip', { nonNegative: true }), 1)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay on matrices', num('--weight-decay', { nonNegative: true }), 0.01)
    .option('--focal-gamma <x>', 'focal loss: weight each token by (1 - p)^x, p the right token\'s probability (0: cross-entropy)', num('--focal-gamma', { nonNegative: true }), 0)
    .option('--checkpoint-every <n>', 'steps between checkpoints', int('--checkpoint-every', 1), 50)
    .option('--workers <n>', 'gradient worker threads beside the main thread (data parallel)', int('--workers', 0), 1)
    .option('--stop-at <step>', 'stop (with a checkpoint) after this step; run again to continue', int('--stop-at', 1))
    .option('--no-resume', 'start over even if <out>/checkpoint exists')
    .option('--no-progress', 'print one line per step instead of a progress bar')
    .action(async (flags: TrainFlags) => setExit(await trainCommand(flags)));

  program
    .command('eval-captioner')
    .description('caption freshly generated scenes (a seed training never used) and print exact-match rate and event-level F1 as JSON')
    .option('-m, --model <dir>', 'model folder (default: the built-in captioner)')
    .option('--seed <n>', 'scene seed to evaluate on', int('--seed', 0), 1000)
    .option('--count <n>', 'number of scenes', int('--count', 1), 200)
    .option('--batch-size <n>', 'clips per batched generation', int('--batch-size', 1), 16)
    .option('--files <wav...>', 'WAV files to caption too (default: examples/audio/*.wav when captioning the built-in model)', [])
    .option('--show-errors <n>', 'wrong captions to list', int('--show-errors', 0), 10)
    .action(async (flags: EvalFlags) => setExit(await evalCommand(flags)));
}

async function trainCommand(f: TrainFlags): Promise<number> {
  if (f.size !== 'builtin' && f.size !== 'tiny') {
    process.stderr.write(`omniflow train-captioner: --size must be 'builtin' or 'tiny', got '${f.size}'\n`);
    return 2;
  }
  if (f.from && !existsSync(join(f.from, 'config.json'))) {
    process.stderr.write(`omniflow train-captioner: --from ${f.from} has no config.json (expected a model folder)\n`);
    return 2;
  }
  if (!f.from && (f.growAudioLayers > 0 || f.growTextLayers > 0)) {
    process.stderr.write('omniflow train-captioner: --grow-audio-layers and --grow-text-layers grow the model given by --from\n');
    return 2;
  }
  const data: CaptionDataSource = f.data ? { kind: 'folder', dir: resolve(f.data), seed: f.sceneSeed } : { kind: 'scenes', seed: f.sceneSeed };
  const showBar = (f.progress ?? true) && Boolean(process.stderr.isTTY);
  const bar = showBar
    ? new cliProgress.SingleBar({ format: 'training {bar} {value}/{total} steps | loss {loss} | lr {lr} | {sps} s/step | ETA {eta_formatted}', stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic)
    : undefined;
  let barStarted = false;
  const onStep = (r: TrainStepReport) => {
    if (bar) {
      if (!barStarted) bar.start(r.steps, r.step - 1, { loss: '-', lr: '-', sps: '-' });
      barStarted = true;
      bar.update(r.step, { loss: r.loss.toFixed(4), lr: r.learningRate.toExponential(2), sps: r.seconds.toFixed(2) });
    } else {
      process.stderr.write(`step ${r.step}/${r.steps} loss ${r.loss.toFixed(4)} lr ${r.learningRate.toExponential(2)} grad-norm ${r.gradNorm.toFixed(3)} ${r.seconds.toFixed(2)} s\n`);
    }
  };
  try {
    const result = await trainCaptioner({
      outDir: resolve(f.out),
      init: f.from ? { from: resolve(f.from), grow: { audioLayers: f.growAudioLayers, textLayers: f.growTextLayers }, seed: f.initSeed } : { sizes: f.size === 'tiny' ? TINY_CAPTIONER_SIZES : BUILTIN_CAPTIONER_SIZES, seed: f.initSeed },
      data,
      steps: f.steps,
      batchSize: f.batchSize,
      focalGamma: f.focalGamma,
      learningRate: f.lr,
      warmupSteps: f.warmup,
      minLrRatio: f.minLrRatio,
      clipNorm: f.clip,
      weightDecay: f.weightDecay,
      checkpointEvery: f.checkpointEvery,
      workers: f.workers,
      resume: f.resume,
      stopAtStep: f.stopAt,
      onStep,
    });
    bar?.stop();
    const last = result.losses.slice(-20);
    const summary = { out: result.outDir, step: result.step, finished: result.finished, parameters: result.parameters, seconds: Math.round(result.seconds), meanLossLast20: last.reduce((a, b) => a + b, 0) / last.length };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return 0;
  } catch (err) {
    bar?.stop();
    process.stderr.write(`omniflow train-captioner: ${(err as Error).message}\n`);
    return 2;
  }
}

async function evalCommand(f: EvalFlags): Promise<number> {
  try {
    const model = f.model ? resolve(f.model) : builtinCaptionerDir();
    let files = f.files;
    if (!f.model && files.length === 0) {
      const demo = resolve(model, '..', '..', 'examples', 'audio');
      if (existsSync(demo)) files = (await import('node:fs')).readdirSync(demo).filter((n) => n.endsWith('.wav')).sort().map((n) => join(demo, n));
    }
    const report = await evaluateCaptioner({
      model, seed: f.seed, count: f.count, batchSize: f.batchSize, files, showErrors: f.showErrors,
      onProgress: (done, total) => process.stderr.write(`\r${done}/${total} scenes`),
    });
    process.stderr.write('\n');
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`omniflow eval-captioner: ${(err as Error).message}\n`);
    return 2;
  }
}
