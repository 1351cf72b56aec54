import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { AudioEncoder } from './audio-encoder.js';
import { AudioEncoderStream } from './audio-encoder-stream.js';
import { readQwen3OmniConfig, type AudioEncoderConfig } from './config.js';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('AudioEncoderStream', () => {
  let ckpt: Checkpoint;
  let config: AudioEncoderConfig;

  beforeAll(async () => {
    await initBackend();
    ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    config = readQwen3OmniConfig(fixturePath('config.json')).config.thinker_config.audio_config;
  });
  afterAll(() => ckpt?.close());

  /** Pushes `features` in pieces of the given sizes, then compares with encoding the whole clip at once. */
  function streamVsWhole(enc: AudioEncoder, frames: number, pieces: number[]): { diff: number; encodedBeforeFinish: number } {
    const before = tf.memory().numTensors;
    const features = tf.randomNormal([config.num_mel_bins, frames], 0, 1, 'float32', frames) as tf.Tensor2D;
    const whole = enc.encode(features, [frames]).embeds;
    const stream = new AudioEncoderStream(enc);
    let at = 0;
    for (const n of pieces) {
      const piece = tf.slice(features, [0, at], [-1, n]) as tf.Tensor2D;
      stream.push(piece);
      piece.dispose();
      at += n;
    }
    expect(at).toBe(frames);
    const encodedBeforeFinish = stream.tokensEncoded;
    const { embeds, frames: seen } = stream.finish();
    expect(seen).toBe(frames);
    const diff = maxAbsDiff(embeds.dataSync(), whole.dataSync());
    for (const t of [features, whole, embeds]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    return { diff, encodedBeforeFinish };
  }

  it('gives the whole-clip rows, encoding complete windows before the end (tail chunk padded like the reference)', () => {
    // Fixture config: n_window_infer 100, so every 100-frame chunk is a window of 13 tokens.
    const enc = AudioEncoder.load(ckpt, config);
    const r = streamVsWhole(enc, 150, [30, 50, 70]);
    expect(r.encodedBeforeFinish).toBe(13);
    expect(r.diff).toBeLessThan(1e-5);
    enc.dispose();
  });

  it('handles windows of several chunks, pieces that span windows, and a clip shorter than one chunk', () => {
    const enc = AudioEncoder.load(ckpt, { ...config, n_window_infer: 300 }); // windows of 3 chunks = 39 tokens
    const long = streamVsWhole(enc, 730, [1, 299, 250, 120, 60]);
    expect(long.encodedBeforeFinish).toBe(78); // two complete windows (600 frames) before the end
    expect(long.diff).toBeLessThan(1e-5);
    expect(streamVsWhole(enc, 70, [20, 50]).diff).toBeLessThan(1e-5); // one unpadded 70-frame chunk, as the reference
    enc.dispose();
  });

  it('rejects misuse with a clear error and frees what it holds', () => {
    const enc = AudioEncoder.load(ckpt, config);
    const before = tf.memory().numTensors;
    const stream = new AudioEncoderStream(enc);
    expect(() => stream.finish()).toThrow(/no features were pushed/);
    const bad = tf.zeros([80, 10]) as tf.Tensor2D;
    expect(() => new AudioEncoderStream(enc).push(bad)).toThrow(/\[num_mel_bins=128, frames\], got \[80,10\]/);
    bad.dispose();
    const s2 = new AudioEncoderStream(enc);
    const f = tf.zeros([128, 130]) as tf.Tensor2D;
    s2.push(f);
    f.dispose();
    s2.dispose();
    expect(tf.memory().numTensors).toBe(before);
    enc.dispose();
  });
});
