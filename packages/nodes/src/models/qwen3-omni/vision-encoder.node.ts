import * as tf from '@tensorflow/tfjs-core';
import type { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, tensorPacket, type ImagePacket, type TensorPacket } from '@omniflow/core';
import { Checkpoint, initBackend } from '@omniflow/runtime-gpu';
import { preprocessImage } from '../../media/vision-preprocess.js';
import { readQwen3OmniConfig } from './config.js';
import { VisionEncoder, type GridThw } from './vision-encoder.js';

/*
 * The `visionEncoder` node: images or patchified pixels in, merged vision-token embeddings out, with the DeepStack
 * features the thinker adds after its first layers — the packets the `thinker` node takes for `<|image_pad|>` and
 * `<|video_pad|>`.
 */

/** Something that holds a loaded vision encoder (a model from `loadQwen3Omni`). */
interface HasVisionEncoder {
  readonly visionEncoder: VisionEncoder | undefined;
}

export const visionEncoderParams = z.object({
  /**
   * A `VisionEncoder`, a model from `loadQwen3Omni` (its vision encoder is borrowed), or a checkpoint folder whose
   * `thinker.visual` is loaded when the node opens and freed when it closes.
   */
  model: z.union([
    z.string().min(1),
    z.custom<VisionEncoder>((v) => v instanceof VisionEncoder),
    z.custom<HasVisionEncoder>((v) => typeof v === 'object' && v !== null && 'visionEncoder' in v, {
      message: 'expected a checkpoint folder, a VisionEncoder or a model from loadQwen3Omni()',
    }),
  ]),
  /** Image packets are resized (smart_resize) to at least this many pixels. */
  minPixels: z.number().int().positive().optional(),
  /** … and at most this many (bounds the vision tokens per image). */
  maxPixels: z.number().int().positive().optional(),
});
export type VisionEncoderParams = z.output<typeof visionEncoderParams>;

interface EncoderResource {
  readonly encoder: VisionEncoder;
  readonly owned: boolean;
}

async function openVisionEncoder(model: VisionEncoderParams['model']): Promise<EncoderResource> {
  if (model instanceof VisionEncoder) return { encoder: model, owned: false };
  if (typeof model !== 'string') {
    if (!model.visionEncoder) throw new Error('visionEncoder: the model was loaded without its vision encoder (thinker.visual)');
    return { encoder: model.visionEncoder, owned: false };
  }
  await initBackend();
  const { config } = readQwen3OmniConfig(model);
  const ckpt = Checkpoint.open(model);
  try {
    return { encoder: VisionEncoder.load(ckpt, config.thinker_config.vision_config), owned: true };
  } finally {
    ckpt.close();
  }
}

/** Extras of a pixel packet that describe it rather than travel on (they are consumed here). */
const CONSUMED_EXTRAS = new Set(['grid_thw', 'second_per_grid']);

/** Encodes one image packet or pixel tensor packet; the input is consumed. */
function encodePacket(encoder: VisionEncoder, params: VisionEncoderParams, p: ImagePacket | TensorPacket, node: string): TensorPacket {
  const cfg = encoder.config;
  const stamp = { session: p.session, turn: p.turn, pts: p.pts, uninterruptible: p.uninterruptible };
  if (p.kind === 'image') {
    const input = preprocessImage(p, {
      patchSize: cfg.patch_size,
      temporalPatchSize: cfg.temporal_patch_size,
      mergeSize: cfg.spatial_merge_size,
      minPixels: params.minPixels,
      maxPixels: params.maxPixels,
    });
    const out = tf.tidy(() => {
      const pixels = tf.tensor2d(input.pixelValues, [input.shape[0], input.shape[1]]);
      const { embeds, deepstack } = encoder.encode(pixels, [input.gridThw]);
      return { embeds, deepstack };
    });
    return tensorPacket({ ...stamp, name: 'image_embeds', tensor: out.embeds as tf.Tensor, extras: extrasOf(out.deepstack, input.gridThw) });
  }
  const extras = (p.extras ?? {}) as Record<string, tf.Tensor>;
  let moved = false;
  try {
    const isVideo = p.name === 'pixel_values_videos';
    if (!isVideo && p.name !== 'pixel_values') {
      throw new Error(`${node}: port 'pixels' expects image packets or 'pixel_values' / 'pixel_values_videos' tensors, got tensor '${p.name}'`);
    }
    const gridT = extras.grid_thw;
    if (!gridT || gridT.size !== 3) throw new Error(`${node}: '${p.name}' needs an int32 [3] extra 'grid_thw' (t, h, w patches)`);
    const grid = Array.from(gridT.dataSync()) as unknown as GridThw;
    const spg = extras.second_per_grid;
    if (isVideo && (!spg || spg.size !== 1)) throw new Error(`${node}: 'pixel_values_videos' needs a [1] extra 'second_per_grid' (temporal_patch_size / sampling fps)`);
    const { embeds, deepstack } = encoder.encode(p.tensor as tf.Tensor2D, [grid]);
    // Other extras travel on (ownership moves to the output): e.g. a video's `audio_embeds` for audio-in-video.
    const passOn = Object.fromEntries(Object.entries(extras).filter(([k]) => !CONSUMED_EXTRAS.has(k)));
    const own = extrasOf(deepstack, grid, isVideo ? spg!.dataSync()[0] : undefined);
    moved = true;
    return tensorPacket({ ...stamp, name: isVideo ? 'video_embeds' : 'image_embeds', tensor: embeds as tf.Tensor, extras: { ...passOn, ...own } });
  } finally {
    p.tensor.dispose();
    for (const [k, t] of Object.entries(extras)) if (!moved || CONSUMED_EXTRAS.has(k)) t.dispose();
  }
}

function extrasOf(deepstack: tf.Tensor2D[], grid: GridThw, secondPerGrid?: number): Record<string, tf.Tensor> {
  const extras: Record<string, tf.Tensor> = { grid_thw: tf.tensor1d([...grid], 'int32') };
  deepstack.forEach((t, i) => (extras[`deepstack.${i}`] = t));
  if (secondPerGrid !== undefined) extras.second_per_grid = tf.tensor1d([secondPerGrid]);
  return extras;
}

/**
 * Encodes images and videos for the thinker. Takes image packets (resized and patchified here with the encoder's
 * patch sizes) or tensor packets `pixel_values` / `pixel_values_videos` [patches, C·tps·p²] carrying an int32 [3]
 * extra `grid_thw` and, for videos, `second_per_grid`. Emits `image_embeds` / `video_embeds` [tokens, out_hidden_size]
 * with extras `deepstack.<i>`, `grid_thw` and (videos) `second_per_grid`; other input extras are passed on.
 *
 * ```ts
 * images$.pipe(visionEncoder({ model })).subscribe((p) => console.log(p.name, p.tensor.shape)); // image_embeds [tokens, 2048]
 * ```
 */
export const visionEncoder = defineNode({
  type: 'visionEncoder',
  description: 'Qwen3-Omni vision encoder: images or patchified pixels in, vision-token embeddings and DeepStack features out',
  inputs: { pixels: ports.of(['image', 'tensor'], { description: "image packets, or 'pixel_values' / 'pixel_values_videos' tensors with a grid_thw extra" }) },
  outputs: { embeds: ports.tensor({ name: 'image_embeds', dtype: 'float32', description: "'image_embeds' / 'video_embeds' with deepstack.<i>, grid_thw, second_per_grid extras" }) },
  params: visionEncoderParams,
  open: (params) => openVisionEncoder(params.model),
  operator: (params, ctx, resource) => (pixels$: Observable<ImagePacket | TensorPacket>) =>
    pixels$.pipe(ctx.mapAsync((p: ImagePacket | TensorPacket) => [encodePacket(resource.encoder, params, p, ctx.node)])),
  close: (resource) => {
    if (resource.owned) resource.encoder.dispose();
  },
});

