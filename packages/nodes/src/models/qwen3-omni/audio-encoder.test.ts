import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, SafetensorsFile, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { AudioEncoder, audioOutputLength, planAudioChunks, sinusoidPositions } from './audio-encoder.js';
import { readQwen3OmniConfig, type AudioEncoderConfig } from './config.js';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('audioOutputLength (reference _get_feat_extract_output_lengths)', () => {
  it('counts 13 tokens per full chunk and ceil(r/8) for the remainder, with Python floor division', () => {
    expect(audioOutputLength(100)).toBe(13); // remainder 0 relies on (-1)//2 = -1
    expect(audioOutputLength(101)).toBe(14);
    expect(audioOutputLength(150)).toBe(20);
    expect(audioOutputLength(200)).toBe(26);
    expect(audioOutputLength(3000)).toBe(390);
    expect(audioOutputLength(40 * 60 * 100)).toBe(31_200);
    expect(audioOutputLength(7)).toBe(1);
    expect(audioOutputLength(8)).toBe(1);
    expect(audioOutputLength(9)).toBe(2);
  });
});

describe('planAudioChunks', () => {
  it('chunks several audios, windows each audio separately and marks valid rows', () => {
    const plan = planAudioChunks([250, 40], { n_window: 50, n_window_infer: 200 });
    expect(plan.chunkLengths).toEqual([100, 100, 50, 40]);
    expect(plan.chunkLengthsAfterCnn).toEqual([13, 13, 7, 5]);
    expect(plan.outputLengths).toEqual([33, 5]);
    // window = 13 * (200 // 100) = 26 tokens; audio 0: 26 + 7, audio 1: 5
    expect(plan.cuSeqlens).toEqual([0, 26, 33, 38]);
    expect(plan.validIndices.length).toBe(38);
    expect(Array.from(plan.validIndices.slice(26, 33))).toEqual([26, 27, 28, 29, 30, 31, 32]);
    expect(Array.from(plan.validIndices.slice(33))).toEqual([39, 40, 41, 42, 43]);
  });

  it('shrinks the window when no chunk is full, as the reference does', () => {
    const plan = planAudioChunks([60, 30], { n_window: 50, n_window_infer: 800 });
    expect(plan.maxChunkLength).toBe(60);
    expect(plan.maxLenAfterCnn).toBe(8);
    expect(plan.cuSeqlens).toEqual([0, 8, 12]);
  });

  it('rejects empty or non-positive lengths and n_window the reference cannot handle', () => {
    expect(() => planAudioChunks([], { n_window: 50, n_window_infer: 800 })).toThrow(/feature_lens is empty/);
    expect(() => planAudioChunks([100, 0], { n_window: 50, n_window_infer: 800 })).toThrow(/feature_lens\[1\] = 0/);
    expect(() => planAudioChunks([100], { n_window: 25, n_window_infer: 800 })).toThrow(/hard-codes 13/);
  });
});

describe('sinusoidPositions', () => {
  it('puts sin in the first half and cos in the second, inv_k = exp(-k ln(1e4)/(d/2-1))', () => {
    const p = sinusoidPositions(3, 8);
    expect(p[0]).toBe(0);
    expect(p[4]).toBe(1);
    expect(p[8 + 0]).toBeCloseTo(Math.sin(1), 6);
    expect(p[8 + 3]).toBeCloseTo(Math.sin(1e-4), 9); // k = 3 = d/2 - 1 -> inv = 1/10000
    expect(p[16 + 4 + 1]).toBeCloseTo(Math.cos(2 * Math.exp(-Math.log(1e4) / 3)), 6);
  });
});

describe('AudioEncoder parity (fixture case 2_audio_encoder)', () => {
  let ckpt: Checkpoint;
  let cases: SafetensorsFile;
  let config: AudioEncoderConfig;
  let atol: Record<string, number>;

  beforeAll(async () => {
    await initBackend();
    ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    config = readQwen3OmniConfig(fixturePath('config.json')).config.thinker_config.audio_config;
    const json = JSON.parse((await import('node:fs')).readFileSync(fixturePath('cases.json'), 'utf8'));
    atol = Object.fromEntries(Object.entries(json.cases['2_audio_encoder'].tensors).map(([k, v]) => [k, (v as { atol: number }).atol]));
  });
  afterAll(() => {
    ckpt?.close();
    cases?.close();
  });

  it('plans chunks, valid indices and windows exactly as the reference', () => {
    const lens = Array.from(cases.read('audio_enc.feature_lens').data);
    const plan = planAudioChunks(lens, config);
    expect(plan.chunkLengths).toEqual(Array.from(cases.read('audio_enc.chunk_lengths').data));
    expect(plan.chunkLengthsAfterCnn).toEqual(Array.from(cases.read('audio_enc.chunk_lengths_after_cnn').data));
    expect(Array.from(plan.validIndices)).toEqual(Array.from(cases.read('audio_enc.valid_indices').data));
    expect(plan.cuSeqlens).toEqual(Array.from(cases.read('audio_enc.cu_seqlens').data));
    expect(plan.outputLengths).toEqual(Array.from(cases.read('audio_enc.output_lengths').data));
  });

  it('matches conv_embeds and last_hidden_state within atol and frees every tensor', () => {
    const before = tf.memory().numTensors;
    const enc = AudioEncoder.load(ckpt, config);
    const input = cases.read('audio_enc.input_features');
    const features = tf.tensor2d(input.data as Float32Array, input.shape as [number, number]);
    const out = enc.encode(features, Array.from(cases.read('audio_enc.feature_lens').data), { keepConvEmbeds: true });
    expect(out.embeds.shape).toEqual([20, config.output_dim]);
    const convDiff = maxAbsDiff(out.convEmbeds!.dataSync(), cases.read('audio_enc.conv_embeds').data);
    const outDiff = maxAbsDiff(out.embeds.dataSync(), cases.read('audio_enc.last_hidden_state').data);
    expect(convDiff).toBeLessThanOrEqual(atol['audio_enc.conv_embeds']);
    expect(outDiff).toBeLessThanOrEqual(atol['audio_enc.last_hidden_state']);
    out.embeds.dispose();
    out.convEmbeds!.dispose();
    features.dispose();
    enc.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('gives the same result when the conv stack runs one chunk at a time (conv_chunksize 1)', () => {
    const enc = AudioEncoder.load(ckpt, config);
    const oneByOne = AudioEncoder.load(ckpt, { ...config, conv_chunksize: 1 });
    const input = cases.read('audio_enc.input_features');
    tf.tidy(() => {
      const features = tf.tensor2d(input.data as Float32Array, input.shape as [number, number]);
      const a = enc.embed(features, [150]).convEmbeds;
      const b = oneByOne.embed(features, [150]).convEmbeds;
      expect(maxAbsDiff(b.dataSync(), a.dataSync())).toBeLessThan(1e-6);
    });
    enc.dispose();
    oneByOne.dispose();
  });

  it('runs the layer stack in passes of whole windows with the same result', () => {
    const enc = AudioEncoder.load(ckpt, config);
    const input = cases.read('audio_enc.input_features');
    tf.tidy(() => {
      const features = tf.tensor2d(input.data as Float32Array, input.shape as [number, number]);
      const { convEmbeds, plan } = enc.embed(features, [150]);
      expect(plan.cuSeqlens).toEqual([0, 13, 20]); // n_window_infer 100: one 13-token window per chunk
      const whole = enc.transform(convEmbeds, plan);
      const passes = enc.transform(convEmbeds, plan, 13);
      expect(maxAbsDiff(passes.dataSync(), whole.dataSync())).toBeLessThan(1e-6);
    });
    enc.dispose();
  });

  it('zero-pads every chunk to the longest before the convs, and never attends across audios', () => {
    const enc = AudioEncoder.load(ckpt, config);
    const input = cases.read('audio_enc.input_features');
    tf.tidy(() => {
      const features = tf.tensor2d(input.data as Float32Array, input.shape as [number, number]);
      const a = tf.slice(features, [0, 0], [128, 100]) as tf.Tensor2D;
      const b = tf.slice(features, [0, 100], [128, 50]) as tf.Tensor2D;
      const aloneA = enc.encode(a, [100]).embeds;
      const aloneB = enc.encode(b, [50], { keepConvEmbeds: true });
      const batch = enc.encode(features, [100, 50], { keepConvEmbeds: true });
      expect(batch.outputLengths).toEqual([13, 7]);
      // Audio a is a full chunk: batching changes nothing for it.
      expect(maxAbsDiff(tf.slice(batch.embeds, [0, 0], [13, -1]).dataSync(), aloneA.dataSync())).toBeLessThan(1e-5);
      // Audio b alone is one unpadded 50-frame chunk; in the batch it is padded to 100 frames, so its last conv rows
      // see bias+GELU of the padding, as in the reference. Its first rows (far from the padding) agree.
      const batchB = tf.slice(batch.convEmbeds!, [13, 0], [7, -1]);
      expect(maxAbsDiff(tf.slice(batchB, [0, 0], [5, -1]).dataSync(), tf.slice(aloneB.convEmbeds!, [0, 0], [5, -1]).dataSync())).toBeLessThan(1e-5);
      expect(maxAbsDiff(batchB.dataSync(), aloneB.convEmbeds!.dataSync())).toBeGreaterThan(1e-4);
    });
    enc.dispose();
  });

  it('names the culprit for bad inputs and bad checkpoints', () => {
    const enc = AudioEncoder.load(ckpt, config);
    tf.tidy(() => {
      expect(() => enc.encode(tf.zeros([80, 150]) as tf.Tensor2D, [150])).toThrow(/num_mel_bins=128, frames\], got \[80,150\]/);
      expect(() => enc.encode(tf.zeros([128, 150]) as tf.Tensor2D, [100])).toThrow(/sum to 100 frames but features hold 150/);
    });
    enc.dispose();
    const before = tf.memory().numTensors;
    expect(() => AudioEncoder.load(ckpt, config, 'thinker.no_such_tower')).toThrow(/missing tensor 'thinker.no_such_tower.conv2d1.weight'/);
    expect(() => AudioEncoder.load(ckpt, { ...config, encoder_ffn_dim: 96 })).toThrow(/'thinker.audio_tower.layers.0.fc1.weight' has shape \[64,32\] but the model expects \[96,32\]/);
    expect(tf.memory().numTensors).toBe(before);
  });
});
