import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, fixtureDir, fixturePath, initBackend, SafetensorsFile } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { generate, type GenerateOptions, type GenerateStep } from './generate.js';
import { TextModel } from './text-model.js';

const { config } = readQwen3OmniConfig(fixtureDir());
const text = config.thinker_config.text_config;
let ckpt: Checkpoint;
let model: TextModel;
let prompt: Omit<GenerateOptions, 'inputsEmbeds' | 'deepstack'> & { embeds: Float32Array; visual: number[]; ds: Float32Array };
let expectedIds: number[];
let cases: SafetensorsFile;

beforeAll(async () => {
  await initBackend();
  ckpt = Checkpoint.open(fixtureDir());
  model = TextModel.load(ckpt, text);
  cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
  const ids = Array.from(cases.read('thinker.input_ids').data);
  const S = ids.length;
  const pos = cases.read('thinker.position_ids').data as Float32Array;
  const rope = cases.read('rope.rope_deltas').data[0]!;
  prompt = {
    inputIds: ids, positions: [pos.subarray(0, S), pos.subarray(S, 2 * S), pos.subarray(2 * S)], ropeDelta: rope,
    embeds: cases.read('thinker.inputs_embeds').data as Float32Array,
    visual: Array.from(cases.read('thinker.visual_pos_masks').data).flatMap((m, p) => (m ? [p] : [])),
    ds: cases.read('thinker.deepstack_visual_embeds').data as Float32Array,
  };
  expectedIds = Array.from(cases.read('thinker.generated_ids').data);
});
afterAll(() => {
  model.dispose();
  ckpt.close();
  cases.close();
});

/** Runs `generate` over the case-5 prompt, collecting the steps; `onStep` may act mid-decode. */
async function run(extra: Partial<GenerateOptions>, onStep?: (s: GenerateStep) => void): Promise<GenerateStep[]> {
  const S = prompt.inputIds.length, D = text.hidden_size, V = prompt.visual.length;
  const inputsEmbeds = tf.tensor2d(prompt.embeds, [S, D]);
  const features = [0, 1].map((i) => tf.tensor2d(prompt.ds.subarray(i * V * D, (i + 1) * V * D), [V, D]));
  const steps: GenerateStep[] = [];
  try {
    for await (const step of generate(model, { ...prompt, inputsEmbeds, deepstack: { positions: prompt.visual, features }, ...extra })) {
      steps.push(step);
      onStep?.(step);
    }
  } finally {
    tf.dispose([inputsEmbeds, ...features]);
  }
  return steps;
}

describe('generate', () => {
  it('greedy decoding with the KV cache reproduces the reference ids and logits, and frees every tensor', async () => {
    const before = tf.memory().numTensors;
    const steps = await run({ maxNewTokens: expectedIds.length, returnLogits: true });
    expect(steps.map((s) => s.token)).toEqual(expectedIds);
    expect(steps.at(-1)!.finishReason).toBe('length');
    const stepLogits = cases.read('thinker.step_logits').data;
    const V = text.vocab_size;
    steps.forEach((s, i) => {
      let m = 0;
      s.logits!.forEach((v, j) => (m = Math.max(m, Math.abs(v - stepLogits[i * V + j]!))));
      expect(m).toBeLessThan(4e-4);
    });
    const decodePos = Array.from(cases.read('thinker.decode_position_ids').data);
    expect(steps.slice(1).map((s) => s.fedPosition)).toEqual(decodePos.filter((_, i) => i % 3 === 0));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('stops at a stop token and yields it', async () => {
    const steps = await run({ stopTokens: [expectedIds[2]!], maxNewTokens: 50 });
    expect(steps.map((s) => s.token)).toEqual(expectedIds.slice(0, 3));
    expect(steps.at(-1)!.finishReason).toBe('stop');
  });

  it('aborts mid-decode from inside the loop, throwing the signal reason, with no leaks', async () => {
    const before = tf.memory().numTensors;
    const ac = new AbortController();
    const seen: number[] = [];
    await expect(run({ signal: ac.signal, maxNewTokens: 50 }, (s) => {
      seen.push(s.token);
      if (s.index === 1) ac.abort();
    })).rejects.toMatchObject({ name: 'AbortError' });
    expect(seen).toEqual(expectedIds.slice(0, 2));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('aborts from a timer between steps', async () => {
    const before = tf.memory().numTensors;
    const ac = new AbortController();
    let count = 0;
    await expect(run({ signal: ac.signal, maxNewTokens: 200 }, (s) => {
      count++;
      if (s.index === 0) setTimeout(() => ac.abort(new Error('barge-in')), 0);
    })).rejects.toThrow('barge-in');
    // The timer fires at the next event-loop turn, i.e. between two steps, long before 200 tokens.
    expect(count).toBeGreaterThanOrEqual(1);
    expect(count).toBeLessThanOrEqual(3);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('hands the talker the fed embeddings and the accept-layer hidden states of every step', async () => {
    const layer = config.talker_config!.accept_hidden_layer;
    const before = tf.memory().numTensors;
    const steps = await run({ maxNewTokens: 5, talkerHiddenLayer: layer });
    const S = prompt.inputIds.length, D = text.hidden_size;
    expect(steps.map((s) => s.fed!.embeds.shape)).toEqual([[S, D], [1, D], [1, D], [1, D], [1, D]]);
    const embeds = tf.concat(steps.slice(0, 4).map((s) => s.fed!.embeds));
    const hidden = tf.concat(steps.slice(0, 4).map((s) => s.fed!.hidden));
    // Case 7's talker inputs are exactly these: prompt + generated tokens 0..3 (the 5th is never fed).
    const wantEmbed = cases.read('talker.thinker_embed').data;
    const wantHidden = cases.read('talker.thinker_hidden').data;
    let me = 0, mh = 0;
    embeds.dataSync().forEach((v, i) => (me = Math.max(me, Math.abs(v - wantEmbed[i]!))));
    hidden.dataSync().forEach((v, i) => (mh = Math.max(mh, Math.abs(v - wantHidden[i]!))));
    expect(me).toBeLessThan(3e-4);
    expect(mh).toBeLessThan(6e-4);
    tf.dispose([embeds, hidden, ...steps.flatMap((s) => [s.fed!.embeds, s.fed!.hidden])]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('prefills in chunks with the same tokens, logits and talker rows (DeepStack rows split across chunks)', async () => {
    const layer = config.talker_config!.accept_hidden_layer;
    const whole = await run({ maxNewTokens: 3, returnLogits: true, talkerHiddenLayer: layer });
    const before = tf.memory().numTensors;
    const chunked = await run({ maxNewTokens: 3, returnLogits: true, talkerHiddenLayer: layer, prefillChunk: 16 });
    expect(chunked.map((s) => s.token)).toEqual(expectedIds.slice(0, 3));
    const diff = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
    chunked.forEach((s, i) => expect(diff(s.logits!, whole[i]!.logits!)).toBeLessThan(1e-4));
    expect(chunked[0]!.fed!.hidden.shape).toEqual(whole[0]!.fed!.hidden.shape);
    expect(diff(chunked[0]!.fed!.hidden.dataSync(), whole[0]!.fed!.hidden.dataSync())).toBeLessThan(1e-4);
    expect(diff(chunked[0]!.fed!.embeds.dataSync(), whole[0]!.fed!.embeds.dataSync())).toBe(0);
    tf.dispose(chunked.flatMap((s) => [s.fed!.embeds, s.fed!.hidden]));
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(whole.flatMap((s) => [s.fed!.embeds, s.fed!.hidden]));
  });

  it('continues a session in a caller-owned cache with text positions after it', async () => {
    const cache = model.createCache();
    const first: number[] = [];
    for await (const s of generate(model, { inputIds: [1, 2, 3], cache, maxNewTokens: 2 })) first.push(s.token);
    expect(cache.length).toBe(3 + 1); // the last token is not fed yet
    const again: number[] = [];
    for await (const s of generate(model, { inputIds: [first[1]!, 4], cache, maxNewTokens: 2 })) again.push(s.token);
    expect(cache.length).toBe(4 + 2 + 1);
    // The same tokens through one fresh prompt give the same continuation.
    const whole: number[] = [];
    for await (const s of generate(model, { inputIds: [1, 2, 3, first[0]!, first[1]!, 4], maxNewTokens: 2 })) whole.push(s.token);
    expect(again).toEqual(whole);
    cache.dispose();
  });

  it('validates its options', async () => {
    await expect(run({ maxNewTokens: 0 })).rejects.toThrow('generate: maxNewTokens must be a positive integer, got 0');
    await expect(run({ talkerHiddenLayer: 99 })).rejects.toThrow(`generate: talkerHiddenLayer 99 is outside [0, ${text.num_hidden_layers}]`);
  });
});
