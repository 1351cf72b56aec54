import { mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { writeFixtureTokenizer } from '../models/qwen3-omni/fixture-tokenizer/fixture-tokenizer.js';
import { Qwen3OmniCaptioner } from './qwen3-omni-captioner.js';

// A caption never depends on its batch mates, nor on where its features were computed (worker thread or the call).
let model: Qwen3OmniCaptioner;
let modelDir: string;
const gen = { maxNewTokens: 6, temperature: 0, topK: 0, topP: 1, seed: 0 };

/** A chirp with a little noise-like detail, different per clip (so clip maxima and spectra differ). */
const clip = (seconds: number, hz: number, gain: number) =>
  Float32Array.from({ length: Math.round(seconds * 16_000) }, (_, i) => gain * Math.sin((2 * Math.PI * hz * i * (1 + i / 160_000)) / 16_000) + 0.01 * Math.sin(i * 0.7));

beforeAll(async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'captioner-')), 'qwen3-omni-tiny');
  mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors']) symlinkSync(join(fixtureDir(), f), join(dir, f));
  writeFixtureTokenizer(dir);
  modelDir = dir;
  model = await Qwen3OmniCaptioner.load(dir, { featureWorker: false });
});
afterAll(() => model.dispose());

describe('Qwen3OmniCaptioner', () => {
  it('a batch of clips (one shorter than a chunk) and a text request captions each as it would be alone, without leaking tensors', async () => {
    const requests = [
      { prompt: 'Describe this audio.', audio: clip(3, 220, 0.3) },
      { prompt: '', audio: clip(0.6, 880, 0.6) }, // 60 frames: encoded alone
      { prompt: 'Summarize: a tone, then another tone.' },
      { prompt: 'Describe this audio.', audio: clip(2.2, 440, 0.7) },
    ];
    const alone: string[] = [];
    for (const r of requests) alone.push(...(await model.caption([r], gen)));
    const before = tf.memory().numTensors;
    const calls = model.stats.calls;
    const batched = await model.caption(requests, gen);
    expect(model.stats.calls).toBe(calls + 1);
    expect(batched).toEqual(alone);
    expect(batched.every((t) => t.length > 0)).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('features prefetched on the worker thread give the same captions as features computed in the call', async () => {
    const requests = [
      { prompt: 'Describe this audio.', audio: clip(2.5, 330, 0.4) },
      { prompt: 'Summarize: two tones.' },
      { prompt: 'Describe this audio.', audio: clip(1.2, 660, 0.9) },
      { prompt: '', audio: clip(0.3, 990, 0.5) }, // shorter than a chunk: encoded alone
    ];
    const here = await model.caption(requests, gen);
    const withWorker = await Qwen3OmniCaptioner.load(modelDir, { featureWorker: true });
    try {
      for (const r of requests) withWorker.prefetch(r);
      const before = tf.memory().numTensors;
      const viaWorker = await withWorker.caption(requests, gen);
      expect(withWorker.stats.workerFeatures).toBe(3);
      expect(viaWorker).toEqual(here);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      withWorker.dispose();
    }
  }, 60_000);
});
