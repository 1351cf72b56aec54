import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer } from '../models/qwen3-omni/fixture-tokenizer/fixture-tokenizer.js';
import { generate } from '../models/qwen3-omni/generate.js';
import { loadQwen3Omni, type Qwen3OmniModel } from '../models/qwen3-omni/load.js';
import { Sampler } from '../models/qwen3-omni/sampler.js';
import { prepareThinkerPrompt, type ThinkerPrompt } from '../models/qwen3-omni/thinker-prompt.js';
import { generateBatch } from './generate-batch.js';

// Prompts of different lengths (so the batch cache is really left-padded), with audio rows spliced in for some.
let model: Qwen3OmniModel;
let prompts: ThinkerPrompt[];
const texts = ['a b c', 'what is this sound', 'x', 'describe the recording in detail please'];

beforeAll(async () => {
  model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower'] });
  prompts = texts.map((text, i) => {
    if (i % 2 === 1) return prepareThinkerPrompt(model, [{ role: 'user', content: text }]);
    const frames = 100 + 70 * i;
    const features = tf.randomNormal([128, frames], 0, 1, 'float32', 7 + i) as tf.Tensor2D;
    const { embeds } = model.audioEncoder!.encode(features, [frames]);
    features.dispose();
    const p = prepareThinkerPrompt(model, [{ role: 'user', content: [{ type: 'audio', embeds, frames }, { type: 'text', text }] }]);
    embeds.dispose();
    return p;
  });
});

afterAll(() => {
  for (const p of prompts) p.dispose();
  model.dispose();
});

const one = async (p: ThinkerPrompt, maxNewTokens: number, sampler: Sampler, stopTokens: number[]) => {
  const it = generate(model.thinker, { inputIds: p.prompt.ids, inputsEmbeds: p.inputsEmbeds, positions: p.positions, ropeDelta: p.ropeDelta, sampler, maxNewTokens, stopTokens });
  const tokens: number[] = [];
  for await (const s of it) if (!stopTokens.includes(s.token)) tokens.push(s.token);
  return tokens;
};
const asBatch = (sampler: () => Sampler) => prompts.map((p) => ({ inputIds: p.prompt.ids, inputsEmbeds: p.inputsEmbeds, positions: p.positions, ropeDelta: p.ropeDelta, sampler: sampler() }));

describe('generateBatch', () => {
  it.each(['each', 'grouped'] as const)('gives every prompt the tokens generate() gives it alone (greedy), in fewer decode forwards, without leaking tensors (prefill %s)', async (prefill) => {
    const lengths = prompts.map((p) => p.prompt.ids.length);
    expect(new Set(lengths).size).toBe(lengths.length);
    const reference = [];
    for (const p of prompts) reference.push(await one(p, 12, new Sampler({ greedy: true }), []));
    const before = tf.memory().numTensors;
    const stats = { decodeSteps: 0, prefillMs: 0, decodeMs: 0 };
    const batched = await generateBatch(model.thinker, asBatch(() => new Sampler({ greedy: true })), { maxNewTokens: 12, stopTokens: [], prefill }, stats);
    expect(tf.memory().numTensors).toBe(before);
    expect(batched).toEqual(reference);
    expect(batched.every((t) => t.length === 12)).toBe(true);
    expect(stats.decodeSteps).toBe(11); // one forward per step for all four, not 4 × 11
  });

  it('drops a sequence at its stop token and keeps decoding the others unchanged', async () => {
    const free = await generateBatch(model.thinker, asBatch(() => new Sampler({ greedy: true })), { maxNewTokens: 10, stopTokens: [] });
    // Make prompt 1's fourth token a stop token: it must end there, the others must not change.
    const stop = free[1][3];
    const expected = free.map((t) => {
      const at = t.indexOf(stop);
      return at < 0 ? t : t.slice(0, at);
    });
    const stopped = await generateBatch(model.thinker, asBatch(() => new Sampler({ greedy: true })), { maxNewTokens: 10, stopTokens: [stop] });
    expect(stopped).toEqual(expected);
    expect(stopped[1].length).toBeLessThanOrEqual(3);
  });

  it('samples each sequence from its own seeded stream, so results do not depend on the batch', async () => {
    const opts = { temperature: 0.9, topK: 20, seed: 5 };
    const alone = [];
    for (const p of prompts) alone.push(await one(p, 8, new Sampler(opts), []));
    const batched = await generateBatch(model.thinker, asBatch(() => new Sampler(opts)), { maxNewTokens: 8, stopTokens: [] });
    expect(batched).toEqual(alone);
  });

  it('rejects bad arguments by name', async () => {
    await expect(generateBatch(model.thinker, asBatch(() => new Sampler({ greedy: true })), { maxNewTokens: 0, stopTokens: [] })).rejects.toThrow('maxNewTokens must be a positive integer, got 0');
  });
});
