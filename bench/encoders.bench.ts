/**
 * Audio encoder (AuT) throughput at the released dimensions (spec 2.4: d_model 1280, 20 heads, FFN 5120, conv 480,
 * output 2048) with random weights, on the active backend: seconds of audio encoded per second.
 *
 * The 32-layer tower is 2.6 GB of float32, more than a wasm heap comfortably holds beside its activations, so the
 * suite loads the conv stack, the head and MEASURED_LAYERS real-size layers, times the conv stage, the head alone and the
 * head after MEASURED_LAYERS layers, and extrapolates linearly to 32 (every layer does the same work on the same token count).
 * Baseline measured in the same run: the backend's dense matmul rate, against which the encoder's effective
 * GFLOP/s is reported. Reference anchor (not re-measured here): PyTorch + OpenBLAS on this machine type encodes 10 s
 * of audio in 1.48 s on 2 threads, 1.98 s on 1 (notes/pytorch-cpu-anchors.md, item 6).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Checkpoint, initBackend, writeShardedCheckpoint, type TensorToWrite } from '@omniflow/runtime-gpu';
import { AudioEncoder, audioOutputLength, audioEncoderConfigSchema, convStackLength } from '@omniflow/nodes';
import { medianMs } from './memory.js';

const MEASURED_LAYERS = 2;
const AUDIO_SECONDS = 10;

/** Uniform(−1/√fanIn, 1/√fanIn) weights from a small xorshift generator (deterministic, fast). */
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

export async function run(): Promise<object> {
  const backend = await initBackend();
  const config = audioEncoderConfigSchema.parse({
    num_mel_bins: 128, d_model: 1280, encoder_layers: 32, encoder_attention_heads: 20, encoder_ffn_dim: 5120,
    n_window: 50, n_window_infer: 800, conv_chunksize: 500, downsample_hidden_size: 480, output_dim: 2048,
  });
  const d = config.d_model, c = config.downsample_hidden_size, ffn = config.encoder_ffn_dim;
  const p = 'thinker.audio_tower';
  let seed = 1;
  const tensors: Record<string, TensorToWrite> = {};
  const lin = (name: string, o: number, i: number, bias = true) => {
    tensors[`${p}.${name}.weight`] = randomTensor([o, i], i, seed++);
    if (bias) tensors[`${p}.${name}.bias`] = randomTensor([o], i, seed++);
  };
  const norm = (name: string) => {
    tensors[`${p}.${name}.weight`] = { dtype: 'F32', shape: [d], data: () => new Float32Array(d).fill(1) };
    tensors[`${p}.${name}.bias`] = { dtype: 'F32', shape: [d], data: () => new Float32Array(d) };
  };
  tensors[`${p}.conv2d1.weight`] = randomTensor([c, 1, 3, 3], 9, seed++);
  tensors[`${p}.conv2d1.bias`] = randomTensor([c], 9, seed++);
  for (const name of ['conv2d2', 'conv2d3']) {
    tensors[`${p}.${name}.weight`] = randomTensor([c, c, 3, 3], 9 * c, seed++);
    tensors[`${p}.${name}.bias`] = randomTensor([c], 9 * c, seed++);
  }
  lin('conv_out', d, c * convStackLength(config.num_mel_bins), false);
  for (let n = 0; n < MEASURED_LAYERS; n++) {
    for (const k of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) lin(`layers.${n}.self_attn.${k}`, d, d);
    norm(`layers.${n}.self_attn_layer_norm`);
    norm(`layers.${n}.final_layer_norm`);
    lin(`layers.${n}.fc1`, ffn, d);
    lin(`layers.${n}.fc2`, d, ffn);
  }
  norm('ln_post');
  lin('proj1', d, d);
  lin('proj2', config.output_dim, d);

  const dir = mkdtempSync(join(tmpdir(), 'omniflow-aut-bench-'));
  try {
    writeShardedCheckpoint(dir, tensors, { maxShardBytes: 4 * 2 ** 30 });
    const ckpt = Checkpoint.open(dir);
    const frames = AUDIO_SECONDS * 100;
    const features = tf.randomNormal([config.num_mel_bins, frames], 0, 1, 'float32', 7) as tf.Tensor2D;
    // Stage by stage, so the (heavier) conv stack's noise does not swamp the per-layer figure.
    const enc = AudioEncoder.load(ckpt, { ...config, encoder_layers: MEASURED_LAYERS });
    const head = AudioEncoder.load(ckpt, { ...config, encoder_layers: 0 });
    const { convEmbeds, plan } = enc.embed(features, [frames]);
    const timed = (fn: () => tf.Tensor) =>
      medianMs(async () => {
        const y = fn();
        await y.data(); // wait for the backend, as a consumer would
        y.dispose();
      }, 3, 1);
    const convMs = await timed(() => {
      const e = enc.embed(features, [frames]);
      return e.convEmbeds;
    });
    const headMs = await timed(() => head.transform(convEmbeds, plan));
    const withLayersMs = await timed(() => enc.transform(convEmbeds, plan));
    for (const t of [convEmbeds, features]) t.dispose();
    enc.dispose();
    head.dispose();
    ckpt.close();
    const convAndHeadMs = convMs + headMs;

    const perLayerMs = (withLayersMs - headMs) / MEASURED_LAYERS;
    const fullMs = convAndHeadMs + config.encoder_layers * perLayerMs;
    const tokens = audioOutputLength(frames, config.n_window);
    // FLOPs: per layer and token, q/k/v/out (4·d²) and fc1/fc2 (2·d·ffn) multiply-adds, plus attention over a window
    // of ≤ 104 tokens; the conv stack per 100-frame chunk (conv2d2/3 dominate) and conv_out.
    const window = 13 * Math.floor(config.n_window_infer / (2 * config.n_window));
    const layerFlops = tokens * 2 * (4 * d * d + 2 * d * ffn) + 2 * 2 * tokens * Math.min(window, tokens) * d;
    const chunks = Math.ceil(frames / 100);
    const convFlops = chunks * 2 * 9 * (c * 64 * 50 + c * c * (32 * 25 + 16 * 13)) + tokens * 2 * c * 16 * d + tokens * 2 * (d * d + d * config.output_dim);
    const fullFlops = convFlops + config.encoder_layers * layerFlops;

    const a = tf.randomNormal([1024, 1024]) as tf.Tensor2D;
    const b = tf.randomNormal([1024, 1024]) as tf.Tensor2D;
    const matMulMs = await medianMs(async () => {
      const y = tf.matMul(a, b);
      await y.data();
      y.dispose();
    }, 7, 2);
    a.dispose();
    b.dispose();
    const matMulGflops = (2 * 1024 ** 3) / (matMulMs / 1000) / 1e9;

    return {
      backend: backend.name,
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
      baseline: { matMul1024Gflops: +matMulGflops.toFixed(1) },
      reference: { pytorchOpenblas2ThreadsMs: 1480, pytorchOpenblas1ThreadMs: 1980, source: 'notes/pytorch-cpu-anchors.md item 6 (not re-measured in this run)' },
      note: `full 32-layer time extrapolated from ${MEASURED_LAYERS} measured real-size layers (random weights)`,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
