import * as tf from '@tensorflow/tfjs-core';
import type { HostTensor } from '@omniflow/runtime-gpu';
import { VisionEncoder, type GridThw } from '../../models/qwen3-omni/vision-encoder.js';
import { tensorPrefixes, type ParityOutputs, type ParityRunner } from '../types.js';

/** Rows of an [n, 3] int grid tensor as (t, h, w) triples. */
function grids(t: HostTensor): GridThw[] {
  const out: GridThw[] = [];
  for (let i = 0; i < t.shape[0]; i++) out.push([t.data[3 * i], t.data[3 * i + 1], t.data[3 * i + 2]]);
  return out;
}

/**
 * Vision-encoder cases (tensors `vision.*`): encodes the image (`pixel_values` + `image_grid_thw`) and the video
 * (`pixel_values_videos` + `video_grid_thw`) that the case holds, with the folder's `thinker_config.vision_config`, and
 * reports `vision.image.*` / `vision.video.*`: embeddings, DeepStack features and the intermediates.
 */
export const visionEncoderRunner: ParityRunner = {
  kind: 'vision-encoder',
  matches: (_name, spec) => tensorPrefixes(spec).has('vision'),
  async run(ctx) {
    const vit = VisionEncoder.load(ctx.ckpt, ctx.config.thinker_config.vision_config);
    const result: ParityOutputs = {};
    try {
      for (const [item, pixels, grid] of [
        ['image', 'vision.pixel_values', 'vision.image_grid_thw'],
        ['video', 'vision.pixel_values_videos', 'vision.video_grid_thw'],
      ] as const) {
        if (!(pixels in ctx.tensors)) continue;
        const px = ctx.tensor(pixels);
        const input = tf.tensor2d(px.data as Float32Array, px.shape as [number, number]);
        try {
          const out = vit.encode(input, grids(ctx.tensor(grid)), { keepIntermediates: true });
          const im = out.intermediates!;
          const p = `vision.${item}`;
          Object.assign(result, {
            [`${p}.patch_embeds`]: im.patchEmbeds,
            [`${p}.interp_indices`]: im.interpIndices,
            [`${p}.interp_weights`]: im.interpWeights,
            [`${p}.pos_embeds`]: im.posEmbeds,
            [`${p}.rope_position_ids`]: im.ropePositions,
            [`${p}.cu_seqlens`]: im.cuSeqlens,
            [`${p}.last_hidden_state`]: im.lastHiddenState,
            [`${p}.embeds`]: out.embeds,
          });
          out.deepstack.forEach((t, i) => (result[`${p}.deepstack.${i}`] = t));
        } finally {
          input.dispose();
        }
      }
      return result;
    } catch (err) {
      for (const v of Object.values(result)) if (v instanceof tf.Tensor) v.dispose();
      throw err;
    } finally {
      vit.dispose();
    }
  },
};
