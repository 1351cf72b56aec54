import * as tf from '@tensorflow/tfjs-core';
import { firstValueFrom, lastValueFrom, of, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlPacket, tensorPacket, type ControlPacket, type TensorPacket } from '@omniflow/core';
import { SafetensorsFile, fixtureDir, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { audioEncoder } from './audio-encoder.node.js';

describe('audioEncoder node', () => {
  let cases: SafetensorsFile;
  const features = () => {
    const t = cases.read('audio_enc.input_features');
    return tensorPacket({ session: 's1', turn: 0, pts: 1_500_000, name: 'input_features', tensor: tf.tensor2d(t.data as Float32Array, t.shape as [number, number]) });
  };

  beforeAll(async () => {
    await initBackend();
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
  });
  afterAll(() => cases?.close());

  it('turns input_features packets into audio_embeds packets (loading the folder, freeing everything)', async () => {
    const before = tf.memory().numTensors;
    const input = [features(), features()];
    const out = await lastValueFrom(of(...input).pipe(audioEncoder({ model: fixtureDir() }), toArray()));
    expect(out).toHaveLength(2);
    const p = out[0] as TensorPacket<tf.Tensor>;
    expect(p).toMatchObject({ kind: 'tensor', name: 'audio_embeds', session: 's1', turn: 0, pts: 1_500_000 });
    expect(p.tensor.shape).toEqual([20, 32]);
    const want = cases.read('audio_enc.last_hidden_state').data;
    const got = p.tensor.dataSync();
    let diff = 0;
    for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
    expect(diff).toBeLessThan(3e-4);
    expect(input.every((q) => q.tensor.isDisposed)).toBe(true);
    for (const q of out) q.tensor.dispose();
    // The node loaded the encoder from the folder, so it freed it when the stream completed.
    expect(tf.memory().numTensors).toBe(before);
  });

  it("stream mode: pieces of a clip become one audio_embeds packet per clip, ended by turn-end or completion", async () => {
    const before = tf.memory().numTensors;
    const t = cases.read('audio_enc.input_features');
    const whole = tf.tensor2d(t.data as Float32Array, t.shape as [number, number]);
    const pieces = (turn: number, pts: number): Array<TensorPacket | ControlPacket> =>
      [[0, 30], [30, 50], [80, 70]].map(([at, n]) =>
        tensorPacket({ session: 's', turn, pts: pts + at * 10_000, name: 'input_features', tensor: tf.slice(whole, [0, at], [-1, n]) }),
      );
    const input: Array<TensorPacket | ControlPacket> = [...pieces(0, 0), controlPacket({ session: 's', turn: 0, signal: 'turn-end' }), ...pieces(1, 5_000_000)];
    const out = (await lastValueFrom(of(...input).pipe(audioEncoder({ model: fixtureDir(), mode: 'stream' }), toArray()))) as unknown as TensorPacket<tf.Tensor>[];
    expect(out.map((p) => [p.name, p.turn, p.pts])).toEqual([['audio_embeds', 0, 0], ['audio_embeds', 1, 5_000_000]]);
    const want = cases.read('audio_enc.last_hidden_state').data;
    for (const p of out) {
      expect(p.tensor.shape).toEqual([20, 32]);
      const got = p.tensor.dataSync();
      let diff = 0;
      for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
      expect(diff).toBeLessThan(3e-4);
      p.tensor.dispose();
    }
    whole.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names the node and port for a packet it cannot encode, and frees it', async () => {
    const bad = tensorPacket({ name: 'pixel_values', tensor: tf.zeros([4, 4]) });
    await expect(firstValueFrom(of(bad).pipe(audioEncoder({ model: fixtureDir() })))).rejects.toThrow(
      /audioEncoder: port 'features' expects 'input_features' \[mel, frames\] tensors, got 'pixel_values' \[4,4\]/,
    );
    expect(bad.tensor.isDisposed).toBe(true);
  });

  it('rejects bad params with the param path', () => {
    expect(() => audioEncoder({ model: 42 as unknown as string })).toThrow(/audioEncoder: bad params: model/);
  });
});
