import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { LogMelStream, logMelFeatures, melFilterBank } from './log-mel.js';

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

describe('log-mel features (case 1_audio_features)', () => {
  let cases: SafetensorsFile;
  let waveform: Float32Array;
  let expected: Float32Array; // [1, 128, 150]
  beforeAll(async () => {
    await initBackend();
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    waveform = cases.read('audio_fe.waveform').data as Float32Array;
    expected = cases.read('audio_fe.input_features').data as Float32Array;
  });
  afterAll(() => cases.close());

  it('computes the Slaney mel filter bank of the extractor', () => {
    const ref = cases.read('audio_fe.mel_filters');
    expect(ref.shape).toEqual([201, 128]);
    expect(maxAbsDiff(melFilterBank(), ref.data)).toBeLessThan(1e-7);
  });

  it('matches input_features within atol 2e-4 (batch kernel), owning every tensor', () => {
    const before = tf.memory().numTensors;
    const { features, frames } = logMelFeatures(waveform);
    expect(frames).toBe(150);
    expect(features.shape).toEqual([128, 150]);
    const diff = maxAbsDiff(features.dataSync(), expected);
    expect(diff).toBeLessThan(2e-4);
    features.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('streams the same raw frames for any chunking and equals batch once the clip max is reached', () => {
    const before = tf.memory().numTensors;
    const stream = new LogMelStream();
    const parts: tf.Tensor2D[] = [];
    // Uneven chunk sizes, including ones shorter than a hop and than the reflect pad.
    const sizes = [37, 150, 1, 999, 3200, 160, 7];
    let at = 0;
    for (let i = 0; at < waveform.length; i++) {
      const n = sizes[i % sizes.length];
      const f = stream.push(waveform.subarray(at, Math.min(waveform.length, at + n)));
      if (f) parts.push(f);
      at += n;
    }
    const tail = stream.flush();
    if (tail) parts.push(tail);
    expect(stream.frames).toBe(150);
    const streamed = tf.concat(parts, 1);
    expect(streamed.shape).toEqual([128, 150]);
    // The running max can only be <= the clip max, so the floor can only be lower: streamed <= batch everywhere, and
    // equal wherever the batch value sits above its floor (the clip max is reached early in this clip).
    const got = streamed.dataSync();
    const floor = Math.min(...expected);
    let above = 0;
    let worstAbove = 0;
    let worstExcess = 0;
    for (let i = 0; i < got.length; i++) {
      worstExcess = Math.max(worstExcess, got[i] - expected[i]);
      if (expected[i] > floor + 1e-3) {
        above++;
        worstAbove = Math.max(worstAbove, Math.abs(got[i] - expected[i]));
      }
    }
    expect(above).toBeGreaterThan(got.length / 2);
    expect(worstAbove).toBeLessThan(2e-4);
    expect(worstExcess).toBeLessThan(2e-4);
    tf.dispose([...parts, streamed]);
    stream.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('with a fixed reference equal to the clip max, streaming reproduces batch exactly', () => {
    // Reference from the fixture itself: input_features = (max(x, M-8)+4)/4 so M = 4*max(feature) - 4.
    const M = 4 * Math.max(...expected) - 4;
    const stream = new LogMelStream({ reference: { fixed: M } });
    const a = stream.push(waveform.subarray(0, 10_000))!;
    const b = stream.push(waveform.subarray(10_000))!;
    const c = stream.flush()!;
    const all = tf.concat([a, b, c], 1);
    expect(maxAbsDiff(all.dataSync(), expected)).toBeLessThan(2e-4);
    tf.dispose([a, b, c, all]);
    stream.dispose();
  });

  it('rejects clips too short for the reflect padding, naming the sizes', () => {
    expect(() => logMelFeatures(new Float32Array(100))).toThrow(/more than 200 samples.*got 100/);
  });
});
