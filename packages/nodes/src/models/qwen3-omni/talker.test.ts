import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, SafetensorsFile, initBackend, isInt8Weight } from '@omniflow/runtime-gpu';
import type { Qwen3OmniConfig } from './config.js';
import { Talker, TalkerGeneration, type CodecFrame } from './talker.js';
import { CodecHead, GREEDY } from './codec-head.js';
import { Sampler } from './sampler.js';
import { CodePredictor } from './code-predictor.js';
import { buildTalkerPrompt, talkerTokenIds, userTurnIndices } from './talker-input.js';
import { loadTalkerFixture, type TalkerFixture } from './testing.js';

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

describe('talker, codec head and code predictor (fixture case 7)', () => {
  let config: Qwen3OmniConfig;
  let ckpt: Checkpoint;
  let cases: SafetensorsFile;
  let talker: Talker;
  let head: CodecHead;
  let predictor: CodePredictor;
  let ids: Int32Array;
  let embeds: tf.Tensor2D;
  let hidden: tf.Tensor2D;
  let start: number;
  let fixture: TalkerFixture;
  const ref = (name: string) => cases.read(`talker.${name}`);

  beforeAll(async () => {
    await initBackend();
    start = tf.memory().numTensors;
    fixture = loadTalkerFixture();
    ({ config, ckpt, cases } = fixture);
    ({ talker, codecHead: head, codePredictor: predictor } = fixture.parts);
    // Case 7 voices the thinker generation of case 5: its token ids are that case's sequences.
    ids = cases.read('thinker.sequences').data as Int32Array;
    const e = ref('thinker_embed'), h = ref('thinker_hidden');
    embeds = tf.tensor2d(e.data as Float32Array, [e.shape[1], e.shape[2]]);
    hidden = tf.tensor2d(h.data as Float32Array, [h.shape[1], h.shape[2]]);
  });

  afterAll(() => {
    tf.dispose([embeds, hidden]);
    fixture.dispose();
    expect(tf.memory().numTensors).toBe(start);
    fixture.close();
  });

  it('reads every talker tensor', () => {
    expect(ckpt.unused().filter((k) => k.startsWith('talker.'))).toEqual([]);
  });

  it('builds the talker prompt: user turns, assistant prefix, trailing text', () => {
    const before = tf.memory().numTensors;
    const tokens = talkerTokenIds(config);
    expect(Array.from(userTurnIndices(ids, tokens.imStart, tokens.user, 56))).toEqual(Array.from(ref('user_indices').data));
    const prompt = buildTalkerPrompt(talker, tokens, { ids, thinkerEmbeds: embeds, thinkerHidden: hidden, speaker: 'Ethan' });
    expect(prompt.assistantStart).toBe(56);
    expect(maxAbsDiff(talker.ttsSpecialEmbeds.dataSync(), ref('tts_special_embeds').data)).toBeLessThan(2e-4);
    expect(maxAbsDiff(prompt.userEmbeds.dataSync(), ref('user_embeds').data)).toBeLessThan(4e-4);
    expect(maxAbsDiff(prompt.assistantEmbeds.dataSync(), ref('assistant_embeds').data)).toBeLessThan(5e-4);
    expect(maxAbsDiff(prompt.trailingText.dataSync(), ref('trailing_text_hidden').data)).toBeLessThan(2e-4);
    expect(maxAbsDiff(prompt.inputsEmbeds.dataSync(), ref('input_embeds').data)).toBeLessThan(5e-4);
    expect(Array.from(prompt.inputIds)).toEqual(Array.from(ref('input_ids').data));
    prompt.dispose();
    expect(() => buildTalkerPrompt(talker, tokens, { ids, thinkerEmbeds: embeds, thinkerHidden: hidden, speaker: 'bob' }))
      .toThrow(/unknown speaker 'bob'; this checkpoint has aiden, chelsie, ethan/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('generates the reference codes greedily: code 0, residual codes, logits, positions', () => {
    const before = tf.memory().numTensors;
    const prompt = buildTalkerPrompt(talker, talkerTokenIds(config), { ids, thinkerEmbeds: embeds, thinkerHidden: hidden, speaker: 'ethan' });
    const gen = new TalkerGeneration(talker, head, predictor, prompt, {
      sampling: GREEDY, predictorSampling: GREEDY, maxFrames: 3, media: {
        imageGridThw: [Array.from(cases.read('rope.image_grid_thw').data) as [number, number, number]],
        videoGridThw: [Array.from(cases.read('rope.video_grid_thw').data) as [number, number, number]],
        audioSeqlens: Array.from(cases.read('rope.audio_seqlens').data),
        secondPerGrids: Array.from(cases.read('rope.video_second_per_grid').data),
      },
    });
    const frames: CodecFrame[] = [];
    for (let f = gen.next(); f; f = gen.next()) frames.push(f);
    expect(gen.stopReason).toBe('max-frames');
    const G = 4, F = 3;
    const codes = ref('codes').data; // [1, G, F]
    for (let f = 0; f < F; f++) expect(Array.from(frames[f].codes)).toEqual(Array.from({ length: G }, (_, g) => codes[g * F + f]));
    const stepLogits = ref('step_logits').data, cpLogits = ref('code_predictor_logits').data;
    for (let f = 0; f < F; f++) {
      expect(maxAbsDiff(frames[f].code0Logits, stepLogits.subarray(f * 48, (f + 1) * 48))).toBeLessThan(3e-4);
      expect(maxAbsDiff(frames[f].residualLogits, cpLogits.subarray(f * 96, (f + 1) * 96))).toBeLessThan(4e-4);
    }
    const decodePositions = ref('decode_position_ids').data;
    expect([...frames[1].position, ...frames[2].position]).toEqual(Array.from(decodePositions));
    expect(frames.map((f) => f.textTokensRead)).toEqual([1, 2, 3]);
    gen.dispose();
    prompt.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('streams trailing text: waits for a missing token, then gives the same frames', () => {
    const before = tf.memory().numTensors;
    const tokens = talkerTokenIds(config);
    // Build the prompt as soon as the first answer token exists (rows up to 56 + 4), then push the rest.
    const first = 60;
    const part = (t: tf.Tensor2D) => tf.slice(t, [0, 0], [first, -1]) as tf.Tensor2D;
    const [e, h] = [part(embeds), part(hidden)];
    const prompt = buildTalkerPrompt(talker, tokens, { ids: ids.subarray(0, first), thinkerEmbeds: e, thinkerHidden: h }, { textComplete: false });
    const positionIds = [0, 1, 2].map((r) => ref('position_ids').data.subarray(r * 57, (r + 1) * 57)) as unknown as [Float32Array, Float32Array, Float32Array];
    const gen = new TalkerGeneration(talker, head, predictor, prompt, { sampling: GREEDY, predictorSampling: GREEDY, maxFrames: 3, positionIds, streamingText: true });
    const f0 = gen.next()!;
    expect(gen.needsText).toBe(true);
    expect(() => gen.next()).toThrow(/needs the next answer token/);
    const rest = tf.tidy(() => talker.textProjection(tf.slice(embeds, [first, 0], [embeds.shape[0] - first, -1]) as tf.Tensor2D));
    gen.pushText(rest);
    gen.endText();
    rest.dispose();
    const f1 = gen.next()!, f2 = gen.next()!;
    const codes = ref('codes').data;
    expect([f0, f1, f2].map((f) => f.codes[0])).toEqual([codes[0], codes[1], codes[2]]);
    expect(Array.from(f2.codes)).toEqual([codes[2], codes[5], codes[8], codes[11]]);
    gen.dispose();
    prompt.dispose();
    tf.dispose([e, h]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('suppresses the control codes when sampling, not when greedy', () => {
    const logits = Float32Array.from({ length: 48 }, (_, i) => (i === 40 ? 10 : Math.sin(i)));
    // Control ids past the 32-code codebook are suppressed, except codec EOS (38).
    expect(head.suppressTokens).toEqual([32, 33, 34, 35, 36, 37, 39, 40, 41, 42, 43, 44, 45, 46, 47]);
    const picks = Array.from({ length: 50 }, (_, seed) => head.pick(logits, new Sampler({ topK: 5, seed })));
    expect(picks.every((id) => id < 32 || id === 38)).toBe(true);
    expect(new Set(picks).size).toBeGreaterThan(1);
    expect(head.pick(logits, new Sampler(GREEDY))).toBe(40); // greedy: the raw argmax, as the fixtures record
});
});

/**
 * Packed weights on the fixture, whose weights are random float32: rounding moves the logits, and the greedy choices
 * keep their margins (>= 1e-2 in the fixture) and stay the reference codes. Bounds, as a fraction of the largest
 * |logit| of the frame: bf16 (relative error <= 2^-9 per weight; measured 0.3-0.7%) 2%; int8 (up to half a step, 1/254
 * of the column's largest weight, per weight; measured 0.8-2.1%) 5%.
 */
for (const [format, bound] of [['bf16', 2e-2], ['int8', 5e-2]] as const) {
  describe(`talker, codec head and code predictor with weights: '${format}' (fixture case 7)`, () => {
    it(`generates the same greedy codes as float32, logits within ${format} rounding, and frees every tensor`, async () => {
      await initBackend();
      const start = tf.memory().numTensors;
      const fixture = loadTalkerFixture();
      const { config, ckpt, cases } = fixture;
      const weights = { weights: format };
      const talker16 = Talker.load(ckpt, config, weights);
      const head16 = CodecHead.load(ckpt, config.talker_config!, undefined, weights);
      const predictor16 = CodePredictor.load(ckpt, config.talker_config!.code_predictor_config, undefined, weights);
      const ids = cases.read('thinker.sequences').data as Int32Array;
      const e = cases.read('talker.thinker_embed'), h = cases.read('talker.thinker_hidden');
      const embeds = tf.tensor2d(e.data as Float32Array, [e.shape[1], e.shape[2]]);
      const hidden = tf.tensor2d(h.data as Float32Array, [h.shape[1], h.shape[2]]);
      const positionIds = [0, 1, 2].map((r) => cases.read('talker.position_ids').data.subarray(r * 57, (r + 1) * 57)) as unknown as [Float32Array, Float32Array, Float32Array];
      const run = (t: Talker, hd: CodecHead, p: CodePredictor): CodecFrame[] => {
        const prompt = buildTalkerPrompt(t, talkerTokenIds(config), { ids, thinkerEmbeds: embeds, thinkerHidden: hidden, speaker: 'ethan' });
        const gen = new TalkerGeneration(t, hd, p, prompt, { sampling: GREEDY, predictorSampling: GREEDY, maxFrames: 3, positionIds });
        const frames: CodecFrame[] = [];
        for (let f = gen.next(); f; f = gen.next()) frames.push(f);
        gen.dispose();
        prompt.dispose();
        return frames;
      };
      const f32 = run(fixture.parts.talker, fixture.parts.codecHead, fixture.parts.codePredictor);
      const b16 = run(talker16, head16, predictor16);
      // The packed matrices (the talker's q, k and v side by side: 32 + 16 + 16 columns from 24 inputs): bf16 int32
      // [in, out / 2]; int8 int32 [ceil(out / 4), ceil(in / 16)·16 + 4] (runtime-gpu's packInt8).
      const qkvProj = talker16.model.layers[0]!.self_attn.qkv_proj!.weight;
      expect([qkvProj.dtype, ...qkvProj.shape]).toEqual(format === 'bf16' ? ['int32', 24, 32] : ['int32', 16, 36]);
      expect(isInt8Weight(qkvProj)).toBe(format === 'int8');
      expect(b16.map((f) => Array.from(f.codes))).toEqual(f32.map((f) => Array.from(f.codes)));
      for (let f = 0; f < 3; f++) {
        const scale = Math.max(...Array.from(f32[f]!.code0Logits, Math.abs));
        expect(maxAbsDiff(b16[f]!.code0Logits, f32[f]!.code0Logits)).toBeLessThan(bound * scale);
        const rscale = Math.max(...Array.from(f32[f]!.residualLogits, Math.abs));
        expect(maxAbsDiff(b16[f]!.residualLogits, f32[f]!.residualLogits)).toBeLessThan(bound * rscale);
        // Not identical: the bf16 path really ran.
        expect(maxAbsDiff(b16[f]!.code0Logits, f32[f]!.code0Logits)).toBeGreaterThan(0);
      }
      tf.dispose([embeds, hidden]);
      talker16.dispose();
      head16.dispose();
      predictor16.dispose();
      fixture.dispose();
      expect(tf.memory().numTensors).toBe(start);
      fixture.close();
    });
  });
}
