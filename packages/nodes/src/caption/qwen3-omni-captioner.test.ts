import { mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { LogMel } from '../media/log-mel.js';
import { writeFixtureTokenizer } from '../models/qwen3-omni/fixture-tokenizer/fixture-tokenizer.js';
import { Qwen3OmniCaptioner } from './qwen3-omni-captioner.js';

// The batched stages of a caption call (one log-mel pass, one encoder call over the clips of the batch) must give
// every clip exactly the numbers it gets alone, so a caption never depends on its batch mates.
let model: Qwen3OmniCaptioner;
const gen = { maxNewTokens: 6, temperature: 0, topK: 0, topP: 1, seed: 0 };

/** A chirp with a little noise-like detail, different per clip (so clip maxima and spectra differ). */
const clip = (seconds: number, hz: number, gain: number) =>
  Float32Array.from({ length: Math.round(seconds * 16_000) }, (_, i) => gain * Math.sin((2 * Math.PI * hz * i * (1 + i / 160_000)) / 16_000) + 0.01 * Math.sin(i * 0.7));

beforeAll(async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'captioner-')), 'qwen3-omni-tiny');
  mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors']) symlinkSync(join(fixtureDir(), f), join(dir, f));
  writeFixtureTokenizer(dir);
  model = await Qwen3OmniCaptioner.load(dir);
});
afterAll(() => model.dispose());

describe('batched caption stages', () => {
  it('LogMel.featuresOfClips equals each clip\'s features side by side, each floored at its own max', () => {
    const mel = new LogMel();
    const clips = [clip(2.3, 300, 0.5), clip(0.4, 900, 0.05), clip(1.01, 150, 0.9)];
    const before = tf.memory().numTensors;
    const { features, frames } = mel.featuresOfClips(clips);
    expect(frames).toEqual([230, 40, 101]);
    expect(features.shape).toEqual([128, 371]);
    const alone = tf.tidy(() => tf.concat(clips.map((c) => mel.features(c)), 1));
    expect(Array.from(features.dataSync())).toEqual(Array.from(alone.dataSync()));
    features.dispose();
    alone.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(() => mel.featuresOfClips([clip(1, 200, 0.5), new Float32Array(100)])).toThrow('need more than 200 samples for reflect padding, got 100 (clip 1)');
    mel.dispose();
  });

  it('the audio encoder gives packed clips of at least one full chunk the rows it gives each alone', () => {
    const mel = new LogMel();
    const clips = [clip(3.07, 300, 0.5), clip(1.0, 700, 0.2), clip(2.55, 1200, 0.8)]; // 307, 100, 255 frames
    const enc = model.model.audioEncoder!;
    const { features, frames } = mel.featuresOfClips(clips);
    const packed = enc.encode(features, frames);
    let offset = 0;
    const alone = frames.map((n) => {
      const f = tf.slice(features, [0, offset], [-1, n]) as tf.Tensor2D;
      offset += n;
      const e = enc.encode(f, [n]);
      f.dispose();
      const rows = Array.from(e.embeds.dataSync());
      e.embeds.dispose();
      return rows;
    });
    expect(Array.from(packed.embeds.dataSync())).toEqual(alone.flat());
    packed.embeds.dispose();
    features.dispose();
    mel.dispose();
  });

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
});
