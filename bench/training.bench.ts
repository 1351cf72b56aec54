/**
 * Captioner training throughput (`omniflow train-captioner`'s loop) on the built-in model's sizes: steps of 12
 * generated clips fine-tuning the shipped weights (the cost per step is the same as from random weights), all in
 * process (`workers: 0`, one core: the baseline) and split with one gradient worker (`workers: 1`, two cores: what the
 * shipped model was trained with). The first steps are dropped (compilation, warm-up). Reported: median seconds per
 * step, clips per second, what a 60-minute budget buys in steps and clips, and the minutes the shipped model's 8000
 * steps (models/omniflow-captioner/TRAINING.md) take at this speed. Noisy when other processes share the CPUs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { builtinCaptionerDir, trainCaptioner } from '@omniflow/nodes';

const BATCH = 12;
const STEPS = 36;
const WARMUP_STEPS = 6;
const SHIPPED_RECIPE_STEPS = 8000;

export async function run(): Promise<object> {
  const root = mkdtempSync(join(tmpdir(), 'omniflow-training-bench-'));
  try {
    const measure = async (workers: number) => {
      const seconds: number[] = [];
      await trainCaptioner({
        outDir: join(root, `w${workers}`), init: { from: builtinCaptionerDir() }, data: { kind: 'scenes', seed: 500 },
        steps: STEPS, batchSize: BATCH, learningRate: 1e-5, warmupSteps: 1, checkpointEvery: 10_000, workers, resume: false,
        onStep: (r) => seconds.push(r.seconds),
      });
      const kept = seconds.slice(WARMUP_STEPS).sort((a, b) => a - b);
      const s = kept[Math.floor(kept.length / 2)]!;
      return {
        workers, secondsPerStepMedian: +s.toFixed(3), secondsPerStepMin: +kept[0]!.toFixed(3), clipsPerSecond: +(BATCH / s).toFixed(1),
        stepsIn60Minutes: Math.floor(3600 / s), clipsIn60Minutes: Math.floor(3600 / s) * BATCH, shippedRecipeMinutes: Math.round((SHIPPED_RECIPE_STEPS * s) / 60),
      };
    };
    const oneCore = await measure(0);
    const twoCores = await measure(1);
    return { batchSize: BATCH, stepsTimed: STEPS - WARMUP_STEPS, oneCore, twoCores, speedupTwoCores: +(oneCore.secondsPerStepMedian / twoCores.secondsPerStepMedian).toFixed(2) };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
