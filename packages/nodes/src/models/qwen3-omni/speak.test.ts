import * as tf from '@tensorflow/tfjs-core';
import { lastValueFrom, of, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { textPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { loadQwen3Omni, type Qwen3OmniModel } from './load.js';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { speak } from './speak.js';

describe('speak node on the fixture checkpoint', () => {
  let model: Qwen3OmniModel;
  let start: number;

  beforeAll(async () => {
    model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer() });
    start = tf.memory().numTensors;
  });

  afterAll(() => {
    model.dispose();
  });

  it('streams the answer text and its audio, frame by frame, with voices tags', async () => {
    // Seed 3 makes the random-weight talker speak a while before its EOS; 12 frames keeps the test short.
    const { text, audio } = speak({ model, maxNewTokens: 8, seed: 3, maxFrames: 12 })(of(textPacket({ text: 'hello world', final: true })));
    const [texts, sound] = await Promise.all([lastValueFrom(text.pipe(toArray())), lastValueFrom(audio.pipe(toArray()))]);
    expect(texts.at(-1)!.final).toBe(true);
    expect(sound.length).toBeGreaterThan(1);
    const frames = sound.length - 1; // one packet per frame, then the look-ahead tail
    expect(sound.reduce((n, a) => n + a.samples.length, 0)).toBe(24 * frames);
    expect(sound.every((a) => a.sampleRate === 24_000 && a.samples.every((x) => Math.abs(x) <= 1))).toBe(true);
    expect(sound.slice(0, -1).every((a) => a.voices !== undefined)).toBe(true);
    // pts are sample-exact: each packet starts where the previous ended.
    for (let i = 1; i < sound.length; i++) expect(sound[i].pts).toBeCloseTo(sound[i - 1].pts + (sound[i - 1].samples.length / 24_000) * 1e6, 3);
    expect(tf.memory().numTensors).toBe(start + 4); // the code predictor's reusable per-frame KV cache (2 layers x K, V)
  });
});
