import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { defineNode, ports, tensorPacket, MICROS_PER_SECOND, type ImagePacket, type TensorPacket, type VideoPacket } from '@omniflow/core';
import { transformOperator, type PacketTransform } from './packet-pipe.js';
import { preprocessImage, preprocessVideo, type VisionInput, type VisionPreprocessOptions } from './vision-preprocess.js';

const rgb = z.tuple([z.number(), z.number(), z.number()]);

export const visionPreprocessParams = z.object({
  patchSize: z.number().int().positive().default(16),
  temporalPatchSize: z.number().int().positive().default(2),
  mergeSize: z.number().int().positive().default(2),
  minPixels: z.number().int().positive().optional(),
  maxPixels: z.number().int().positive().optional(),
  imageMean: rgb.default([0.5, 0.5, 0.5]),
  imageStd: rgb.default([0.5, 0.5, 0.5]),
  /** Video: frames per emitted clip (rounded up to a multiple of temporalPatchSize). Default 16 (8 s at 2 fps). */
  framesPerClip: z.number().int().positive().default(16),
  /** Video: the rate the frames were sampled at; default 1e6 / the first frame's duration. */
  fps: z.number().positive().optional(),
});

const pixelsPacket = (name: 'pixel_values' | 'pixel_values_videos', v: VisionInput, head: { session: string; turn: number; pts: number }, secondPerGrid?: number): TensorPacket =>
  tensorPacket<tf.Tensor>({
    name,
    tensor: tf.tensor2d(v.pixelValues, [v.shape[0], v.shape[1]]),
    extras: {
      grid_thw: tf.tensor1d([...v.gridThw], 'int32'),
      ...(secondPerGrid !== undefined ? { second_per_grid: tf.tensor1d([secondPerGrid]) } : {}),
    },
    session: head.session,
    turn: head.turn,
    pts: head.pts,
  });

/**
 * Vision preprocessing node: image packets → `pixel_values`, video frames → `pixel_values_videos` clips, each
 * [patches, 3·temporalPatch·patch²] with int32 extra `grid_thw` [t, h, w] and, for video, `second_per_grid`
 * (temporalPatch / fps) — what the `visionEncoder` node takes. A clip's pts is its first frame's.
 *
 * ```ts
 * ffmpegVideoSource({ input: 'clip.mp4', fps: 2 }).pipe(visionPreprocess({ framesPerClip: 8 })).subscribe(encode);
 * ```
 */
export const visionPreprocess = defineNode({
  type: 'visionPreprocess',
  description: 'Qwen2-VL image/video preprocessing: smart_resize, normalise, temporal patches, patch layout, grid_thw',
  inputs: { pixels: ports.of(['image', 'video']) },
  outputs: { pixels: ports.tensor({ name: 'pixel_values', dtype: 'float32', description: "'pixel_values' / 'pixel_values_videos' with grid_thw (and second_per_grid) extras" }) },
  params: visionPreprocessParams,
  operator: (p) =>
    transformOperator<ImagePacket | VideoPacket, TensorPacket>((): PacketTransform<ImagePacket | VideoPacket, TensorPacket> => {
      const opts: VisionPreprocessOptions = p;
      const perClip = Math.ceil(p.framesPerClip / p.temporalPatchSize) * p.temporalPatchSize;
      let frames: VideoPacket[] = [];
      const clip = (): TensorPacket[] => {
        if (frames.length === 0) return [];
        const fps = p.fps ?? MICROS_PER_SECOND / frames[0].duration;
        const v = preprocessVideo(frames, { ...opts, fps });
        const out = pixelsPacket('pixel_values_videos', v, frames[0], v.secondPerGrid);
        frames = [];
        return [out];
      };
      return {
        push: (x) => {
          if (x.kind === 'image') return [pixelsPacket('pixel_values', preprocessImage(x, opts), x)];
          frames.push(x);
          return frames.length >= perClip ? clip() : [];
        },
        flush: clip,
      };
    }),
});
