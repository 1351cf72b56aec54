import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';
import { loadLinear, linear, disposeLinear, type Linear, type WeightDtype } from '../../layers/linear.js';
import { loadFusedLinear } from '../../layers/fused-linear.js';
import { loadLayerScale, layerScale, disposeLayerScale, type LayerScale } from '../../layers/layer-scale.js';
import { loadSnakeBeta, snakeBeta, disposeSnakeBeta, type SnakeBeta } from '../../layers/snake-beta.js';
import {
  loadCausalConv1d, causalConv1d, loadCausalTransConv1d, causalTransConv1d, causalTransConv1dTail, disposeConv, KERNEL_MAX_ROWS,
  type CausalConv1d, type CausalTransConv1d,
} from '../../layers/causal-conv.js';
import { normRope } from '../../layers/norm-rope.js';
import { siluMul } from '../../layers/mlp.js';
import { loadConvNeXtBlock, convNeXtBlock, disposeConvNeXtBlock, type ConvNeXtBlock } from '../../layers/convnext.js';
import type { StreamState } from '../../layers/stream-state.js';
import type { Code2WavConfig } from './config.js';

/** Code2Wav's output rate. The config has no field for it: 12.5 Hz codec frames x 1920 samples (spec 1.1). */
export const CODE2WAV_SAMPLE_RATE = 24_000;

interface PreTransformerLayer {
  inputLayernorm: tf.Tensor1D;
  qkv: Linear; // q_proj, k_proj and v_proj side by side: one product per layer, then split
  o: Linear;
  selfAttnLayerScale: LayerScale;
  postAttentionLayernorm: tf.Tensor1D;
  gateUp: Linear; // gate_proj and up_proj side by side: one matmul, then split (gate first)
  down: Linear;
  mlpLayerScale: LayerScale;
}

interface ResidualUnit {
  act1: SnakeBeta; conv1: CausalConv1d; act2: SnakeBeta; conv2: CausalConv1d;
}

interface DecoderBlock {
  snake: SnakeBeta;
  up: CausalTransConv1d;
  units: ResidualUnit[];
}

/** The residual units' dilations (checkpoint block indices 2, 3, 4). */
const RESIDUAL_DILATIONS = [1, 3, 9] as const;

/**
 * Qwen3-Omni's Code2Wav vocoder (spec 3.9): 16-group codec codes at 12.5 Hz -> 24 kHz waveform.
 * Embedding mean over the code groups, an 8-layer sliding-window causal transformer with LayerScale,
 * two upsampling stages (transposed conv k = s = 2 + causal ConvNeXt), and the causal conv decoder with
 * SnakeBeta (rates 8·5·4·3). Everything is causal except the decoder's transposed convs, which look one
 * input ahead: a forward over T frames returns `samplesPerFrame·T − lookaheadSamples` samples.
 *
 * All activations are channels-last ([1, L, C]). `forward` takes an optional StreamState, which makes
 * the same code the streaming decoder (see Code2WavStream); without one it is the reference forward.
 *
 * ```ts
 * const c2w = Code2Wav.load(ckpt, config.code2wav_config!);
 * const wav = c2w.decode(codes, frames);             // codes group-major: codes[g * frames + f]
 * const ref = c2w.chunkedDecode(codes, frames);      // HF chunked_decode(chunk 300, left context 25)
 * ```
 */
export class Code2Wav {
  /** Samples per codec frame: prod(upsampling_ratios) · prod(upsample_rates) (1920 for the release). */
  readonly samplesPerFrame: number;
  /** Samples a forward loses at its end to the decoder's transposed-conv look-ahead (555 for the release). */
  readonly lookaheadSamples: number;
  readonly sampleRate = CODE2WAV_SAMPLE_RATE;
  readonly headDim: number;
  private readonly invFreq: Float32Array;

  private constructor(
    readonly config: Code2WavConfig,
    private readonly codeEmbedding: tf.Tensor2D,
    private readonly layers: PreTransformerLayer[],
    private readonly norm: tf.Tensor1D,
    private readonly upsampleStages: { up: CausalTransConv1d; convnext: ConvNeXtBlock }[],
    private readonly decoderIn: CausalConv1d,
    private readonly blocks: DecoderBlock[],
    private readonly finalSnake: SnakeBeta,
    private readonly decoderOut: CausalConv1d,
  ) {
    const c = config;
    this.headDim = c.hidden_size / c.num_attention_heads;
    this.samplesPerFrame = [...c.upsampling_ratios, ...c.upsample_rates].reduce((a, b) => a * b, 1);
    this.lookaheadSamples = this.samplesPerFrame - this.outputLength(1);
    // inv_freq as the reference computes it in float32: 1 / theta^(2j/d).
    this.invFreq = new Float32Array(this.headDim / 2).map((_, j) => 1 / Math.fround(Math.pow(c.rope_theta, Math.fround((2 * j) / this.headDim))));
  }

  /**
   * Where a two-thread decoder (Code2WavPipeline) is cut by default, in decoder steps: the cut that best balances the
   * two threads' estimated time per frame (`frameCostMs`). For the release: step 6 with float32 weights (the front
   * thread runs the transformer, upsampling, decoder.0, block 1 and block 2's upsampling; the back thread the rest),
   * step 7 with bf16 (block 2's first residual unit moves to the front), step 8 with int8 (two of block 2's units in
   * front) — the best cuts of the measured per-step profiles and, for int8, of a sweep of the pipeline itself.
   */
  static pipelineSplit(config: Code2WavConfig, weights: WeightDtype = 'float32'): number {
    const { front, steps } = Code2Wav.frameCostMs(config, weights);
    const total = front + steps.reduce((a, b) => a + b, 0);
    let best = 0, bestLoad = Infinity, acc = front;
    for (let split = 0; split <= steps.length; split++) {
      const load = Math.max(acc, total - acc);
      if (load < bestLoad) [best, bestLoad] = [split, load];
      acc += steps[split] ?? 0;
    }
    return best;
  }

  /**
   * A cost model of one codec frame on one wasm thread, in ms: each product costs its multiply-adds at 24 GFLOP/s plus
   * its weight bytes at 10 GB/s (a batch-1 product streams its weights once). Fitted to a per-stage profile of the
   * release on this repository's shared two-core machine (bench/talker.bench.ts `perStageCpuMs`): the totals agree
   * within 1% for float32 and bf16. On an idle core the convolutions run faster (~45 GFLOP/s), which can move the best
   * cut earlier; `split` overrides it. `front` is the embedding, transformer and upsampling; `steps[s]` decoder
   * step s.
   */
  static frameCostMs(config: Code2WavConfig, weights: WeightDtype = 'float32'): { front: number; steps: number[] } {
    if (weights === 'int8') return int8FrameCostMs(config);
    const c = config, H = c.hidden_size, D = c.decoder_dim;
    const cost = (macs: number, weightBytes: number) => (2 * macs) / 24e6 + weightBytes / 10e6;
    const kv = (c.num_key_value_heads * H) / c.num_attention_heads;
    const layerWeights = 2 * H * H + 2 * H * kv + 3 * H * c.intermediate_size;
    let positions = 1;
    let front = cost(c.num_hidden_layers * layerWeights, c.num_hidden_layers * layerWeights * (weights === 'bf16' ? 2 : 4));
    const bytes = (rows: number) => (streamingFormat(weights, rows) === 'bf16' ? 2 : 4); // per weight, as load packs them
    for (const ratio of c.upsampling_ratios) {
      front += cost(positions * H * H * ratio, bytes(positions) * H * H * ratio); // transposed conv k = s
      positions *= ratio;
      front += cost(positions * 8 * H * H, bytes(positions) * 8 * H * H); // ConvNeXt's two pointwise layers (4x expansion)
    }
    const steps = [cost(positions * H * D * 7, 4 * H * D * 7)];
    c.upsample_rates.forEach((rate, i) => {
      const inC = D / 2 ** i, outC = inC / 2;
      steps.push(cost(positions * 2 * inC * rate * outC, bytes(positions) * 2 * inC * rate * outC)); // polyphase transposed conv
      positions *= rate;
      for (let u = 0; u < RESIDUAL_DILATIONS.length; u++) steps.push(cost(positions * 8 * outC * outC, 4 * 8 * outC * outC)); // k7 + k1
    });
    steps.push(cost(positions * (D / 2 ** c.upsample_rates.length) * 7, 0));
    return { front, steps };
  }

  /**
   * Loads every `code2wav.*` tensor, checking its shape against `config`. `weights: 'bf16'` keeps the weights of the
   * layers that a streamed frame feeds one or two rows as packed bf16: the transformer's projections, the first
   * upsampling stage and the second's transposed conv. Their products stream the weights once per frame (~440 MB of
   * float32 per frame), so bf16 halves their time; the release checkpoint stores bf16, so nothing is lost. Layers fed
   * four rows or more are compute-bound in the bf16 kernel and stay float32, like the decoder's convolutions (XNNPACK).
   *
   * `weights: 'int8'` packs per output column (packInt8) every matrix of the transformer, the upsampling (transposed
   * convs and ConvNeXt pointwise layers) and the decoder (transposed convs, pointwise convs, and k = 7 convs, which run as
   * im2col + the int8 product). The integer kernel is about 2x float32's compute rate, so this is the format that makes
   * the decoder faster (measured per conv, one wasm thread: 1.4-2.1x XNNPACK's float32 conv at every decoder shape), at
   * ~0.4% rms error per product. Depthwise convs and the output conv (one channel: 1.0 ms float32, 2.3 int8) stay
   * float32.
   */
  static load(ckpt: Checkpoint, config: Code2WavConfig, prefix = 'code2wav', options: { weights?: WeightDtype } = {}): Code2Wav {
    const format = options.weights ?? 'float32';
    // The decoder's convs are int8 only under 'int8' (bf16 does not pay at their row counts).
    const convFormat: WeightDtype = format === 'int8' ? 'int8' : 'float32';
    const c = config;
    const H = c.hidden_size, I = c.intermediate_size;
    if (H % c.num_attention_heads !== 0) throw new Error(`code2wav_config: hidden_size ${H} is not divisible by num_attention_heads ${c.num_attention_heads}`);
    if (c.num_attention_heads % c.num_key_value_heads !== 0) {
      throw new Error(`code2wav_config: num_attention_heads ${c.num_attention_heads} is not a multiple of num_key_value_heads ${c.num_key_value_heads}`);
    }
    const headDim = H / c.num_attention_heads;
    const kvDim = c.num_key_value_heads * headDim;
    const vec = (key: string, n: number) => tf.tensor1d(ckpt.get(`${prefix}.${key}`, [n]).data as Float32Array);
    const codeEmbedding = tf.tensor2d(
      ckpt.get(`${prefix}.code_embedding.weight`, [c.num_quantizers * c.codebook_size, H]).data as Float32Array,
      [c.num_quantizers * c.codebook_size, H],
    );
    const layers: PreTransformerLayer[] = [];
    for (let n = 0; n < c.num_hidden_layers; n++) {
      const p = `${prefix}.pre_transformer.layers.${n}`;
      layers.push({
        inputLayernorm: vec(`pre_transformer.layers.${n}.input_layernorm.weight`, H),
        qkv: loadFusedLinear(ckpt, ['q_proj', 'k_proj', 'v_proj'].map((n) => `${p}.self_attn.${n}`), H, [H, kvDim, kvDim], c.attention_bias, format),
        o: loadLinear(ckpt, `${p}.self_attn.o_proj`, H, H, c.attention_bias, format),
        selfAttnLayerScale: loadLayerScale(ckpt, `${p}.self_attn_layer_scale`, H),
        postAttentionLayernorm: vec(`pre_transformer.layers.${n}.post_attention_layernorm.weight`, H),
        gateUp: loadFusedLinear(ckpt, [`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`], H, [I, I], false, format),
        down: loadLinear(ckpt, `${p}.mlp.down_proj`, I, H, false, format),
        mlpLayerScale: loadLayerScale(ckpt, `${p}.mlp_layer_scale`, H),
      });
    }
    const norm = vec('pre_transformer.norm.weight', H);
    // bf16 only where a streamed frame feeds at most KERNEL_MAX_ROWS rows (see streamingFormat).
    let rows = 1;
    const upsampleStages = c.upsampling_ratios.map((ratio, s) => {
      const up = loadCausalTransConv1d(ckpt, `${prefix}.upsample.${s}.0`, H, H, ratio, ratio, streamingFormat(format, rows));
      rows *= ratio;
      return { up, convnext: loadConvNeXtBlock(ckpt, `${prefix}.upsample.${s}.1`, H, 7, 1e-6, streamingFormat(format, rows)) };
    });
    // The decoder's int8 products see 4 rows or more per streamed frame: the 'panels' packing, built for many rows.
    const decoderIn = loadCausalConv1d(ckpt, `${prefix}.decoder.0`, H, c.decoder_dim, 7, 1, convFormat, 'panels');
    const blocks: DecoderBlock[] = c.upsample_rates.map((rate, i) => {
      const inC = c.decoder_dim / 2 ** i, outC = c.decoder_dim / 2 ** (i + 1);
      const p = `${prefix}.decoder.${i + 1}.block`;
      return {
        snake: loadSnakeBeta(ckpt, `${p}.0`, inC),
        up: loadCausalTransConv1d(ckpt, `${p}.1`, inC, outC, 2 * rate, rate, streamingFormat(format, rows * c.upsample_rates.slice(0, i).reduce((a, b) => a * b, 1)), 'panels'),
        units: RESIDUAL_DILATIONS.map((d, u) => ({
          act1: loadSnakeBeta(ckpt, `${p}.${u + 2}.act1`, outC),
          conv1: loadCausalConv1d(ckpt, `${p}.${u + 2}.conv1`, outC, outC, 7, d, convFormat, 'panels'),
          act2: loadSnakeBeta(ckpt, `${p}.${u + 2}.act2`, outC),
          conv2: loadCausalConv1d(ckpt, `${p}.${u + 2}.conv2`, outC, outC, 1, 1, convFormat, 'panels'),
        })),
      };
    });
    const n = c.upsample_rates.length;
    const lastC = c.decoder_dim / 2 ** n;
    const finalSnake = loadSnakeBeta(ckpt, `${prefix}.decoder.${n + 1}`, lastC);
    const decoderOut = loadCausalConv1d(ckpt, `${prefix}.decoder.${n + 2}`, lastC, 1, 7);
    return new Code2Wav(config, codeEmbedding, layers, norm, upsampleStages, decoderIn, blocks, finalSnake, decoderOut);
  }

  /** Samples one forward over `frames` codec frames returns: each decoder block maps L to (L−1)·rate. */
  outputLength(frames: number): number {
    let length = frames * this.config.upsampling_ratios.reduce((a, b) => a * b, 1);
    for (const r of this.config.upsample_rates) length = Math.max(0, (length - 1) * r);
    return length;
  }

  /**
   * Offline decode of a whole utterance, as the reference `Code2Wav.forward`: `outputLength(frames)` samples
   * in [-1, 1]. `codes` is group-major (`codes[g * frames + f]`, the CodesPacket layout).
   */
  decode(codes: Int32Array, frames: number): Float32Array {
    const wav = this.forward(codes, frames);
    try {
      return wav.dataSync() as Float32Array;
    } finally {
      wav.dispose();
    }
  }

  /**
   * The reference `chunked_decode`: chunks of `chunkSize` frames, each decoded with up to `leftContextSize`
   * frames of left context whose samples are then dropped. Each chunk loses its own look-ahead tail, so the
   * result has a `lookaheadSamples` gap at every chunk seam — faithful to HF.
   */
  chunkedDecode(codes: Int32Array, frames: number, chunkSize = 300, leftContextSize = 25): Float32Array {
    this.checkCodes(codes, frames);
    const G = this.config.num_quantizers;
    const pieces: Float32Array[] = [];
    for (let start = 0; start < frames; start += chunkSize) {
      const end = Math.min(start + chunkSize, frames);
      const context = Math.min(leftContextSize, start);
      const n = end - start + context;
      const chunk = new Int32Array(G * n);
      for (let g = 0; g < G; g++) chunk.set(codes.subarray(g * frames + start - context, g * frames + end), g * n);
      pieces.push(this.decode(chunk, n).subarray(context * this.samplesPerFrame));
    }
    return concatFloat32(pieces);
  }

  /**
   * One forward over a chunk of frames: codes -> [1, samples] waveform tensor (clamped to [-1, 1]).
   * With `state` (and `position`, the absolute index of the chunk's first frame) it continues the previous
   * chunk: attention sees the cached window, convs their left context, transposed convs emit the block they
   * held back. Without it, it is the reference forward over `codes` alone.
   */
  forward(codes: Int32Array, frames: number, state?: StreamState, position = 0): tf.Tensor2D {
    this.checkCodes(codes, frames);
    return tf.tidy(() => {
      const h = this.preTransformer(this.embed(codes, frames), state, position);
      const wav = this.decoder(this.upsample(h, state), state);
      return tf.reshape(wav, [1, wav.shape[1]]) as tf.Tensor2D;
    });
  }

  /** Stage 1: mean of the G code embeddings per frame -> [1, T, hidden]. */
  embed(codes: Int32Array, frames: number): tf.Tensor3D {
    const G = this.config.num_quantizers, V = this.config.codebook_size;
    const ids = new Int32Array(G * frames);
    for (let g = 0; g < G; g++) for (let f = 0; f < frames; f++) ids[g * frames + f] = codes[g * frames + f] + g * V; // code_offset
    return tf.tidy(() => {
      const rows = tf.reshape(tf.gather(this.codeEmbedding, tf.tensor1d(ids, 'int32')), [G, frames, this.config.hidden_size]);
      return tf.reshape(tf.mean(rows, 0), [1, frames, this.config.hidden_size]) as tf.Tensor3D;
    });
  }

  /** Stage 2: the sliding-window causal transformer and its final RMSNorm, [1, T, hidden]. */
  preTransformer(x: tf.Tensor3D, state?: StreamState, position = 0): tf.Tensor3D {
    return tf.tidy(() => {
      const T = x.shape[1];
      const rope = this.rope(position, T);
      let h: tf.Tensor = tf.reshape(x, [T, this.config.hidden_size]);
      this.layers.forEach((layer, n) => {
        const attn = this.attention(rmsNorm(h, layer.inputLayernorm, this.config.rms_norm_eps), layer, rope, position, state, `pre_transformer.layers.${n}`);
        h = tf.add(h, layerScale(attn, layer.selfAttnLayerScale));
        const gu = linear(rmsNorm(h, layer.postAttentionLayernorm, this.config.rms_norm_eps), layer.gateUp) as tf.Tensor2D;
        h = tf.add(h, layerScale(linear(siluMul(gu), layer.down), layer.mlpLayerScale)); // silu(gate) · up in one pass
      });
      return tf.reshape(rmsNorm(h, this.norm, this.config.rms_norm_eps), [1, T, this.config.hidden_size]) as tf.Tensor3D;
    });
  }

  /** Stage 3: upsampling stages (transposed conv k = s + causal ConvNeXt), [1, T·prod(ratios), hidden]. */
  upsample(x: tf.Tensor3D, state?: StreamState): tf.Tensor3D {
    return tf.tidy(() => {
      let h = x;
      this.upsampleStages.forEach((stage, s) => {
        h = causalTransConv1d(h, stage.up, state, `upsample.${s}.0`);
        h = convNeXtBlock(h, stage.convnext, state, `upsample.${s}.1`);
      });
      return h;
    });
  }

  /** Stage 4: the causal conv decoder, [1, L, hidden] -> [1, N, 1], clamped to [-1, 1] unless `clamp` is false. */
  decoder(x: tf.Tensor3D, state?: StreamState, clamp = true): tf.Tensor3D {
    return this.decoderPart(x, state, { from: 0, to: this.decoderSteps, clamp });
  }

  /**
   * The decoder as a sequence of steps, the unit a split decoder is cut at: `decoder.0`; then per block its upsampling
   * (SnakeBeta + transposed conv) and its three residual units; then the output layers (SnakeBeta, conv, clamp).
   * 2 + 4·upsample_rates.length steps (18 for the release).
   */
  get decoderSteps(): number {
    return 2 + this.blocks.length * (1 + RESIDUAL_DILATIONS.length);
  }

  /**
   * Decoder steps [from, to) (see decoderSteps), so the decoder can be split across threads: decoderPart(0, k) then
   * decoderPart(k, decoderSteps) is the whole decoder. `clamp` applies when the output step is included.
   */
  decoderPart(x: tf.Tensor3D, state: StreamState | undefined, range: { from: number; to: number; clamp?: boolean }): tf.Tensor3D {
    this.checkSteps(range);
    return tf.tidy(() => {
      let h = x;
      for (let step = range.from; step < range.to; step++) h = this.decoderStep(step, h, state, range.clamp ?? true);
      return h;
    });
  }

  /**
   * End of a stream: the samples the transposed convs held back waiting for a next frame (the reference
   * drops them), computed as if no frame followed: [1, lookaheadSamples, 1] clamped; undefined if nothing
   * was decoded.
   */
  decoderTail(state: StreamState): tf.Tensor3D | undefined {
    return this.decoderTailPart(undefined, state, { from: 0, to: this.decoderSteps });
  }

  /**
   * The tail of steps [from, to): `incoming` is the tail of the steps before `from` (undefined for the first part);
   * returns this part's tail activation (undefined when there is none yet), or the tail samples when `to` is the end.
   */
  decoderTailPart(incoming: tf.Tensor3D | undefined, state: StreamState, range: { from: number; to: number }): tf.Tensor3D | undefined {
    this.checkSteps(range);
    return tf.tidy(() => {
      let h = incoming && incoming.shape[1] > 0 ? incoming : undefined;
      for (let step = range.from; step < range.to; step++) {
        const { block, part } = this.stepAt(step);
        if (block !== undefined && part === 0) {
          // An upsampling step: whatever arrives, then the block its transposed conv held back for a next input.
          const b = this.blocks[block], name = `decoder.${block + 1}.block.1`;
          const fresh = h ? causalTransConv1d(snakeBeta(h, b.snake) as tf.Tensor3D, b.up, state, name) : undefined;
          const tail = causalTransConv1dTail(b.up, state, name);
          const parts = [fresh, tail].filter((t): t is tf.Tensor3D => t !== undefined && t.shape[1] > 0);
          h = parts.length === 0 ? undefined : parts.length === 1 ? parts[0] : (tf.concat(parts, 1) as tf.Tensor3D);
        } else if (h) {
          h = this.decoderStep(step, h, state, true);
        }
      }
      return h;
    });
  }

  /** Which decoder block a step belongs to (undefined for decoder.0 and the output) and its part: 0 upsampling, 1..3 unit. */
  private stepAt(step: number): { block?: number; part: number } {
    if (step === 0 || step === this.decoderSteps - 1) return { part: 0 };
    const perBlock = 1 + RESIDUAL_DILATIONS.length;
    return { block: Math.floor((step - 1) / perBlock), part: (step - 1) % perBlock };
  }

  private decoderStep(step: number, h: tf.Tensor3D, state: StreamState | undefined, clamp: boolean): tf.Tensor3D {
    if (step === 0) return causalConv1d(h, this.decoderIn, state, 'decoder.0');
    if (step === this.decoderSteps - 1) return this.output(h, state, clamp);
    const { block, part } = this.stepAt(step);
    const b = this.blocks[block!];
    if (part === 0) return causalTransConv1d(snakeBeta(h, b.snake) as tf.Tensor3D, b.up, state, `decoder.${block! + 1}.block.1`);
    const u = b.units[part - 1], name = `decoder.${block! + 1}.block.${part + 1}`;
    const y = causalConv1d(snakeBeta(h, u.act1) as tf.Tensor3D, u.conv1, state, `${name}.conv1`);
    return tf.add(h, causalConv1d(snakeBeta(y, u.act2) as tf.Tensor3D, u.conv2, state, `${name}.conv2`)) as tf.Tensor3D;
  }

  private checkSteps(range: { from: number; to: number }): void {
    const n = this.decoderSteps;
    if (!Number.isInteger(range.from) || !Number.isInteger(range.to) || range.from < 0 || range.to > n || range.from > range.to) {
      throw new Error(`code2wav: decoder steps [${range.from}, ${range.to}) are not a range within [0, ${n}]`);
    }
  }

  dispose(): void {
    this.codeEmbedding.dispose();
    for (const l of this.layers) {
      l.inputLayernorm.dispose();
      l.postAttentionLayernorm.dispose();
      for (const lin of [l.qkv, l.o, l.gateUp, l.down]) disposeLinear(lin);
      disposeLayerScale(l.selfAttnLayerScale);
      disposeLayerScale(l.mlpLayerScale);
    }
    this.norm.dispose();
    for (const s of this.upsampleStages) {
      disposeConv(s.up);
      disposeConvNeXtBlock(s.convnext);
    }
    disposeConv(this.decoderIn);
    for (const b of this.blocks) {
      disposeSnakeBeta(b.snake);
      disposeConv(b.up);
      for (const u of b.units) {
        disposeSnakeBeta(u.act1);
        disposeSnakeBeta(u.act2);
        disposeConv(u.conv1);
        disposeConv(u.conv2);
      }
    }
    disposeSnakeBeta(this.finalSnake);
    disposeConv(this.decoderOut);
  }

  /** Validates a group-major code array at the boundary, naming what is wrong. */
  checkCodes(codes: Int32Array, frames: number): void {
    const G = this.config.num_quantizers, V = this.config.codebook_size;
    if (!Number.isInteger(frames) || frames < 1) throw new Error(`code2wav: frames must be a positive integer, got ${frames}`);
    if (codes.length !== G * frames) throw new Error(`code2wav: expected ${G} code groups x ${frames} frames = ${G * frames} codes, got ${codes.length}`);
    for (let i = 0; i < codes.length; i++) {
      if (codes[i] < 0 || codes[i] >= V) {
        throw new Error(`code2wav: code ${codes[i]} at group ${Math.floor(i / frames)}, frame ${i % frames} is outside the codebook [0, ${V})`);
      }
    }
  }

  private output(h: tf.Tensor3D, state: StreamState | undefined, clamp: boolean): tf.Tensor3D {
    const n = this.blocks.length;
    const wav = causalConv1d(snakeBeta(h, this.finalSnake) as tf.Tensor3D, this.decoderOut, state, `decoder.${n + 2}`);
    return clamp ? (tf.clipByValue(wav, -1, 1) as tf.Tensor3D) : wav;
  }

  /**
   * Sliding-window causal self-attention over a chunk of T frames at absolute positions
   * [position, position+T): query q sees keys k with q − window < k ≤ q, taken from the cached previous
   * keys (already rotated) and the chunk itself. No q/k norm in Code2Wav.
   */
  private attention(
    x: tf.Tensor, layer: PreTransformerLayer, rope: Rope,
    position: number, state: StreamState | undefined, name: string,
  ): tf.Tensor {
    const c = this.config, T = x.shape[0], D = this.headDim;
    const heads = c.num_attention_heads, kvHeads = c.num_key_value_heads;
    // [T, n·D] -> [n, T, D]; for one frame (streaming) that is a reshape, no transpose kernel.
    const toHeads = (t: tf.Tensor, n: number) => (T === 1 ? tf.reshape(t, [n, 1, D]) : tf.transpose(tf.reshape(t, [T, n, D]), [1, 0, 2]));
    const rotate = (t: tf.Tensor, n: number) => (rope.matrix
      ? tf.reshape(tf.matMul(tf.reshape(t, [n, D]), rope.matrix), [n, 1, D])
      : applyRope(toHeads(t, n), rope.cos, rope.sin));
    const [qx, kx, vx] = tf.split(linear(x, layer.qkv), [heads * D, kvHeads * D, kvHeads * D], 1);
    const q = rotate(qx, heads);
    let k = rotate(kx, kvHeads);
    let v = toHeads(vx, kvHeads);
    const pastK = state?.get(`${name}.k`), pastV = state?.get(`${name}.v`);
    if (pastK && pastV) {
      k = tf.concat([pastK, k], 1);
      v = tf.concat([pastV, v], 1);
    }
    const keys = k.shape[1] as number;
    if (state) {
      const keep = Math.min(keys, c.sliding_window - 1); // the next query still sees the last window−1 keys
      state.set(`${name}.k`, tf.slice(k, [0, keys - keep, 0], [kvHeads, keep, D]));
      state.set(`${name}.v`, tf.slice(v, [0, keys - keep, 0], [kvHeads, keep, D]));
    }
    if (kvHeads !== heads) {
      const idx = tf.tensor1d(Array.from({ length: heads }, (_, h) => Math.floor(h / (heads / kvHeads))), 'int32');
      k = tf.gather(k, idx, 0);
      v = tf.gather(v, idx, 0);
    }
    const first = position + T - keys; // absolute position of the first key
    const mask = new Float32Array(T * keys);
    let masked = false;
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < keys; j++) {
        const qp = position + i, kp = first + j;
        if (kp <= qp && kp > qp - c.sliding_window) continue;
        mask[i * keys + j] = -Infinity;
        masked = true;
      }
    }
    let scores = tf.mul(tf.matMul(q, k, false, true), D ** -0.5);
    if (masked) scores = tf.add(scores, tf.tensor2d(mask, [T, keys])); // a streamed frame sees every cached key: no mask
    const out = tf.matMul(tf.softmax(scores), v); // [heads, T, D]
    return linear(T === 1 ? tf.reshape(out, [1, heads * D]) : tf.reshape(tf.transpose(out, [1, 0, 2]), [T, heads * D]), layer.o);
  }

  /**
   * cos/sin [T, headDim] for positions [position, position+T), halves duplicated (rotate-half layout). For one position
   * also RoPE as a [headDim, headDim] matrix M (x·M = x·cos + rotate_half(x)·sin): each column has just the two
   * entries cos_k and ±sin_k, so one matMul gives the same float32 result as the six ops of applyRope.
   */
  private rope(position: number, T: number): Rope {
    const D = this.headDim, half = D / 2;
    const cos = new Float32Array(T * D), sin = new Float32Array(T * D);
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < half; j++) {
        const angle = Math.fround((position + t) * this.invFreq[j]);
        cos[t * D + j] = cos[t * D + j + half] = Math.cos(angle);
        sin[t * D + j] = sin[t * D + j + half] = Math.sin(angle);
      }
    }
    let matrix: tf.Tensor2D | undefined;
    if (T === 1) {
      const m = new Float32Array(D * D);
      for (let k = 0; k < D; k++) {
        m[k * D + k] = cos[k];
        if (k < half) m[(k + half) * D + k] = -sin[k]; // rotate_half(x)_k = −x_{k+half}
        else m[(k - half) * D + k] = sin[k]; //            rotate_half(x)_k = x_{k−half}
      }
      matrix = tf.tensor2d(m, [D, D]);
    }
    return { cos: tf.tensor2d(cos, [T, D]), sin: tf.tensor2d(sin, [T, D]), matrix };
  }
}

/** RoPE tables for a chunk: cos/sin [T, headDim], and for a single position the rotation as one matrix. */
interface Rope {
  cos: tf.Tensor2D;
  sin: tf.Tensor2D;
  matrix?: tf.Tensor2D;
}

/**
 * Code2Wav.frameCostMs for `weights: 'int8'`, fitted to the int8 per-stage profile of the release (bench/talker.bench.ts
 * `int8.perStageCpuMs`, same machine; every step within ~1 ms). An int8 product costs the larger of its multiply-adds
 * and its bytes (one per weight) at 10 GB/s; multiply-adds run at 52 GFLOP/s in the transformer and upsampling ('rows'
 * packing, 1-4 rows) and at 67 GFLOP/s in the decoder ('panels', 4-1920 rows). Beside those products the elementwise
 * work shows: 12 ns per output value of a residual unit (two SnakeBetas, the im2col quantizer, the residual add), 5 ns
 * per value of an upsampling step (one SnakeBeta), and the tfjs ops around the products, 1.2 ms per transformer layer
 * and 1.5 ms per ConvNeXt block. The per-value term is the least certain: five profiles on the shared machine put the
 * narrow blocks' units at 6.0-7.5 ms (block 2-4), which 7-12 ns all fit; 12 ns makes the balanced cut step 8, and a
 * sweep of the two-thread pipeline itself agreed (cut 7 / 8 / 9: medians of 10 / 10 / 3 interleaved runs 78.6 / 70.0 /
 * 75.0 ms per frame).
 */
function int8FrameCostMs(c: Code2WavConfig): { front: number; steps: number[] } {
  const H = c.hidden_size, D = c.decoder_dim;
  const product = (macs: number, weights: number, flopsPerMs: number) => Math.max((2 * macs) / flopsPerMs, weights / 10e6);
  const rows = (macs: number, weights: number) => product(macs, weights, 52e6);
  const panels = (macs: number, weights: number) => product(macs, weights, 67e6);
  const kv = (c.num_key_value_heads * H) / c.num_attention_heads;
  const layerWeights = 2 * H * H + 2 * H * kv + 3 * H * c.intermediate_size;
  let positions = 1;
  let front = c.num_hidden_layers * (rows(layerWeights, layerWeights) + 1.2);
  for (const ratio of c.upsampling_ratios) {
    front += rows(positions * H * H * ratio, H * H * ratio); // transposed conv k = s
    positions *= ratio;
    front += rows(positions * 8 * H * H, 8 * H * H) + 1.5; // ConvNeXt
  }
  const steps = [panels(positions * H * D * 7, H * D * 7)];
  c.upsample_rates.forEach((rate, i) => {
    const inC = D / 2 ** i, outC = inC / 2;
    steps.push(panels(positions * 2 * inC * rate * outC, 2 * inC * rate * outC) + positions * rate * outC * 5e-6);
    positions *= rate;
    for (let u = 0; u < RESIDUAL_DILATIONS.length; u++) steps.push(panels(positions * 8 * outC * outC, 8 * outC * outC) + positions * outC * 12e-6);
  });
  const lastC = D / 2 ** c.upsample_rates.length;
  steps.push((2 * positions * lastC * 7) / 24e6 + positions * lastC * 5e-6); // SnakeBeta and the float32 1-channel conv
  return { front, steps };
}

/**
 * The weight format for a layer a streamed frame feeds `rows` rows: bf16 pays only up to KERNEL_MAX_ROWS (measured);
 * int8 at every row count (its integer kernel is ~2.5x float32's compute rate at 4-256 rows, docs/runtime.md).
 */
function streamingFormat(format: WeightDtype, rows: number): WeightDtype {
  return format === 'int8' || rows <= KERNEL_MAX_ROWS ? format : 'float32';
}



/** x · rsqrt(mean(x²) + eps) · w over the last axis: one kernel pass on wasm for a few rows (normRope), else tfjs ops. */
function rmsNorm(x: tf.Tensor, weight: tf.Tensor1D, eps: number): tf.Tensor {
  return normRope(x, { weight, eps });
}

/** q·cos + rotate_half(q)·sin, rotate_half([x1, x2]) = [−x2, x1]; x [heads, T, D]. */
function applyRope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const [x1, x2] = tf.split(x, 2, 2);
  return tf.add(tf.mul(x, cos), tf.mul(tf.concat([tf.neg(x2), x1], 2), sin));
}

export function concatFloat32(pieces: Float32Array[]): Float32Array {
  const out = new Float32Array(pieces.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of pieces) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
