import * as tf from '@tensorflow/tfjs-core';
import { firstValueFrom, of } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imagePacket, tensorPacket, type TensorPacket } from '@omniflow/core';
import { Checkpoint, SafetensorsFile, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { VisionEncoder } from './vision-encoder.js';
import { visionEncoder } from './vision-encoder.node.js';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('visionEncoder node', () => {
  let cases: SafetensorsFile;
  let vit: VisionEncoder;

  beforeAll(async () => {
    await initBackend();
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    const ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    vit = VisionEncoder.load(ckpt, readQwen3OmniConfig(fixturePath('config.json')).config.thinker_config.vision_config);
    ckpt.close();
  });
  afterAll(() => {
    cases?.close();
    vit?.dispose();
  });

  it('encodes an image packet (preprocessed with the encoder sizes) into image_embeds with DeepStack extras', async () => {
    const before = tf.memory().numTensors;
    const rgb = cases.read('vision.image_uint8_hwc');
    const image = imagePacket({ pts: 40_000, data: Uint8Array.from(rgb.data), width: 48, height: 32, format: 'rgb24' });
    // minPixels below 32·48 keeps the fixture size (smart_resize would otherwise upscale to ≥ 3136 pixels).
    const out = (await firstValueFrom(of(image).pipe(visionEncoder({ model: vit, minPixels: 1024 })))) as TensorPacket<tf.Tensor>;
    expect(out).toMatchObject({ name: 'image_embeds', pts: 40_000 });
    expect(maxAbsDiff(out.tensor.dataSync(), cases.read('vision.image.embeds').data)).toBeLessThan(2e-4);
    expect(Array.from(out.extras!.grid_thw.dataSync())).toEqual([1, 4, 6]);
    expect(maxAbsDiff(out.extras!['deepstack.1'].dataSync(), cases.read('vision.image.deepstack.1').data)).toBeLessThan(3e-4);
    for (const t of [out.tensor, ...Object.values(out.extras!)]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('encodes pixel_values_videos with grid_thw and second_per_grid, passing other extras on', async () => {
    const before = tf.memory().numTensors;
    const px = cases.read('vision.pixel_values_videos');
    const audio = tf.zeros([20, 32]);
    const packet = tensorPacket({
      name: 'pixel_values_videos',
      tensor: tf.tensor2d(px.data as Float32Array, px.shape as [number, number]),
      extras: { grid_thw: tf.tensor1d(Array.from(cases.read('vision.video_grid_thw').data), 'int32'), second_per_grid: tf.tensor1d([1]), audio_embeds: audio },
    });
    const out = (await firstValueFrom(of(packet).pipe(visionEncoder({ model: vit })))) as TensorPacket<tf.Tensor>;
    expect(out.name).toBe('video_embeds');
    expect(maxAbsDiff(out.tensor.dataSync(), cases.read('vision.video.embeds').data)).toBeLessThan(3e-4);
    expect(out.extras!.audio_embeds).toBe(audio);
    expect(out.extras!.second_per_grid.dataSync()[0]).toBe(1);
    expect(packet.tensor.isDisposed).toBe(true);
    for (const t of [out.tensor, ...Object.values(out.extras!)]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('borrows the encoder of a loaded model, and says when the model has none', async () => {
    const px = cases.read('vision.pixel_values');
    const packet = () =>
      tensorPacket({ name: 'pixel_values', tensor: tf.tensor2d(px.data as Float32Array, px.shape as [number, number]) as tf.Tensor, extras: { grid_thw: tf.tensor1d([1, 4, 6], 'int32') as tf.Tensor } });
    const out = (await firstValueFrom(of(packet()).pipe(visionEncoder({ model: { visionEncoder: vit } })))) as TensorPacket<tf.Tensor>;
    expect(out.tensor.shape).toEqual([6, 32]);
    for (const t of [out.tensor, ...Object.values(out.extras!)]) t.dispose();
    // The node did not free the borrowed encoder: it still encodes.
    tf.tidy(() => {
      expect(vit.encode(tf.tensor2d(px.data as Float32Array, px.shape as [number, number]), [[1, 4, 6]]).embeds.shape).toEqual([6, 32]);
    });
    const p = packet();
    await expect(firstValueFrom(of(p).pipe(visionEncoder({ model: { visionEncoder: undefined } })))).rejects.toThrow(/loaded without its vision encoder \(thinker.visual\)/);
    for (const t of [p.tensor, ...Object.values(p.extras!)]) t.dispose();
  });

  it('says which extra is missing, and frees the packet', async () => {
    const before = tf.memory().numTensors;
    const packet = tensorPacket({ name: 'pixel_values_videos', tensor: tf.zeros([32, 384]), extras: { grid_thw: tf.tensor1d([2, 4, 4], 'int32') } });
    await expect(firstValueFrom(of(packet).pipe(visionEncoder({ model: vit })))).rejects.toThrow(/visionEncoder: 'pixel_values_videos' needs a \[1\] extra 'second_per_grid'/);
    expect(tf.memory().numTensors).toBe(before);
  });
});
