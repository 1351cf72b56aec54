import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, SafetensorsFile, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig, type VisionEncoderConfig } from './config.js';
import { VisionEncoder, visionCuSeqlens, visionPositionInterpolation, visionRopePositions, type GridThw } from './vision-encoder.js';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('vision grid helpers', () => {
  it('lays patches out in merge-block order and cuts one attention segment per frame group', () => {
    expect(Array.from(visionRopePositions([[1, 2, 4]], 2))).toEqual([0, 0, 0, 1, 1, 0, 1, 1, 0, 2, 0, 3, 1, 2, 1, 3]);
    expect(visionCuSeqlens([[1, 4, 6], [2, 4, 4]])).toEqual([0, 24, 40, 56]);
  });

  it('interpolates the position table with align_corners=True: grid corners hit table corners exactly', () => {
    const side = 8;
    const { indices, weights } = visionPositionInterpolation([[1, 4, 6]], side, 2);
    // Patch 0 is (0, 0): all weight on table row 0.
    expect(Array.from(indices.slice(0, 4))).toEqual([0, 1, 8, 9]);
    expect(Array.from(weights.slice(0, 4))).toEqual([1, 0, 0, 0]);
    // The last patch in merge-block order is (3, 5), the far corner: table row 63, clamped taps.
    expect(Array.from(indices.slice(-4))).toEqual([63, 63, 63, 63]);
    expect(weights[weights.length - 4]).toBe(1);
    // Patch 1 is (0, 1): column 1 of 6 maps to 7/5 = 1.4 -> taps 1 and 2 with weights 0.6 and 0.4.
    expect(Array.from(indices.slice(4, 8))).toEqual([1, 2, 9, 10]);
    expect(weights[4]).toBeCloseTo(0.6, 6);
    expect(weights[5]).toBeCloseTo(0.4, 6);
    for (let p = 0; p < 24; p++) expect(weights[4 * p] + weights[4 * p + 1] + weights[4 * p + 2] + weights[4 * p + 3]).toBeCloseTo(1, 6);
  });

  it('rejects grids the merger cannot group', () => {
    expect(() => visionRopePositions([[1, 3, 4]], 2)).toThrow(/grid_thw\[0\] = \[1,3,4\]; h and w must be multiples of spatial_merge_size 2/);
    expect(() => visionCuSeqlens([])).not.toThrow();
    expect(() => visionPositionInterpolation([], 8, 2)).toThrow(/grid_thw is empty/);
  });
});

describe('VisionEncoder parity (fixture case 3_vision_encoder)', () => {
  let ckpt: Checkpoint;
  let cases: SafetensorsFile;
  let config: VisionEncoderConfig;
  let atol: Record<string, number>;
  const grid = (name: string): GridThw => Array.from(cases.read(name).data) as unknown as GridThw;
  const pixels = (name: string) => {
    const t = cases.read(name);
    return tf.tensor2d(t.data as Float32Array, t.shape as [number, number]);
  };

  beforeAll(async () => {
    await initBackend();
    ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    config = readQwen3OmniConfig(fixturePath('config.json')).config.thinker_config.vision_config;
    const json = JSON.parse(readFileSync(fixturePath('cases.json'), 'utf8'));
    atol = Object.fromEntries(Object.entries(json.cases['3_vision_encoder'].tensors).map(([k, v]) => [k, (v as { atol: number }).atol]));
  });
  afterAll(() => {
    ckpt?.close();
    cases?.close();
  });

  it('matches the image embeddings, DeepStack features and intermediates within atol, and frees every tensor', () => {
    const before = tf.memory().numTensors;
    const vit = VisionEncoder.load(ckpt, config);
    const input = pixels('vision.pixel_values');
    const out = vit.encode(input, [grid('vision.image_grid_thw')], { keepIntermediates: true });
    const im = out.intermediates!;
    expect(Array.from(im.interpIndices)).toEqual(Array.from(cases.read('vision.image.interp_indices').data));
    expect(maxAbsDiff(im.interpWeights, cases.read('vision.image.interp_weights').data)).toBeLessThanOrEqual(atol['vision.image.interp_weights']);
    expect(Array.from(im.ropePositions)).toEqual(Array.from(cases.read('vision.image.rope_position_ids').data));
    for (const [got, name] of [
      [im.patchEmbeds, 'vision.image.patch_embeds'],
      [im.posEmbeds, 'vision.image.pos_embeds'],
      [im.lastHiddenState, 'vision.image.last_hidden_state'],
      [out.embeds, 'vision.image.embeds'],
      [out.deepstack[0], 'vision.image.deepstack.0'],
      [out.deepstack[1], 'vision.image.deepstack.1'],
    ] as const) {
      expect(got.shape).toEqual(cases.read(name).shape);
      expect(maxAbsDiff(got.dataSync(), cases.read(name).data), name).toBeLessThanOrEqual(atol[name]);
    }
    expect(out.tokensPerItem).toEqual([6]);
    for (const t of [out.embeds, ...out.deepstack, im.patchEmbeds, im.posEmbeds, im.lastHiddenState]) t.dispose();
    input.dispose();
    vit.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('encodes an image and a video in one call exactly as separately (no cross-item attention)', () => {
    const vit = VisionEncoder.load(ckpt, config);
    tf.tidy(() => {
      const image = pixels('vision.pixel_values');
      const video = pixels('vision.pixel_values_videos');
      const both = vit.encode(tf.concat([image, video], 0) as tf.Tensor2D, [grid('vision.image_grid_thw'), grid('vision.video_grid_thw')]);
      expect(both.tokensPerItem).toEqual([6, 8]);
      const videoRows = tf.slice(both.embeds, [6, 0], [8, -1]);
      expect(maxAbsDiff(videoRows.dataSync(), cases.read('vision.video.embeds').data)).toBeLessThanOrEqual(atol['vision.video.embeds']);
      const ds1 = tf.slice(both.deepstack[1], [6, 0], [8, -1]);
      expect(maxAbsDiff(ds1.dataSync(), cases.read('vision.video.deepstack.1').data)).toBeLessThanOrEqual(atol['vision.video.deepstack.1']);
    });
    vit.dispose();
  });

  it('runs the blocks in passes of whole frame groups with the same result and no leaked tensor', () => {
    const vit = VisionEncoder.load(ckpt, config);
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const pixels2 = tf.concat([pixels('vision.pixel_values'), pixels('vision.pixel_values_videos')], 0) as tf.Tensor2D;
      const grids = [grid('vision.image_grid_thw'), grid('vision.video_grid_thw')];
      const whole = vit.encode(pixels2, grids, { keepIntermediates: true });
      const passes = vit.encode(pixels2, grids, { keepIntermediates: true, maxPatchesPerPass: 24 }); // image | frame 0 | frame 1
      expect(maxAbsDiff(passes.embeds.dataSync(), whole.embeds.dataSync())).toBeLessThan(1e-6);
      expect(maxAbsDiff(passes.deepstack[0].dataSync(), whole.deepstack[0].dataSync())).toBeLessThan(1e-6);
      expect(maxAbsDiff(passes.intermediates!.lastHiddenState.dataSync(), whole.intermediates!.lastHiddenState.dataSync())).toBeLessThan(1e-6);
    });
    expect(tf.memory().numTensors).toBe(before);
    // Outside any tidy scope: without intermediates every per-pass piece is freed, only the outputs remain.
    const input = tf.tidy(() => tf.concat([pixels('vision.pixel_values'), pixels('vision.pixel_values_videos')], 0) as tf.Tensor2D);
    const out = vit.encode(input, [grid('vision.image_grid_thw'), grid('vision.video_grid_thw')], { maxPatchesPerPass: 24 });
    for (const t of [input, out.embeds, ...out.deepstack]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
    vit.dispose();
  });

  it('names the culprit for bad inputs and bad checkpoints', () => {
    const vit = VisionEncoder.load(ckpt, config);
    tf.tidy(() => {
      expect(() => vit.encode(tf.zeros([24, 100]) as tf.Tensor2D, [[1, 4, 6]])).toThrow(/pixel values must be \[24 patches \(from grid_thw\), 384\], got \[24,100\]/);
      expect(() => vit.encode(tf.zeros([20, 384]) as tf.Tensor2D, [[1, 4, 5]])).toThrow(/multiples of spatial_merge_size/);
    });
    vit.dispose();
    const before = tf.memory().numTensors;
    expect(() => VisionEncoder.load(ckpt, { ...config, intermediate_size: 48 })).toThrow(/'thinker.visual.blocks.0.mlp.linear_fc1.weight' has shape \[64,32\] but the model expects \[48,32\]/);
    expect(() => VisionEncoder.load(ckpt, { ...config, deepstack_visual_indexes: [0, 1, 2] })).toThrow(/missing tensor 'thinker.visual.merger_list.2.ln_q.weight'/);
    expect(tf.memory().numTensors).toBe(before);
  });
});
