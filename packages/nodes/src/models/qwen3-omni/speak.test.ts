import * as tf from '@tensorflow/tfjs-core';
import { lastValueFrom, of, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { textPacket, type AudioPacket, type TextPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { loadQwen3Omni, type Qwen3OmniModel } from './load.js';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { speak, speakGraph } from './speak.js';

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

describe('speakGraph: thinker → talker → code2wav as graph nodes', () => {
  it('speaks the same answer as the speak node', async () => {
    const model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer() });
    try {
      const turn = () => textPacket({ text: 'hello world', final: true });
      const { audio } = speak({ model, maxNewTokens: 8, seed: 3, maxFrames: 12 })(of(turn()));
      const expected = await lastValueFrom(audio.pipe(toArray()));
      const session = speakGraph({ model, maxNewTokens: 8, seed: 3, maxFrames: 12 }).session({ mode: 'batch' });
      const got: AudioPacket[] = [];
      const texts: TextPacket[] = [];
      session.output('audio').subscribe((p) => got.push(p as AudioPacket));
      session.output('text').subscribe((p) => texts.push(p as TextPacket));
      const done = session.start();
      session.input('input').push(turn());
      session.input('input').complete();
      await done;
      expect(texts.at(-1)!.final).toBe(true);
      expect(got.map((a) => a.samples.length)).toEqual(expected.map((a) => a.samples.length));
      expect(Math.max(...got.flatMap((a, i) => [...a.samples].map((x, j) => Math.abs(x - expected[i].samples[j]))))).toBeLessThan(1e-5);
      expect(got.map((a) => a.voices)).toEqual(expected.map((a) => a.voices));
    } finally {
      model.dispose();
    }
  });
});
