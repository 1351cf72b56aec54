import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import wavefile from 'wavefile';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { LogMel } from '../media/log-mel.js';
import { loadQwen3Omni } from '../models/qwen3-omni/load.js';
import { captionText } from '../models/qwen3-omni/captioner.js';
import { sparseMoe } from '../layers/moe.js';
import { captionExample, labelledClip, loadCaptionFolder } from './caption-data.js';
import { generateScene } from './scenes.js';
import { growCaptioner, readFloatTensors, TINY_CAPTIONER_SIZES } from './captioner-model.js';
import { shardGradients } from './gradient-stage.js';
import { trainCaptioner, type TrainCaptionerOptions } from './train-captioner.js';
import { evaluateCaptioner } from './evaluate-captioner.js';
import { TrainableCaptioner } from './trainable-captioner.js';
import { registerTfjsGradients } from './tfjs-gradients.js';
import { registerWasmGradientKernels } from './wasm-gradient-kernels.js';

const root = mkdtempSync(join(tmpdir(), 'omniflow-train-'));
const base: Omit<TrainCaptionerOptions, 'outDir'> = {
  init: { sizes: TINY_CAPTIONER_SIZES, seed: 0 }, data: { kind: 'scenes', seed: 1 }, steps: 4, batchSize: 2, warmupSteps: 1, learningRate: 4e-3, checkpointEvery: 100,
};

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
  await registerTfjsGradients();
  registerWasmGradientKernels();
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('gradients on wasm', () => {
  it('conv, gather and transposed-matmul gradients equal the cpu backend', async () => {
    const run = () => {
      const x = tf.randomNormal([2, 11, 9, 3], 0, 1, 'float32', 1);
      const f = tf.randomNormal([3, 3, 3, 4], 0, 1, 'float32', 2);
      const e = tf.randomNormal([5, 4], 0, 1, 'float32', 3);
      const w = tf.randomNormal([4, 6], 0, 1, 'float32', 4);
      const g = tf.grads((xx: tf.Tensor, ff: tf.Tensor, ee: tf.Tensor, ww: tf.Tensor) => {
        const y = tf.conv2d(xx as tf.Tensor4D, ff as tf.Tensor4D, 2, 1); // [2, 6, 5, 4]
        const rows = tf.gather(ee, tf.tensor1d([0, 3, 3, 4], 'int32')); // [4, 4]
        return tf.add(tf.sum(tf.square(y)), tf.sum(tf.matMul(rows, ww as tf.Tensor2D, true, false)));
      })([x, f, e, w]);
      const out = g.map((t) => Array.from(t.dataSync()));
      tf.dispose([x, f, e, w, ...g]);
      return out;
    };
    const onWasm = run();
    await tf.setBackend('cpu');
    const onCpu = run();
    await tf.setBackend('wasm');
    onWasm.forEach((g, i) => g.forEach((v, j) => expect(v).toBeCloseTo(onCpu[i]![j]!, 3)));
    expect(onWasm[2]![4]).toBe(0); // row 1 of the embedding was never gathered
  });

  it('conv input and filter gradients (wasm: by output phase; patches × dy) equal the cpu backend for any stride, kernel and padding', async () => {
    const cases = [
      { x: [2, 11, 9, 3], f: [3, 3, 3, 4], s: [2, 2] as [number, number], p: 1 },
      { x: [1, 8, 7, 2], f: [3, 3, 2, 5], s: [1, 1] as [number, number], p: 1 },
      { x: [1, 10, 9, 2], f: [2, 2, 2, 3], s: [3, 3] as [number, number], p: 0 }, // phases no tap reaches: zeros
      { x: [2, 9, 12, 4], f: [3, 3, 4, 3], s: [2, 2] as [number, number], p: 0 }, // (tfjs-wasm's own forward conv2d fails on unequal strides, padding 2, some non-square kernels)
    ];
    const run = () => cases.map(({ x, f, s, p }, k) => {
      const xt = tf.randomNormal(x, 0, 1, 'float32', 10 + k);
      const ft = tf.randomNormal(f, 0, 1, 'float32', 20 + k);
      const [dx, df] = tf.grads((xx: tf.Tensor, ff: tf.Tensor) => tf.sum(tf.sin(tf.conv2d(xx as tf.Tensor4D, ff as tf.Tensor4D, s, p))))([xt, ft]);
      const out = [...dx!.dataSync(), ...df!.dataSync()];
      tf.dispose([xt, ft, dx!, df!]);
      return out;
    });
    const before = tf.memory().numTensors;
    const onWasm = run();
    expect(tf.memory().numTensors).toBe(before);
    await tf.setBackend('cpu');
    const onCpu = run();
    await tf.setBackend('wasm');
    onWasm.forEach((g, i) => {
      expect(g.length).toBe(onCpu[i]!.length);
      g.forEach((v, j) => expect(v).toBeCloseTo(onCpu[i]![j]!, 4));
    });
  });

  it('differentiable MoE routing gives the inference output and trains the router', () => {
    const before = tf.memory().numTensors;
    const hidden = 8, E = 4;
    const expert = (seed: number) => ({ gateUp: tf.randomNormal([hidden, 12], 0, 0.5, 'float32', seed) as tf.Tensor2D, down: tf.randomNormal([6, hidden], 0, 0.5, 'float32', seed + 100) as tf.Tensor2D, hidden, intermediate: 6 });
    const moe = { router: tf.randomNormal([hidden, E], 0, 1, 'float32', 9) as tf.Tensor2D, experts: [expert(1), expert(2), expert(3), expert(4)], topK: 2, normTopKProb: true, hidden };
    const x = tf.randomNormal([5, hidden], 0, 1, 'float32', 10) as tf.Tensor2D;
    const host = sparseMoe(x, moe).output;
    const device = sparseMoe(x, moe, { differentiableRouting: true }).output;
    const a = host.dataSync(), b = device.dataSync();
    a.forEach((v, i) => expect(b[i]).toBeCloseTo(v, 5));
    // The router gradient against a central difference, at its largest entry.
    const c = tf.randomNormal([5, hidden], 0, 1, 'float32', 11);
    const objective = (r: tf.Tensor) => tf.sum(tf.mul(sparseMoe(x, { ...moe, router: r as tf.Tensor2D }, { differentiableRouting: true }).output, c));
    const [dRouter] = tf.grads(objective)([moe.router]);
    const g = Array.from(dRouter!.dataSync());
    const k = g.reduce((best, v, i) => (Math.abs(v) > Math.abs(g[best]!) ? i : best), 0);
    const eps = 1e-2;
    const shifted = (d: number) => tf.tidy(() => objective(tf.add(moe.router, tf.mul(tf.reshape(tf.oneHot(tf.tensor1d([k], 'int32'), hidden * E), [hidden, E]), d))).dataSync()[0]!);
    const numeric = (shifted(eps) - shifted(-eps)) / (2 * eps);
    expect(Math.abs(numeric)).toBeGreaterThan(1e-2);
    expect(g[k]!).toBeCloseTo(numeric, 2);
    tf.dispose([host, device, dRouter!, c, x, moe.router, ...moe.experts.flatMap((e) => [e.gateUp, e.down])]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('trainCaptioner', () => {
  it('lowers the loss in a few steps and its checkpoint reloads to identical outputs', async () => {
    const out = join(root, 'a');
    const r = await trainCaptioner({ ...base, outDir: out, resume: false });
    expect(r.finished).toBe(true);
    expect(r.losses).toHaveLength(4);
    expect(r.losses[3]!).toBeLessThan(r.losses[0]! - 0.2);

    // The saved folder is a plain Qwen3-Omni checkpoint: loaded twice, once made trainable, the two give the same
    // loss on a batch and the same greedy caption.
    const m1 = await loadQwen3Omni(out);
    const m2 = await loadQwen3Omni(out);
    const t2 = new TrainableCaptioner(m2);
    const mel = new LogMel();
    const examples = [0, 1].map((i) => captionExample(labelledClip({ kind: 'scenes', seed: 9 }, i), m1.tokenizer, mel));
    const t1 = new TrainableCaptioner(m1);
    const l1 = shardGradients(t1, examples), l2 = shardGradients(t2, examples);
    expect(l2.loss).toBe(l1.loss);
    t1.syncEmbedding();
    t2.syncEmbedding();
    const pcm = labelledClip({ kind: 'scenes', seed: 9 }, 0).pcm;
    expect(await captionText(m2, pcm, { maxNewTokens: 8 })).toBe(await captionText(m1, pcm, { maxNewTokens: 8 }));
    for (const [m, t] of [[m1, t1], [m2, t2]] as const) {
      m.dispose();
      t.embedTokens.dispose();
    }
    mel.dispose();

    // The evaluation path: captions through the batched captioner, scored against the scenes' references.
    const report = await evaluateCaptioner({ model: out, seed: 5, count: 3, batchSize: 2, maxNewTokens: 6 });
    expect(report.scores.count).toBe(3);
    expect(report.errors.length).toBe(3 - Math.round(report.scores.exactMatch * 3));
    expect(report.errors[0]?.reference).toBe(generateScene(5, report.errors[0]!.index).caption);
  });

  it('packs a batch into one text-model forward: its loss is the token-weighted sum of the clips\' own losses', async () => {
    const out = join(root, 'packed');
    await trainCaptioner({ ...base, steps: 1, outDir: out, resume: false });
    const model = await loadQwen3Omni(out);
    const trainable = new TrainableCaptioner(model);
    const mel = new LogMel();
    const examples = [0, 1, 2].map((i) => captionExample(labelledClip({ kind: 'scenes', seed: 11 }, i), model.tokenizer, mel));
    const before = tf.memory().numTensors;
    const batch = shardGradients(trainable, examples);
    const alone = examples.map((e) => shardGradients(trainable, [e]));
    expect(tf.memory().numTensors).toBe(before);
    expect(batch.tokens).toBe(alone.reduce((a, r) => a + r.tokens, 0));
    expect(batch.loss).toBeCloseTo(alone.reduce((a, r) => a + r.loss, 0), 4);
    // The focal loss weights each token by (1 − p)^γ ≤ 1: below the cross-entropy, equal to it at γ = 0.
    expect(shardGradients(trainable, examples, { focalGamma: 0 }).loss).toBe(batch.loss);
    const focal = shardGradients(trainable, examples, { focalGamma: 2 }).loss;
    expect(focal).toBeGreaterThan(0);
    expect(focal).toBeLessThan(batch.loss);
    expect(() => trainable.loss(examples, { focalGamma: -1 })).toThrow(/focalGamma must be ≥ 0, got -1/);
    // Gradients add up the same way (summed-loss gradients), here the lm_head's.
    const g = (r: typeof batch) => r.grads.get('model.lmHead.weight')!.data as Float32Array;
    const sum = g(alone[0]!).map((v, j) => v + g(alone[1]!)[j]! + g(alone[2]!)[j]!);
    let max = 0, scale = 0;
    g(batch).forEach((v, j) => ((max = Math.max(max, Math.abs(v - sum[j]!))), (scale = Math.max(scale, Math.abs(sum[j]!)))));
    expect(max).toBeLessThan(1e-4 * scale);
    model.dispose();
    trainable.embedTokens.dispose();
    mel.dispose();
  });

  it('grows a trained model by layers that start as no-ops, then fine-tunes them', async () => {
    const out = join(root, 'to-grow');
    await trainCaptioner({ ...base, steps: 2, outDir: out, resume: false });
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    const weights = readFloatTensors(join(out, 'model.safetensors'));
    const grown = growCaptioner(config, weights, { audioLayers: 1, textLayers: 1 }, 3);
    expect(grown.config.thinker_config.audio_config.encoder_layers).toBe(config.thinker_config.audio_config.encoder_layers + 1);
    expect(grown.config.thinker_config.text_config.num_hidden_layers).toBe(config.thinker_config.text_config.num_hidden_layers + 1);
    const L = config.thinker_config.text_config.num_hidden_layers;
    expect(Math.max(...(grown.weights[`thinker.model.layers.${L}.self_attn.o_proj.weight`]!.data as Float32Array).map(Math.abs))).toBe(0);
    expect(Math.max(...(grown.weights[`thinker.model.layers.${L}.self_attn.q_proj.weight`]!.data as Float32Array).map(Math.abs))).toBeGreaterThan(0);
    // One step from the grown model starts from the same loss as one from the original: the new layers add nothing yet.
    const data = { kind: 'scenes' as const, seed: 12 };
    const plain = await trainCaptioner({ ...base, data, steps: 1, outDir: join(root, 'not-grown'), resume: false, init: { from: out } });
    const deeper = await trainCaptioner({ ...base, data, steps: 2, outDir: join(root, 'grown'), resume: false, init: { from: out, grow: { audioLayers: 1, textLayers: 1 }, seed: 3 } });
    expect(deeper.losses[0]).toBe(plain.losses[0]);
    expect(deeper.parameters).toBeGreaterThan(plain.parameters);
    expect(JSON.parse(readFileSync(join(root, 'grown', 'config.json'), 'utf8')).thinker_config.text_config.num_hidden_layers).toBe(L + 1);
    expect(() => growCaptioner(config, weights, { textLayers: -1 }, 0)).toThrow(/textLayers must be a non-negative integer, got -1/);
    const wrong = { ...weights, 'thinker.model.norm.weight': { dtype: 'F32' as const, shape: [3], data: new Float32Array(3) } };
    expect(() => growCaptioner(config, wrong, { textLayers: 1 }, 0)).toThrow(/thinker\.model\.norm\.weight is \[3\]/);
  });

  it('resumed from a checkpoint, continues the uninterrupted trajectory bit for bit', async () => {
    const whole = await trainCaptioner({ ...base, outDir: join(root, 'whole'), resume: false });
    const half = await trainCaptioner({ ...base, outDir: join(root, 'split'), resume: false, stopAtStep: 2 });
    expect(half.finished).toBe(false);
    const rest = await trainCaptioner({ ...base, outDir: join(root, 'split') });
    expect(rest.losses).toEqual(whole.losses);
  });

  it('splits a batch over a worker thread with the same losses', async () => {
    const inProcess = await trainCaptioner({ ...base, steps: 1, outDir: join(root, 'w0'), resume: false });
    const parallel = await trainCaptioner({ ...base, steps: 1, outDir: join(root, 'w1'), resume: false, workers: 1 });
    parallel.losses.forEach((l, i) => expect(l).toBeCloseTo(inProcess.losses[i]!, 5));
  }, 60_000);

  it('trains on a folder of WAV files with .txt captions (any rate, stereo mixed down); unknown words name the clip', async () => {
    const dir = join(root, 'folder');
    mkdirSync(dir, { recursive: true });
    for (let i = 0; i < 3; i++) {
      const s = generateScene(21, i);
      // 22.05 kHz stereo copies of the scene, to go through mixdown and resampling.
      const n = Math.floor((s.pcm.length * 22050) / 16000);
      const left = Int16Array.from({ length: n }, (_, j) => Math.round(s.pcm[Math.floor((j * 16000) / 22050)]! * 32767));
      const wav = new wavefile.WaveFile();
      wav.fromScratch(2, 22050, '16', [left, left]);
      writeFileSync(join(dir, `clip-${i}.wav`), wav.toBuffer());
      writeFileSync(join(dir, `clip-${i}.txt`), `${s.caption}\n`);
    }
    const clips = await loadCaptionFolder(dir);
    expect(clips.map((c) => c.name)).toEqual(['clip-0.wav', 'clip-1.wav', 'clip-2.wav']);
    expect(Math.abs(clips[0]!.pcm.length - generateScene(21, 0).pcm.length)).toBeLessThan(20);
    const r = await trainCaptioner({ ...base, steps: 2, outDir: join(root, 'folder-run'), resume: false, data: { kind: 'folder', dir, seed: 0 } });
    expect(r.finished).toBe(true);
    writeFileSync(join(dir, 'clip-1.txt'), 'a kettle whistles');
    await expect(trainCaptioner({ ...base, steps: 2, outDir: join(root, 'folder-run2'), resume: false, data: { kind: 'folder', dir, seed: 0 } })).rejects.toThrow(/caption of clip-1\.wav has words outside the tokenizer's vocabulary/);
  });

  it('refuses to resume with other settings, naming the setting', async () => {
    await expect(trainCaptioner({ ...base, outDir: join(root, 'whole'), batchSize: 4 })).rejects.toThrow(/batchSize = 2, this run asks for 4/);
  });
});
