import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import { conv2d, disposeConv2d, loadConv2d, type Conv2d } from '../../layers/conv.js';
import { segmentAttention, segmentPasses } from '../../layers/encoder-attention.js';
import { gelu } from '../../layers/gelu.js';
import { disposeLayerNorm, layerNorm, loadLayerNorm, type LayerNorm } from '../../layers/layer-norm.js';
import { loadFusedLinear } from '../../layers/fused-linear.js';
import { disposeLinear, linear, loadLinear, type Linear } from '../../layers/linear.js';
import type { AudioEncoderConfig } from './config.js';

/*
 * The thinker's audio encoder, "AuT" (`thinker.audio_tower`, spec 3.2): log-mel chunks of 2·n_window frames → three
 * stride-2 Conv2d + GELU → conv_out → per-chunk sinusoidal positions → windowed bidirectional transformer → ln_post →
 * proj1 → GELU → proj2. Weight names follow the checkpoint, so `layers[3].fc1` is `thinker.audio_tower.layers.3.fc1`.
 */

/** Python's floor division (rounds toward −∞): the output-length formula relies on (−1) // 2 = −1. */
function floorDiv(a: number, b: number): number {
  return Math.floor(a / b);
}

/** Python's modulo (sign of the divisor). */
function pyMod(a: number, b: number): number {
  return ((a % b) + b) % b;
}

/** Length of one axis after the three kernel-3, stride-2, padding-1 convolutions: ceil(n / 8) for n > 0. */
export function convStackLength(n: number): number {
  let len = n;
  for (let i = 0; i < 3; i++) len = floorDiv(len - 1, 2) + 1;
  return len;
}

/**
 * Number of audio tokens the encoder emits for `frames` mel frames — the reference's
 * `_get_feat_extract_output_lengths`: 13 per full chunk of 2·n_window frames (13 is hard-coded there) plus the
 * conv-stack length of the remainder. Python floor division is essential: for a remainder of 0 the formula evaluates
 * ((−1)//2 + 1 − 1)//2 + 1 = 0, where truncating division would give 1.
 *
 * ```ts
 * audioOutputLength(100); // 13
 * audioOutputLength(150); // 20
 * audioOutputLength(3000); // 390 (30 s)
 * ```
 */
export function audioOutputLength(frames: number, nWindow = 50): number {
  const chunk = nWindow * 2;
  const leave = pyMod(frames, chunk);
  const feat = floorDiv(leave - 1, 2) + 1;
  return floorDiv(floorDiv(feat - 1, 2) + 1 - 1, 2) + 1 + floorDiv(frames, chunk) * 13;
}

/** Everything about a batch of audios that depends only on their lengths: chunking, valid rows, attention windows. */
export interface AudioChunkPlan {
  /** Frames per chunk, audio by audio (`chunk_lengths`): 2·n_window except a shorter tail. */
  readonly chunkLengths: number[];
  /** Valid conv-stack outputs per chunk (`chunk_lengths_after_cnn`). */
  readonly chunkLengthsAfterCnn: number[];
  /** Chunk count per audio. */
  readonly chunksPerAudio: number[];
  /** Longest chunk: every chunk is zero-padded to it before the conv stack. */
  readonly maxChunkLength: number;
  /** Conv-stack output length of a padded chunk (`max_len_after_cnn`). */
  readonly maxLenAfterCnn: number;
  /** Flat indices of the valid rows in the [chunks · maxLenAfterCnn] conv output grid (`valid_indices`). */
  readonly validIndices: Int32Array;
  /** Attention-window boundaries over the packed valid rows (`cu_seqlens`). */
  readonly cuSeqlens: number[];
  /** Audio tokens per audio (`output_lengths`). */
  readonly outputLengths: number[];
}

/**
 * Plans the chunking of audios of `featureLens` mel frames exactly as the reference does (`chunk_and_pad_features`,
 * `get_valid_indices`, `get_audio_cu_seqlens`). Pure arithmetic: no tensors.
 *
 * ```ts
 * const plan = planAudioChunks([150], { n_window: 50, n_window_infer: 800 });
 * plan.chunkLengths; // [100, 50]
 * plan.cuSeqlens; // [0, 20]
 * ```
 */
export function planAudioChunks(
  featureLens: readonly number[],
  cfg: Pick<AudioEncoderConfig, 'n_window' | 'n_window_infer'>,
  options: { padChunksTo?: number } = {},
): AudioChunkPlan {
  const chunk = cfg.n_window * 2;
  const padTo = options.padChunksTo ?? 0;
  if (!Number.isInteger(padTo) || padTo < 0 || padTo > chunk) throw new Error(`audio encoder: padChunksTo ${padTo} must be an integer in [0, ${chunk}]`);
  if (featureLens.length === 0) throw new Error('audio encoder: feature_lens is empty (no audio to encode)');
  featureLens.forEach((len, i) => {
    if (!Number.isInteger(len) || len <= 0) throw new Error(`audio encoder: feature_lens[${i}] = ${len}; expected a positive number of mel frames`);
  });
  // The reference counts 13 tokens per full chunk whatever n_window is; that is only consistent with its own conv
  // stack when a full chunk really yields 13 rows (n_window 49..52). Anything else would index past the conv output.
  if (convStackLength(chunk) !== 13) {
    throw new Error(`audio encoder: n_window ${cfg.n_window} gives ${convStackLength(chunk)} rows per full chunk, but the reference's output-length formula hard-codes 13`);
  }
  const chunkLengths: number[] = [];
  const chunksPerAudio: number[] = [];
  for (const len of featureLens) {
    const n = Math.ceil(len / chunk);
    chunksPerAudio.push(n);
    for (let c = 0; c < n - 1; c++) chunkLengths.push(chunk);
    chunkLengths.push(len % chunk === 0 ? chunk : len % chunk);
  }
  const chunkLengthsAfterCnn = chunkLengths.map((l) => audioOutputLength(l, cfg.n_window));
  // padChunksTo stands for chunks of the same audio encoded earlier (AudioEncoderStream): the reference pads to the
  // longest chunk of the whole batch, which is a full one as soon as the audio has one.
  const maxChunkLength = Math.max(...chunkLengths, padTo);
  const maxLenAfterCnn = Math.max(...chunkLengthsAfterCnn, padTo > 0 ? audioOutputLength(padTo, cfg.n_window) : 0);
  const total = chunkLengthsAfterCnn.reduce((a, b) => a + b, 0);
  const validIndices = new Int32Array(total);
  let k = 0;
  chunkLengthsAfterCnn.forEach((valid, c) => {
    for (let j = 0; j < valid; j++) validIndices[k++] = c * maxLenAfterCnn + j;
  });
  const outputLengths = featureLens.map((l) => audioOutputLength(l, cfg.n_window));
  const window = maxLenAfterCnn * floorDiv(cfg.n_window_infer, chunk);
  if (window <= 0) throw new Error(`audio encoder: n_window_infer ${cfg.n_window_infer} is shorter than one chunk (${chunk} frames)`);
  const cuSeqlens = [0];
  for (const len of outputLengths) {
    for (let w = 0; w < floorDiv(len, window); w++) cuSeqlens.push(cuSeqlens[cuSeqlens.length - 1] + window);
    if (len % window !== 0) cuSeqlens.push(cuSeqlens[cuSeqlens.length - 1] + (len % window));
  }
  return { chunkLengths, chunkLengthsAfterCnn, chunksPerAudio, maxChunkLength, maxLenAfterCnn, validIndices, cuSeqlens, outputLengths };
}

/**
 * Rows 0..length−1 of the reference's `SinusoidsPositionEmbedding`, in float32 as it computes them: channel k < d/2
 * is sin(t·inv_k), channel d/2 + k is cos(t·inv_k), inv_k = exp(−k·ln(10000)/(d/2 − 1)). Not a checkpoint weight.
 */
export function sinusoidPositions(length: number, channels: number, maxTimescale = 10000): Float32Array {
  if (channels % 2 !== 0) throw new Error(`sinusoid positions need an even channel count, got ${channels}`);
  const half = channels / 2;
  const increment = Math.log(maxTimescale) / (half - 1);
  const inv = new Float32Array(half);
  for (let k = 0; k < half; k++) inv[k] = Math.exp(Math.fround(-increment * k));
  const out = new Float32Array(length * channels);
  for (let t = 0; t < length; t++) {
    for (let k = 0; k < half; k++) {
      const a = Math.fround(t * inv[k]);
      out[t * channels + k] = Math.sin(a);
      out[t * channels + half + k] = Math.cos(a);
    }
  }
  return out;
}

/** One pre-LN encoder layer (`layers.N`). q/k/v are fused into one [d, 3d] matmul at load. */
interface AudioEncoderLayer {
  readonly self_attn_layer_norm: LayerNorm;
  readonly qkv: Linear;
  readonly out_proj: Linear;
  readonly final_layer_norm: LayerNorm;
  readonly fc1: Linear;
  readonly fc2: Linear;
}

/** What `AudioEncoder.encode` returns. The caller owns the tensors. */
export interface AudioEncoding {
  /** [Σ output_lengths, output_dim]: the rows that replace the `<|audio_pad|>` tokens, audio by audio. */
  readonly embeds: tf.Tensor2D;
  /** Audio tokens per audio. */
  readonly outputLengths: number[];
  /** The chunk plan the encoding used. */
  readonly plan: AudioChunkPlan;
  /** [Σ output_lengths, d_model]: input of encoder layer 0 (conv stack + positions), only when asked for. */
  readonly convEmbeds?: tf.Tensor2D;
}

// Cap on one conv group's first activation (floats). The reference batches conv_chunksize (500) chunks at a time; at
// the released sizes that is 3 GB for conv2d1's output alone, more than a wasm heap can hold. Grouping never changes
// the result, only peak memory.
const CONV_GROUP_FLOATS = 64 * 1024 * 1024;

// Tokens per pass of the layer stack: at the released sizes the FFN activation of a pass is 8192 × 5120 floats
// (168 MB), whatever the length of the audio.
const MAX_TOKENS_PER_PASS = 8192;

/**
 * The Qwen3-Omni audio encoder with its weights on the active tfjs backend.
 *
 * ```ts
 * const enc = AudioEncoder.load(ckpt, config.thinker_config.audio_config);
 * const { embeds, outputLengths } = enc.encode(melFeatures, [150]); // melFeatures [128, 150] -> embeds [20, output_dim]
 * enc.dispose();
 * ```
 */
export class AudioEncoder {
  private constructor(
    readonly config: AudioEncoderConfig,
    private readonly conv2d1: Conv2d,
    private readonly conv2d2: Conv2d,
    private readonly conv2d3: Conv2d,
    private readonly conv_out: Linear,
    private readonly layers: AudioEncoderLayer[],
    private readonly ln_post: LayerNorm,
    private readonly proj1: Linear,
    private readonly proj2: Linear,
  ) {}

  /**
   * Loads `${prefix}.*` (default `thinker.audio_tower`), checking every tensor's shape against the config. A missing
   * or mis-shaped tensor throws with its name; tensors already loaded are freed.
   */
  static load(ckpt: Checkpoint, config: AudioEncoderConfig, prefix = 'thinker.audio_tower'): AudioEncoder {
    const d = config.d_model;
    const c = config.downsample_hidden_size;
    if (d % config.encoder_attention_heads !== 0) {
      throw new Error(`audio_config: d_model ${d} is not divisible by encoder_attention_heads ${config.encoder_attention_heads}`);
    }
    const owned: (() => void)[] = [];
    const keep = <T>(value: T, dispose: (v: T) => void): T => {
      owned.push(() => dispose(value));
      return value;
    };
    try {
      const conv = (name: string, inChannels: number) =>
        keep(loadConv2d(ckpt, `${prefix}.${name}`, { inChannels, outChannels: c, kernel: 3, stride: 2, padding: 1 }), disposeConv2d);
      const lin = (name: string, i: number, o: number, bias = true) => keep(loadLinear(ckpt, `${prefix}.${name}`, i, o, bias), disposeLinear);
      const ln = (name: string) => keep(loadLayerNorm(ckpt, `${prefix}.${name}`, d, 1e-5), disposeLayerNorm);
      const conv2d1 = conv('conv2d1', 1);
      const conv2d2 = conv('conv2d2', c);
      const conv2d3 = conv('conv2d3', c);
      const conv_out = lin('conv_out', c * convStackLength(config.num_mel_bins), d, false);
      const layers: AudioEncoderLayer[] = [];
      for (let n = 0; n < config.encoder_layers; n++) {
        const p = `layers.${n}`;
        layers.push({
          self_attn_layer_norm: ln(`${p}.self_attn_layer_norm`),
          qkv: keep(loadFusedLinear(ckpt, ['q_proj', 'k_proj', 'v_proj'].map((k) => `${prefix}.${p}.self_attn.${k}`), d, [d, d, d], true), disposeLinear),
          out_proj: lin(`${p}.self_attn.out_proj`, d, d),
          final_layer_norm: ln(`${p}.final_layer_norm`),
          fc1: lin(`${p}.fc1`, d, config.encoder_ffn_dim),
          fc2: lin(`${p}.fc2`, config.encoder_ffn_dim, d),
        });
      }
      const ln_post = ln('ln_post');
      const proj1 = lin('proj1', d, d);
      const proj2 = lin('proj2', d, config.output_dim);
      return new AudioEncoder(config, conv2d1, conv2d2, conv2d3, conv_out, layers, ln_post, proj1, proj2);
    } catch (err) {
      for (const dispose of owned) dispose();
      throw err;
    }
  }

  /**
   * Encodes the log-mel features of one or more audios concatenated along time.
   *
   * @param features [num_mel_bins, Σ featureLens] (HF's `input_features` with padding stripped).
   * @param featureLens mel frames of each audio, in order.
   */
  encode(features: tf.Tensor2D, featureLens: readonly number[], options: { keepConvEmbeds?: boolean; padChunksTo?: number } = {}): AudioEncoding {
    const { convEmbeds, plan } = this.embed(features, featureLens, options);
    try {
      const embeds = this.transform(convEmbeds, plan);
      return { embeds, outputLengths: plan.outputLengths, plan, convEmbeds: options.keepConvEmbeds ? convEmbeds : undefined };
    } finally {
      if (!options.keepConvEmbeds) convEmbeds.dispose();
    }
  }

  /**
   * First stage of `encode`: chunking, the conv stack, conv_out and positions. Returns the input of encoder layer 0
   * ([Σ output_lengths, d_model], caller-owned) and the chunk plan. `padChunksTo` pads every chunk to at least that
   * many frames, as if a longer chunk were in the batch (see `planAudioChunks`).
   */
  embed(features: tf.Tensor2D, featureLens: readonly number[], options: { padChunksTo?: number } = {}): { convEmbeds: tf.Tensor2D; plan: AudioChunkPlan } {
    const cfg = this.config;
    if (features.rank !== 2 || features.shape[0] !== cfg.num_mel_bins) {
      throw new Error(`audio encoder: features must be [num_mel_bins=${cfg.num_mel_bins}, frames], got [${features.shape}]`);
    }
    const plan = planAudioChunks(featureLens, cfg, options);
    const totalFrames = featureLens.reduce((a, b) => a + b, 0);
    if (totalFrames !== features.shape[1]) {
      throw new Error(`audio encoder: feature_lens sum to ${totalFrames} frames but features hold ${features.shape[1]}`);
    }
    return { convEmbeds: this.convEmbeds(features, featureLens, plan), plan };
  }

  /**
   * Second stage of `encode`: the windowed encoder layers, ln_post, proj1, GELU, proj2 over the output of `embed`
   * (not consumed). Returns [Σ output_lengths, output_dim], caller-owned.
   *
   * Attention never crosses a window, so the whole stack runs over passes of at most `maxTokensPerPass` tokens (whole
   * windows): the result is the same, and a long recording's activations stay bounded by the pass, not the audio.
   */
  transform(convEmbeds: tf.Tensor2D, plan: AudioChunkPlan, maxTokensPerPass = MAX_TOKENS_PER_PASS): tf.Tensor2D {
    const passes = segmentPasses(plan.cuSeqlens, maxTokensPerPass);
    const outputs: tf.Tensor2D[] = [];
    try {
      for (const pass of passes) {
        const rows = pass.cuSeqlens[pass.cuSeqlens.length - 1];
        const input = passes.length === 1 ? convEmbeds : (tf.slice(convEmbeds, [pass.start, 0], [rows, -1]) as tf.Tensor2D);
        let hidden = input;
        try {
          for (const layer of this.layers) {
            const next = this.layer(hidden, layer, pass.cuSeqlens);
            if (hidden !== convEmbeds) hidden.dispose();
            hidden = next;
          }
          const h = hidden;
          outputs.push(tf.tidy(() => linear(gelu(linear(layerNorm(h, this.ln_post), this.proj1)), this.proj2) as tf.Tensor2D));
        } finally {
          if (hidden !== convEmbeds) hidden.dispose();
          if (input !== convEmbeds) input.dispose();
        }
      }
      return outputs.length === 1 ? outputs[0] : (tf.concat(outputs, 0) as tf.Tensor2D);
    } finally {
      if (outputs.length > 1) for (const o of outputs) o.dispose();
    }
  }

  /** Chunk, zero-pad every chunk to the longest (before the convs, as the reference's pad_sequence does), conv stack, conv_out, positions, valid rows. */
  private convEmbeds(features: tf.Tensor2D, featureLens: readonly number[], plan: AudioChunkPlan): tf.Tensor2D {
    const cfg = this.config;
    const maxLen = plan.maxChunkLength;
    const tLen = plan.maxLenAfterCnn;
    if (tLen > cfg.max_source_positions) throw new Error(`audio encoder: ${tLen} positions per chunk exceed max_source_positions ${cfg.max_source_positions}`);
    // [chunks, mel, maxLen, 1]: NHWC with H = mel, W = time, as the reference's NCHW [chunks, 1, mel, time].
    const chunks = tf.tidy(() => {
      const byTime = tf.transpose(features); // [frames, mel]
      const perAudio: tf.Tensor[] = [];
      let offset = 0;
      featureLens.forEach((len, i) => {
        // When any chunk is full, maxLen = 2·n_window and padding each audio to chunks·maxLen frames pads exactly its
        // last chunk; otherwise every audio is a single chunk, padded to the longest one.
        const padded = plan.chunksPerAudio[i] * maxLen;
        const slice = tf.slice(byTime, [offset, 0], [len, cfg.num_mel_bins]);
        const full = padded > len ? tf.pad(slice, [[0, padded - len], [0, 0]]) : slice;
        perAudio.push(tf.reshape(full, [plan.chunksPerAudio[i], maxLen, cfg.num_mel_bins]));
        offset += len;
      });
      const all = perAudio.length === 1 ? perAudio[0] : tf.concat(perAudio, 0);
      return tf.expandDims(tf.transpose(all, [0, 2, 1]), 3) as tf.Tensor4D;
    });
    const numChunks = plan.chunkLengths.length;
    const h1 = Math.floor((cfg.num_mel_bins - 1) / 2) + 1;
    const w1 = Math.floor((maxLen - 1) / 2) + 1;
    const group = Math.max(1, Math.min(cfg.conv_chunksize, Math.floor(CONV_GROUP_FLOATS / (h1 * w1 * cfg.downsample_hidden_size))));
    const positions = tf.tensor2d(sinusoidPositions(tLen, cfg.d_model), [tLen, cfg.d_model]);
    const groups: tf.Tensor2D[] = [];
    try {
      for (let start = 0; start < numChunks; start += group) {
        const size = Math.min(group, numChunks - start);
        groups.push(
          tf.tidy(() => {
            const x = size === numChunks ? chunks : tf.slice(chunks, [start, 0, 0, 0], [size, -1, -1, -1]);
            const y1 = gelu(conv2d(x, this.conv2d1)) as tf.Tensor4D;
            const y2 = gelu(conv2d(y1, this.conv2d2)) as tf.Tensor4D;
            const y3 = gelu(conv2d(y2, this.conv2d3)) as tf.Tensor4D; // [g, freq, time, channels]
            const [, f, t, c] = y3.shape;
            // The reference flattens (channel, freq) channel-major: index c·freq + f.
            const flat = tf.reshape(tf.transpose(y3, [0, 2, 3, 1]), [size, t, c * f]);
            const embedded = tf.add(linear(flat, this.conv_out), positions); // positions restart in every chunk
            return tf.reshape(embedded, [size * t, cfg.d_model]) as tf.Tensor2D;
          }),
        );
      }
      return tf.tidy(() => {
        const grid = groups.length === 1 ? groups[0] : tf.concat(groups, 0);
        return tf.gather(grid, tf.tensor1d(plan.validIndices, 'int32')) as tf.Tensor2D;
      });
    } finally {
      for (const g of groups) g.dispose();
      positions.dispose();
      chunks.dispose();
    }
  }

  private layer(x: tf.Tensor2D, l: AudioEncoderLayer, cuSeqlens: number[]): tf.Tensor2D {
    const d = this.config.d_model;
    return tf.tidy(() => {
      const qkv = linear(layerNorm(x, l.self_attn_layer_norm), l.qkv) as tf.Tensor2D;
      const [q, k, v] = tf.split(qkv, [d, d, d], 1) as tf.Tensor2D[];
      const attn = segmentAttention(q, k, v, cuSeqlens, this.config.encoder_attention_heads);
      const h = tf.add(x, linear(attn, l.out_proj)) as tf.Tensor2D;
      const ffn = linear(gelu(linear(layerNorm(h, l.final_layer_norm), l.fc1)), l.fc2);
      return tf.add(h, ffn) as tf.Tensor2D;
    });
  }

  /** Frees every weight. */
  dispose(): void {
    for (const c of [this.conv2d1, this.conv2d2, this.conv2d3]) disposeConv2d(c);
    for (const l of this.layers) {
      disposeLayerNorm(l.self_attn_layer_norm);
      disposeLayerNorm(l.final_layer_norm);
      for (const lin of [l.qkv, l.out_proj, l.fc1, l.fc2]) disposeLinear(lin);
    }
    disposeLayerNorm(this.ln_post);
    for (const lin of [this.conv_out, this.proj1, this.proj2]) disposeLinear(lin);
  }
}
