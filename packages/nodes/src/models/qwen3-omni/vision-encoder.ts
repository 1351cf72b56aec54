import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import { segmentAttention, segmentPasses } from '../../layers/encoder-attention.js';
import { activation, gelu } from '../../layers/gelu.js';
import { disposeLayerNorm, layerNorm, loadLayerNorm, type LayerNorm } from '../../layers/layer-norm.js';
import { disposeLinear, linear, loadLinear, type Linear } from '../../layers/linear.js';
import { applyRotaryHalf, visionRotaryCosSin } from '../../layers/vision-rope.js';
import type { VisionEncoderConfig } from './config.js';

/*
 * The thinker's vision encoder (`thinker.visual`, spec 3.3): Conv3d patch embedding (as a matmul), bilinearly
 * resampled learned positions, 2-D rotary, pre-LN ViT blocks with attention inside each frame group, DeepStack
 * mergers tapped after `deepstack_visual_indexes` blocks, and the final 2×2 patch merger.
 *
 * Patch rows arrive in the processor's merge-block order: per image/video, per temporal group, (h_blk, w_blk, h_in,
 * w_in). Every per-patch table below (positions, rotary angles) is laid out in that order.
 */

/** A (t, h, w) patch grid of one image or video, in patch units (t = frames / temporal_patch_size). */
export type GridThw = readonly [t: number, h: number, w: number];

function checkGrids(grids: readonly GridThw[], merge: number): void {
  if (grids.length === 0) throw new Error('vision encoder: grid_thw is empty (no image or video to encode)');
  grids.forEach((g, i) => {
    if (g.length !== 3 || g.some((v) => !Number.isInteger(v) || v <= 0)) throw new Error(`vision encoder: grid_thw[${i}] = [${g}]; expected three positive integers (t, h, w)`);
    if (g[1] % merge !== 0 || g[2] % merge !== 0) throw new Error(`vision encoder: grid_thw[${i}] = [${g}]; h and w must be multiples of spatial_merge_size ${merge}`);
  });
}

/** (row, col) of every patch in merge-block order, frames repeating: [r0, c0, r1, c1, …]. */
function patchRowsCols(grids: readonly GridThw[], merge: number): Int32Array {
  const total = grids.reduce((a, [t, h, w]) => a + t * h * w, 0);
  const out = new Int32Array(total * 2);
  let k = 0;
  for (const [t, h, w] of grids) {
    for (let f = 0; f < t; f++) {
      for (let hb = 0; hb < h / merge; hb++) {
        for (let wb = 0; wb < w / merge; wb++) {
          for (let hi = 0; hi < merge; hi++) {
            for (let wi = 0; wi < merge; wi++) {
              out[k++] = hb * merge + hi;
              out[k++] = wb * merge + wi;
            }
          }
        }
      }
    }
  }
  return out;
}

/**
 * (h, w) patch coordinates the 2-D rotary uses (`rope_position_ids`), one pair per patch in merge-block order.
 *
 * ```ts
 * visionRopePositions([[1, 2, 2]], 2); // Int32Array [0,0, 0,1, 1,0, 1,1]
 * ```
 */
export function visionRopePositions(grids: readonly GridThw[], spatialMergeSize: number): Int32Array {
  checkGrids(grids, spatialMergeSize);
  return patchRowsCols(grids, spatialMergeSize);
}

/**
 * Attention segments of the vision blocks (`cu_seqlens`): one per temporal group of each image/video (h·w patches).
 *
 * ```ts
 * visionCuSeqlens([[1, 4, 6], [2, 4, 4]]); // [0, 24, 40, 56]
 * ```
 */
export function visionCuSeqlens(grids: readonly GridThw[]): number[] {
  const cu = [0];
  for (const [t, h, w] of grids) for (let f = 0; f < t; f++) cu.push(cu[cu.length - 1] + h * w);
  return cu;
}

/**
 * Bilinear (align_corners=True) resampling of the square learned position table (side × side) to each grid: four
 * flat table indices and weights per patch, in the order (floor_h, floor_w), (floor_h, ceil_w), (ceil_h, floor_w),
 * (ceil_h, ceil_w). Float32 arithmetic as the reference's `get_vision_interpolation_indices_and_weights`.
 *
 * ```ts
 * const { indices, weights } = visionPositionInterpolation([[1, 4, 6]], 8, 2); // 24 patches × 4 taps
 * ```
 */
export function visionPositionInterpolation(grids: readonly GridThw[], side: number, spatialMergeSize: number): { indices: Int32Array; weights: Float32Array } {
  checkGrids(grids, spatialMergeSize);
  const f = Math.fround;
  const rc = patchRowsCols(grids, spatialMergeSize);
  const n = rc.length / 2;
  const indices = new Int32Array(n * 4);
  const weights = new Float32Array(n * 4);
  // The (h, w) size of the grid each patch belongs to.
  const sizes = new Int32Array(n * 2);
  let k = 0;
  for (const [t, h, w] of grids) for (let i = 0; i < t * h * w; i++, k++) [sizes[2 * k], sizes[2 * k + 1]] = [h, w];
  const axis = (index: number, size: number): [number, number, number, number] => {
    // align_corners: the grid's ends map onto the table's ends.
    const src = f(f(index * (side - 1)) / Math.max(size - 1, 1));
    const lo = Math.floor(src);
    const taps: [number, number] = [Math.min(Math.max(lo, 0), side - 1), Math.min(Math.max(lo + 1, 0), side - 1)];
    const d = f(src - lo);
    return [taps[0], taps[1], Math.max(f(1 - d), 0), Math.max(f(1 - Math.abs(f(d - 1))), 0)];
  };
  for (let p = 0; p < n; p++) {
    const [h0, h1, wh0, wh1] = axis(rc[2 * p], sizes[2 * p]);
    const [w0, w1, ww0, ww1] = axis(rc[2 * p + 1], sizes[2 * p + 1]);
    indices.set([h0 * side + w0, h0 * side + w1, h1 * side + w0, h1 * side + w1], p * 4);
    weights.set([f(wh0 * ww0), f(wh0 * ww1), f(wh1 * ww0), f(wh1 * ww1)], p * 4);
  }
  return { indices, weights };
}

// Patches per pass of the block stack: at the released sizes the MLP activation of a pass is 16384 × 4304 floats
// (282 MB), whatever the number of frames.
const MAX_PATCHES_PER_PASS = 16384;

/** A `Qwen3OmniMoeVisionPatchMerger`: 2×2 patches → one LLM token. */
interface PatchMerger {
  readonly ln_q: LayerNorm;
  /** LayerNorm after gathering the 4 patches (DeepStack mergers) rather than per patch (final merger). */
  readonly postShuffleNorm: boolean;
  readonly mlp0: Linear;
  readonly mlp2: Linear;
}

interface VisionBlock {
  readonly norm1: LayerNorm;
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly norm2: LayerNorm;
  readonly linear_fc1: Linear;
  readonly linear_fc2: Linear;
}

/** What `VisionEncoder.encode` returns. The caller owns every tensor. */
export interface VisionEncoding {
  /** [Σ t·h·w / merge², out_hidden_size]: the rows that replace `<|image_pad|>` / `<|video_pad|>` tokens, in order. */
  readonly embeds: tf.Tensor2D;
  /** One [Σ t·h·w / merge², out_hidden_size] per `deepstack_visual_indexes` entry, added after thinker layer i. */
  readonly deepstack: tf.Tensor2D[];
  /** Merged tokens per image/video (t·h·w / merge²). */
  readonly tokensPerItem: number[];
  /** Intermediates, only when asked for (`keepIntermediates`). */
  readonly intermediates?: {
    readonly patchEmbeds: tf.Tensor2D;
    readonly posEmbeds: tf.Tensor2D;
    readonly lastHiddenState: tf.Tensor2D;
    readonly interpIndices: Int32Array;
    readonly interpWeights: Float32Array;
    readonly ropePositions: Int32Array;
    readonly cuSeqlens: number[];
  };
}

/**
 * The Qwen3-Omni vision encoder with its weights on the active tfjs backend.
 *
 * ```ts
 * const vit = VisionEncoder.load(ckpt, config.thinker_config.vision_config);
 * const { embeds, deepstack } = vit.encode(pixelValues, [[1, 4, 6]]); // pixelValues [24, C·tps·p·p] -> embeds [6, out]
 * vit.dispose();
 * ```
 */
export class VisionEncoder {
  private constructor(
    readonly config: VisionEncoderConfig,
    private readonly patch_embed: Linear,
    private readonly pos_embed: tf.Tensor2D,
    private readonly blocks: VisionBlock[],
    private readonly merger: PatchMerger,
    private readonly merger_list: PatchMerger[],
  ) {}

  /** Columns of one pixel row: in_channels · temporal_patch_size · patch_size². */
  get patchDim(): number {
    const c = this.config;
    return c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
  }

  /**
   * Loads `${prefix}.*` (default `thinker.visual`), checking every shape against the config; a missing or mis-shaped
   * tensor throws with its name, and tensors already loaded are freed.
   */
  static load(ckpt: Checkpoint, config: VisionEncoderConfig, prefix = 'thinker.visual'): VisionEncoder {
    const d = config.hidden_size;
    if (!(config.depth >= 1)) throw new Error(`vision_config: depth ${config.depth}; the encoder needs at least one block`);
    if (d % config.num_heads !== 0) throw new Error(`vision_config: hidden_size ${d} is not divisible by num_heads ${config.num_heads}`);
    const side = Math.round(Math.sqrt(config.num_position_embeddings));
    if (side * side !== config.num_position_embeddings) throw new Error(`vision_config: num_position_embeddings ${config.num_position_embeddings} is not a square grid`);
    for (const i of config.deepstack_visual_indexes) {
      if (i >= config.depth) throw new Error(`vision_config: deepstack_visual_indexes entry ${i} is not a block index (depth ${config.depth})`);
    }
    const owned: (() => void)[] = [];
    const keep = <T>(value: T, dispose: (v: T) => void): T => {
      owned.push(() => dispose(value));
      return value;
    };
    try {
      const lin = (name: string, i: number, o: number) => keep(loadLinear(ckpt, `${prefix}.${name}`, i, o, true), disposeLinear);
      const ln = (name: string, dim: number) => keep(loadLayerNorm(ckpt, `${prefix}.${name}`, dim, 1e-6), disposeLayerNorm);
      const { in_channels: c, temporal_patch_size: tps, patch_size: p } = config;
      const k = c * tps * p * p;
      // Conv3d with kernel = stride = the whole patch is a Linear over the flattened (c, t, y, x) patch.
      const conv = ckpt.get(`${prefix}.patch_embed.proj.weight`, [d, c, tps, p, p]);
      const patch_embed = keep(
        {
          weight: tf.tidy(() => tf.transpose(tf.tensor2d(conv.data as Float32Array, [d, k])) as tf.Tensor2D),
          bias: tf.tensor1d(ckpt.get(`${prefix}.patch_embed.proj.bias`, [d]).data as Float32Array),
          inFeatures: k,
          outFeatures: d,
        } satisfies Linear,
        disposeLinear,
      );
      const pos_embed = keep(tf.tensor2d(ckpt.get(`${prefix}.pos_embed.weight`, [config.num_position_embeddings, d]).data as Float32Array, [config.num_position_embeddings, d]), (t) => t.dispose());
      const blocks: VisionBlock[] = [];
      for (let n = 0; n < config.depth; n++) {
        const b = `blocks.${n}`;
        blocks.push({
          norm1: ln(`${b}.norm1`, d),
          qkv: lin(`${b}.attn.qkv`, d, 3 * d),
          proj: lin(`${b}.attn.proj`, d, d),
          norm2: ln(`${b}.norm2`, d),
          linear_fc1: lin(`${b}.mlp.linear_fc1`, d, config.intermediate_size),
          linear_fc2: lin(`${b}.mlp.linear_fc2`, config.intermediate_size, d),
        });
      }
      const merged = d * config.spatial_merge_size ** 2;
      const merger = (name: string, postShuffleNorm: boolean): PatchMerger => ({
        ln_q: ln(`${name}.ln_q`, postShuffleNorm ? merged : d),
        postShuffleNorm,
        mlp0: lin(`${name}.mlp.0`, merged, merged),
        mlp2: lin(`${name}.mlp.2`, merged, config.out_hidden_size),
      });
      const finalMerger = merger('merger', false);
      const merger_list = config.deepstack_visual_indexes.map((_, i) => merger(`merger_list.${i}`, true));
      return new VisionEncoder(config, patch_embed, pos_embed, blocks, finalMerger, merger_list);
    } catch (err) {
      for (const dispose of owned) dispose();
      throw err;
    }
  }

  /**
   * Encodes the pixel rows of one or more images/videos.
   *
   * @param pixelValues [Σ t·h·w, in_channels·temporal_patch_size·patch_size²], rows in merge-block order.
   * @param grids the (t, h, w) grid of each image/video, in the order their rows appear.
   */
  encode(pixelValues: tf.Tensor2D, grids: readonly GridThw[], options: { keepIntermediates?: boolean; maxPatchesPerPass?: number } = {}): VisionEncoding {
    const cfg = this.config;
    const merge = cfg.spatial_merge_size;
    checkGrids(grids, merge);
    const patches = grids.reduce((a, [t, h, w]) => a + t * h * w, 0);
    if (pixelValues.rank !== 2 || pixelValues.shape[0] !== patches || pixelValues.shape[1] !== this.patchDim) {
      throw new Error(`vision encoder: pixel values must be [${patches} patches (from grid_thw), ${this.patchDim}], got [${pixelValues.shape}]`);
    }
    const side = Math.round(Math.sqrt(cfg.num_position_embeddings));
    const interp = visionPositionInterpolation(grids, side, merge);
    const ropePositions = patchRowsCols(grids, merge);
    const cuSeqlens = visionCuSeqlens(grids);
    const headDim = cfg.hidden_size / cfg.num_heads;

    // Attention never crosses a frame group, so everything — patch embedding, positions, blocks, mergers — runs over
    // passes of whole frame groups: the same result, with activations bounded by the pass rather than by a long video.
    const passes = segmentPasses(cuSeqlens, options.maxPatchesPerPass ?? MAX_PATCHES_PER_PASS);
    const keep = options.keepIntermediates ?? false;
    const perPass: { embeds: tf.Tensor2D; deepstack: tf.Tensor2D[]; last?: tf.Tensor2D; patchEmbeds?: tf.Tensor2D; posEmbeds?: tf.Tensor2D }[] = [];
    const join = (parts: tf.Tensor2D[]): tf.Tensor2D => (parts.length === 1 ? parts[0] : (tf.concat(parts, 0) as tf.Tensor2D));
    try {
      for (const pass of passes) {
        const rows = pass.cuSeqlens[pass.cuSeqlens.length - 1];
        const { patchEmbeds, posEmbeds, hidden0 } = tf.tidy(() => {
          const pixels = passes.length === 1 ? pixelValues : tf.slice(pixelValues, [pass.start, 0], [rows, -1]);
          const patchEmbeds = linear(pixels, this.patch_embed) as tf.Tensor2D;
          const taps = tf.tensor1d(interp.indices.subarray(4 * pass.start, 4 * (pass.start + rows)), 'int32');
          const weights = tf.tensor3d(interp.weights.subarray(4 * pass.start, 4 * (pass.start + rows)), [rows, 4, 1]);
          const posEmbeds = tf.sum(tf.mul(tf.reshape(tf.gather(this.pos_embed, taps), [rows, 4, cfg.hidden_size]), weights), 1) as tf.Tensor2D;
          return { patchEmbeds, posEmbeds, hidden0: tf.add(patchEmbeds, posEmbeds) as tf.Tensor2D };
        });
        if (!keep) {
          patchEmbeds.dispose();
          posEmbeds.dispose();
        }
        const { cos, sin } = visionRotaryCosSin(ropePositions.subarray(2 * pass.start, 2 * (pass.start + rows)), headDim, cfg.rope_theta);
        let hidden = hidden0;
        const deepstack: tf.Tensor2D[] = [];
        try {
          this.blocks.forEach((block, n) => {
            const next = this.block(hidden, block, cos, sin, pass.cuSeqlens);
            hidden.dispose();
            hidden = next;
            const tap = cfg.deepstack_visual_indexes.indexOf(n);
            if (tap >= 0) deepstack.push(this.merge(hidden, this.merger_list[tap]));
          });
          const embeds = this.merge(hidden, this.merger);
          if (!keep) hidden.dispose();
          perPass.push({ embeds, deepstack, ...(keep ? { last: hidden, patchEmbeds, posEmbeds } : {}) });
        } catch (err) {
          for (const t of [hidden, ...deepstack, ...(keep ? [patchEmbeds, posEmbeds] : [])]) t.dispose();
          throw err;
        } finally {
          cos.dispose();
          sin.dispose();
        }
      }
      const embeds = join(perPass.map((p) => p.embeds));
      const deepstack = cfg.deepstack_visual_indexes.map((_, i) => join(perPass.map((p) => p.deepstack[i])));
      const tokensPerItem = grids.map(([t, h, w]) => (t * h * w) / merge ** 2);
      if (!keep) return { embeds, deepstack, tokensPerItem };
      const intermediates = {
        patchEmbeds: join(perPass.map((p) => p.patchEmbeds!)),
        posEmbeds: join(perPass.map((p) => p.posEmbeds!)),
        lastHiddenState: join(perPass.map((p) => p.last!)),
        interpIndices: interp.indices,
        interpWeights: interp.weights,
        ropePositions,
        cuSeqlens,
      };
      return { embeds, deepstack, tokensPerItem, intermediates };
    } finally {
      // With several passes every per-pass piece was concatenated (or the call failed): free them all. A single
      // pass's pieces are the results themselves.
      if (passes.length > 1 || perPass.length < passes.length) {
        for (const p of perPass) for (const t of [p.embeds, ...p.deepstack, p.last, p.patchEmbeds, p.posEmbeds]) t?.dispose();
      }
    }
  }

  private block(x: tf.Tensor2D, b: VisionBlock, cos: tf.Tensor2D, sin: tf.Tensor2D, cuSeqlens: number[]): tf.Tensor2D {
    const { hidden_size: d, num_heads: heads } = this.config;
    const act = activation(this.config.hidden_act);
    return tf.tidy(() => {
      const n = x.shape[0];
      const qkv = linear(layerNorm(x, b.norm1), b.qkv) as tf.Tensor2D;
      const [q, k, v] = tf.split(qkv, [d, d, d], 1) as tf.Tensor2D[];
      const rot = (t: tf.Tensor2D) => tf.reshape(applyRotaryHalf(tf.reshape(t, [n, heads, d / heads]) as tf.Tensor3D, cos, sin), [n, d]) as tf.Tensor2D;
      const attn = segmentAttention(rot(q), rot(k), v, cuSeqlens, heads);
      const h = tf.add(x, linear(attn, b.proj));
      return tf.add(h, linear(act(linear(layerNorm(h, b.norm2), b.linear_fc1)), b.linear_fc2)) as tf.Tensor2D;
    });
  }

  /** Groups each run of merge² consecutive patch rows into one token: LayerNorm (per patch or per group), Linear, GELU, Linear. */
  private merge(x: tf.Tensor2D, m: PatchMerger): tf.Tensor2D {
    const width = this.config.hidden_size * this.config.spatial_merge_size ** 2;
    return tf.tidy(() => {
      const grouped = m.postShuffleNorm ? layerNorm(tf.reshape(x, [-1, width]), m.ln_q) : tf.reshape(layerNorm(x, m.ln_q), [-1, width]);
      return linear(gelu(linear(grouped, m.mlp0)), m.mlp2) as tf.Tensor2D;
    });
  }

  /** Frees every weight. */
  dispose(): void {
    disposeLinear(this.patch_embed);
    this.pos_embed.dispose();
    for (const b of this.blocks) {
      disposeLayerNorm(b.norm1);
      disposeLayerNorm(b.norm2);
      for (const l of [b.qkv, b.proj, b.linear_fc1, b.linear_fc2]) disposeLinear(l);
    }
    for (const m of [this.merger, ...this.merger_list]) {
      disposeLayerNorm(m.ln_q);
      disposeLinear(m.mlp0);
      disposeLinear(m.mlp2);
    }
  }
}
