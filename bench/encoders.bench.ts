/**
 * Encoder throughput at the released dimensions with random weights, on the active backend:
 * - audio encoder (AuT, spec 2.4: d_model 1280, 20 heads, FFN 5120, conv 480, output 2048, 32 layers): seconds of
 *   audio encoded per second, for a 10 s clip;
 * - vision encoder (spec 2.5: hidden 1152, 16 heads, MLP 4304, patch 16, 27 blocks, 3 DeepStack mergers): images per
 *   second for one 448×448 image (784 patches, 196 tokens).
 *
 * The full towers are 2.6 GB and 2.1 GB of float32, more than a wasm heap comfortably holds beside activations, so each
 * part loads its stem, its head and a few real-size layers (MEASURED_LAYERS), times every stage on its own, and
 * extrapolates linearly to the full depth (every layer does the same work on the same tokens).
 * Baseline measured in the same run: the backend's dense 1024³ matmul rate, against which each encoder's effective
 * GFLOP/s is reported. Reference anchor (not re-measured here): PyTorch + OpenBLAS on this machine type encodes 10 s
 * of audio in 1.48 s on 2 threads, 1.98 s on 1 (notes/pytorch-cpu-anchors.md, item 6).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Checkpoint, initBackend, writeShardedCheckpoint, type TensorToWrite } from '@omniflow/runtime-gpu';
import { AudioEncoder, VisionEncoder, audioEncoderConfigSchema, audioOutputLength, convStackLength, visionEncoderConfigSchema } from '@omniflow/nodes';
import { medianMs } from './memory.js';

const MEASURED_LAYERS = 2;
const AUDIO_SECONDS = 10;
const IMAGE_SIDE = 448;

/** Uniform(−1/√fanIn, 1/√fanIn) weights from a small xorshift generator (deterministic, fast, generated on write). */
function randomTensor(shape: number[], fanIn: number, seed: number): TensorToWrite {
  return {
    dtype: 'F32',
    shape,
    data: () => {
      const n = shape.reduce((a, b) => a * b, 1);
      const out = new Float32Array(n);
      const scale = 1 / Math.sqrt(fanIn);
      let s = seed >>> 0 || 1;
      for (let i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        out[i] = ((s >>> 0) / 4294967296 - 0.5) * 2 * scale;
      }
      return out;
    },
  };
}

/** Collects random checkpoint tensors under one prefix. */
function tensorBuilder(prefix: string) {
  const tensors: Record<string, TensorToWrite> = {};
  let seed = 1;
  return {
    tensors,
    raw: (name: string, shape: number[], fanIn: number) => (tensors[`${prefix}.${name}`] = randomTensor(shape, fanIn, seed++)),
    linear(name: string, out: number, inp: number, bias = true) {
      tensors[`${prefix}.${name}.weight`] = randomTensor([out, inp], inp, seed++);
      if (bias) tensors[`${prefix}.${name}.bias`] = randomTensor([out], inp, seed++);
    },
    norm(name: string, dim: number) {
      tensors[`${prefix}.${name}.weight`] = { dtype: 'F32', shape: [dim], data: () => new Float32Array(dim).fill(1) };
      tensors[`${prefix}.${name}.bias`] = { dtype: 'F32', shape: [dim], data: () => new Float32Array(dim) };
    },
  };
}

/** Median wall time of fn, waiting for the backend to finish the result as a consumer would, then freeing it. */
const timed = (fn: () => tf.Tensor | tf.Tensor[]) =>
  medianMs(async () => {
    const out = [fn()].flat();
    await Promise.all(out.map((t) => t.data()));
    for (const t of out) t.dispose();
  }, 3, 1);

/** Writes the tensors to a fresh temporary checkpoint, runs fn on it, then removes it. */
async function withCheckpoint<T>(tensors: Record<string, TensorToWrite>, fn: (ckpt: Checkpoint) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'omniflow-encoders-bench-'));
  try {
    writeShardedCheckpoint(dir, tensors, { maxShardBytes: 4 * 2 ** 30 });
    const ckpt = Checkpoint.open(dir);
    try {
      return await fn(ckpt);
    } finally {
      ckpt.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function audio(): Promise<Record<string, unknown>> {
  const config = audioEncoderConfigSchema.parse({
    num_mel_bins: 128, d_model: 1280, encoder_layers: 32, encoder_attention_heads: 20, encoder_ffn_dim: 5120,
    n_window: 50, n_window_infer: 800, conv_chunksize: 500, downsample_hidden_size: 480, output_dim: 2048,
  });
  const d = config.d_model, c = config.downsample_hidden_size, ffn = config.encoder_ffn_dim;
  const b = tensorBuilder('thinker.audio_tower');
  b.raw('conv2d1.weight', [c, 1, 3, 3], 9);
  b.raw('conv2d1.bias', [c], 9);
  for (const name of ['conv2d2', 'conv2d3']) {
    b.raw(`${name}.weight`, [c, c, 3, 3], 9 * c);
    b.raw(`${name}.bias`, [c], 9 * c);
  }
  b.linear('conv_out', d, c * convStackLength(config.num_mel_bins), false);
  for (let n = 0; n < MEASURED_LAYERS; n++) {
    for (const k of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) b.linear(`layers.${n}.self_attn.${k}`, d, d);
    b.norm(`layers.${n}.self_attn_layer_norm`, d);
    b.norm(`layers.${n}.final_layer_norm`, d);
    b.linear(`layers.${n}.fc1`, ffn, d);
    b.linear(`layers.${n}.fc2`, d, ffn);
  }
  b.norm('ln_post', d);
  b.linear('proj1', d, d);
  b.linear('proj2', config.output_dim, d);

  return withCheckpoint(b.tensors, async (ckpt) => {
    const frames = AUDIO_SECONDS * 100;
    const features = tf.randomNormal([config.num_mel_bins, frames], 0, 1, 'float32', 7) as tf.Tensor2D;
    const enc = AudioEncoder.load(ckpt, { ...config, encoder_layers: MEASURED_LAYERS });
    const head = AudioEncoder.load(ckpt, { ...config, encoder_layers: 0 });
    const { convEmbeds, plan } = enc.embed(features, [frames]);
    // Stage by stage, so the (heavier) conv stack's noise does not swamp the per-layer figure.
    const convMs = await timed(() => enc.embed(features, [frames]).convEmbeds);
    const headMs = await timed(() => head.transform(convEmbeds, plan));
    const withLayersMs = await timed(() => enc.transform(convEmbeds, plan));
    for (const t of [convEmbeds, features]) t.dispose();
    enc.dispose();
    head.dispose();

    const perLayerMs = (withLayersMs - headMs) / MEASURED_LAYERS;
    const fullMs = convMs + headMs + config.encoder_layers * perLayerMs;
    const tokens = audioOutputLength(frames, config.n_window);
    // FLOPs: per layer and token, q/k/v/out (4·d²) and fc1/fc2 (2·d·ffn) multiply-adds, plus attention inside windows
    // of ≤ 104 tokens; the conv stack per 100-frame chunk (conv2d2/3 dominate), conv_out and the head.
    const window = 13 * Math.floor(config.n_window_infer / (2 * config.n_window));
    const layerFlops = tokens * 2 * (4 * d * d + 2 * d * ffn) + 2 * 2 * tokens * Math.min(window, tokens) * d;
    const chunks = Math.ceil(frames / 100);
    const stemFlops = chunks * 2 * 9 * (c * 64 * 50 + c * c * (32 * 25 + 16 * 13)) + tokens * 2 * c * 16 * d + tokens * 2 * (d * d + d * config.output_dim);
    const fullFlops = stemFlops + config.encoder_layers * layerFlops;
    return {
      config: { d_model: d, heads: config.encoder_attention_heads, ffn, conv: c, output_dim: config.output_dim, layers: config.encoder_layers },
      audioSeconds: AUDIO_SECONDS,
      audioTokens: tokens,
      measuredLayers: MEASURED_LAYERS,
      convStackMs: +convMs.toFixed(1),
      headMs: +headMs.toFixed(1),
      perLayerMs: +perLayerMs.toFixed(1),
      estimatedFullMs: +fullMs.toFixed(0),
      audioSecondsPerSecond: +(AUDIO_SECONDS / (fullMs / 1000)).toFixed(2),
      realTimeFactor: +(fullMs / 1000 / AUDIO_SECONDS).toFixed(3),
      effectiveGflops: +(fullFlops / (fullMs / 1000) / 1e9).toFixed(1),
      reference: { pytorchOpenblas2ThreadsMs: 1480, pytorchOpenblas1ThreadMs: 1980, source: 'notes/pytorch-cpu-anchors.md item 6 (not re-measured in this run)' },
    };
  });
}

async function vision(): Promise<Record<string, unknown>> {
  const config = visionEncoderConfigSchema.parse({
    depth: 27, hidden_size: 1152, num_heads: 16, intermediate_size: 4304, patch_size: 16, temporal_patch_size: 2,
    spatial_merge_size: 2, num_position_embeddings: 2304, deepstack_visual_indexes: [8, 16, 24], out_hidden_size: 2048,
  });
  const d = config.hidden_size, inter = config.intermediate_size, merged = 4 * d;
  const k = 3 * config.temporal_patch_size * config.patch_size ** 2;
  const b = tensorBuilder('thinker.visual');
  b.raw('patch_embed.proj.weight', [d, 3, config.temporal_patch_size, config.patch_size, config.patch_size], k);
  b.raw('patch_embed.proj.bias', [d], k);
  b.raw('pos_embed.weight', [config.num_position_embeddings, d], d);
  for (let n = 0; n < MEASURED_LAYERS; n++) {
    b.norm(`blocks.${n}.norm1`, d);
    b.norm(`blocks.${n}.norm2`, d);
    b.linear(`blocks.${n}.attn.qkv`, 3 * d, d);
    b.linear(`blocks.${n}.attn.proj`, d, d);
    b.linear(`blocks.${n}.mlp.linear_fc1`, inter, d);
    b.linear(`blocks.${n}.mlp.linear_fc2`, d, inter);
  }
  for (const [name, normDim] of [['merger', d], ['merger_list.0', merged]] as const) {
    b.norm(`${name}.ln_q`, normDim);
    b.linear(`${name}.mlp.0`, merged, merged);
    b.linear(`${name}.mlp.2`, config.out_hidden_size, merged);
  }

  return withCheckpoint(b.tensors, async (ckpt) => {
    const side = IMAGE_SIDE / config.patch_size;
    const grid = [1, side, side] as const;
    const patches = side * side;
    const pixels = tf.randomUniform([patches, k], -1, 1, 'float32', 11) as tf.Tensor2D;
    const stem = VisionEncoder.load(ckpt, { ...config, depth: MEASURED_LAYERS, deepstack_visual_indexes: [] });
    const tapped = VisionEncoder.load(ckpt, { ...config, depth: MEASURED_LAYERS, deepstack_visual_indexes: [0] });
    // The encoder always runs its blocks; 1 and MEASURED_LAYERS blocks separate the per-block cost from the rest.
    const one = VisionEncoder.load(ckpt, { ...config, depth: 1, deepstack_visual_indexes: [] });
    const oneMs = await timed(() => one.encode(pixels, [grid]).embeds);
    const blocksMs = await timed(() => stem.encode(pixels, [grid]).embeds);
    const tappedMs = await timed(() => {
      const out = tapped.encode(pixels, [grid]);
      return [out.embeds, ...out.deepstack];
    });
    for (const e of [one, stem, tapped]) e.dispose();
    pixels.dispose();

    const perBlockMs = (blocksMs - oneMs) / (MEASURED_LAYERS - 1);
    const mergerMs = tappedMs - blocksMs;
    const restMs = oneMs - perBlockMs; // patch embed, positions, final merger
    const fullMs = restMs + config.depth * perBlockMs + config.deepstack_visual_indexes.length * mergerMs;
    const tokens = patches / 4;
    const blockFlops = patches * 2 * (3 * d * d + d * d + 2 * d * inter) + 2 * 2 * patches * patches * d;
    const mergerFlops = tokens * 2 * (merged * merged + merged * config.out_hidden_size);
    const fullFlops = patches * 2 * k * d + config.depth * blockFlops + (1 + config.deepstack_visual_indexes.length) * mergerFlops;
    return {
      config: { hidden: d, heads: config.num_heads, mlp: inter, patch: config.patch_size, depth: config.depth, deepstack: config.deepstack_visual_indexes },
      image: `${IMAGE_SIDE}x${IMAGE_SIDE}`,
      patches,
      visionTokens: tokens,
      measuredBlocks: MEASURED_LAYERS,
      stemAndMergerMs: +restMs.toFixed(1),
      perBlockMs: +perBlockMs.toFixed(1),
      perDeepstackMergerMs: +mergerMs.toFixed(1),
      estimatedFullMs: +fullMs.toFixed(0),
      imagesPerSecond: +(1000 / fullMs).toFixed(3),
      effectiveGflops: +(fullFlops / (fullMs / 1000) / 1e9).toFixed(1),
    };
  });
}

export async function run(): Promise<object> {
  const backend = await initBackend();
  const a = tf.randomNormal([1024, 1024]) as tf.Tensor2D;
  const b = tf.randomNormal([1024, 1024]) as tf.Tensor2D;
  const matMulMs = await medianMs(async () => {
    const y = tf.matMul(a, b);
    await y.data();
    y.dispose();
  }, 7, 2);
  a.dispose();
  b.dispose();
  return {
    backend: backend.name,
    baseline: { matMul1024Gflops: +((2 * 1024 ** 3) / (matMulMs / 1000) / 1e9).toFixed(1) },
    audioEncoder: await audio(),
    visionEncoder: await vision(),
    note: `full-depth times extrapolated from ${MEASURED_LAYERS} measured real-size layers per encoder (random weights); the CPU may be shared, compare effectiveGflops with the baseline of the same run`,
  };
}
