/**
 * Thinker text-model speed on the default backend, with random weights built in memory (no files):
 * - the mid-size config of issue 5 (hidden 1024, 8 layers, 16 experts top-4, moe_intermediate 512): prefill tokens/s
 *   and decode tokens/s through `generate`, with float32 weights and again with `weights: 'bf16'` (midSizeBf16), decode also as effective bandwidth = bytes of the weights one decode step
 *   reads (attention, router, the top-k experts, lm_head) ÷ step time, next to this machine's triad bandwidth
 *   (measured just before and after the timed decode, averaged);
 * - the decode step of ONE real-size thinker MoE layer (spec 2.3: hidden 2048, 32/4 heads × 128, 128 experts top-8,
 *   moe_intermediate 768) with 512 positions already in its KV cache.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, KVCache, type HostTensor } from '@omniflow/runtime-gpu';
import {
  decoderAttention, disposeDecoderAttention, disposeSwiGluMlp, generate, loadDecoderAttention, loadRMSNorm, loadSwiGluMlp,
  mropeTables, rmsNorm, ropeTensors, sparseMoe, swiGlu, TextModel, THINKER_TEXT_KEYS, thinkerTextConfigSchema, type SparseMoe, type ThinkerTextConfig, type WeightDtype, type WeightSource,
} from '@omniflow/nodes';
import { measureTriadBandwidth, medianMs } from './memory.js';

/**
 * Weights drawn on demand, uniform with the variance of N(0,1)/sqrt(fan_in) for matrices (cheaper to draw than
 * normals, and the distribution does not matter for speed), about 1 for norms; the router is scaled up so routing
 * varies from token to token.
 */
class RandomWeights implements WeightSource {
  private state = 0x9e3779b9;
  bytes = 0;

  get(name: string, shape?: readonly number[]): HostTensor {
    if (!shape) throw new Error(`RandomWeights: ${name} needs an expected shape`);
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const isNorm = shape.length === 1;
    const std = isNorm ? 0.1 : (name.endsWith('mlp.gate.weight') ? 2 : 1) / Math.sqrt(shape[shape.length - 1]!);
    const half = std * Math.sqrt(3) * 2;
    let x = this.state;
    for (let i = 0; i < n; i++) {
      // xorshift32
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      data[i] = (isNorm ? 1 : 0) + half * ((x >>> 0) / 4294967296 - 0.5);
    }
    this.state = x >>> 0;
    this.bytes += n * 4;
    return { dtype: 'float32', shape: [...shape], data };
  }
}

function textConfig(json: Record<string, unknown>): ThinkerTextConfig {
  return thinkerTextConfigSchema.parse({
    hidden_act: 'silu', rms_norm_eps: 1e-6, rope_theta: 1e6, norm_topk_prob: true, max_position_embeddings: 65536,
    rope_scaling: { rope_type: 'default', interleaved: true, mrope_section: [24, 20, 20] }, ...json,
  });
}

/**
 * Bytes of weights one decode step reads: every attention/norm matrix, the router, top-k experts, lm_head. With bf16
 * weights the projections, experts and lm_head take 2 bytes a value; norms and the router stay float32.
 */
function activeBytesPerToken(c: ThinkerTextConfig, withHead = true, dtype: WeightDtype = 'float32'): number {
  const D = c.hidden_size, hd = c.head_dim, m = dtype === 'bf16' ? 2 : 4;
  const matrices = D * c.num_attention_heads * hd * 2 + D * c.num_key_value_heads * hd * 2 + c.num_experts_per_tok * 3 * D * c.moe_intermediate_size;
  const float32 = 2 * hd + 2 * D + D * c.num_experts;
  return c.num_hidden_layers * (m * matrices + 4 * float32) + (withHead ? m * D * c.vocab_size + 4 * D : 0);
}

export async function midSize(triad: () => number, dtype: WeightDtype = 'float32'): Promise<object> {
  const c = textConfig({
    vocab_size: 32768, hidden_size: 1024, num_hidden_layers: 8, num_attention_heads: 16, num_key_value_heads: 2, head_dim: 128,
    intermediate_size: 512, moe_intermediate_size: 512, num_experts: 16, num_experts_per_tok: 4,
  });
  const weights = new RandomWeights();
  const model = TextModel.load(weights, c, THINKER_TEXT_KEYS, { weights: dtype });
  try {
    const P = 128;
    const ids = Array.from({ length: P }, (_, i) => (i * 7919) % c.vocab_size);
    const prefillMs = await medianMs(() => {
      const cache = model.createCache();
      const x = model.embed(ids);
      const out = model.forward(x, { positions: ids.map((_, i) => i), cache });
      out.logits!.dataSync();
      tf.dispose([x, out.logits!, out.lastHiddenState]);
      cache.dispose();
    }, 3, 1);

    const N = 48;
    const stamps: number[] = [];
    const triadBefore = triad();
    for await (const _ of generate(model, { inputIds: ids.slice(0, 16), maxNewTokens: N })) stamps.push(performance.now());
    const triadGBs = (triadBefore + triad()) / 2;
    const steps = stamps.slice(2).map((t, i) => t - stamps[i + 1]!).sort((a, b) => a - b); // decode steps after a warm-up one
    const stepMs = steps[Math.floor(steps.length / 2)]!;
    const bytes = activeBytesPerToken(c, true, dtype);
    const gbs = bytes / (stepMs / 1000) / 1e9;
    return {
      config: { hidden: 1024, layers: 8, heads: '16/2 x 128', experts: '16 top-4', moe_intermediate: 512, vocab: c.vocab_size, weights: dtype, float32WeightsMiB: Math.round(weights.bytes / 2 ** 20) },
      prefill: { tokens: P, ms: +prefillMs.toFixed(1), tokensPerSecond: +((P * 1000) / prefillMs).toFixed(1) },
      decode: {
        stepMsMedian: +stepMs.toFixed(2), stepMsP90: +steps[Math.floor(steps.length * 0.9)]!.toFixed(2), tokensPerSecond: +(1000 / stepMs).toFixed(1),
        activeWeightMiBPerToken: +(bytes / 2 ** 20).toFixed(1), effectiveGBps: +gbs.toFixed(2),
        triadGBps: +triadGBs.toFixed(2), fractionOfTriad: +(gbs / triadGBs).toFixed(2),
      },
    };
  } finally {
    model.dispose();
  }
}

export async function realSizeLayer(triad: () => number): Promise<object> {
  const c = textConfig({
    vocab_size: 152064, hidden_size: 2048, num_hidden_layers: 1, num_attention_heads: 32, num_key_value_heads: 4, head_dim: 128,
    intermediate_size: 768, moe_intermediate_size: 768, num_experts: 128, num_experts_per_tok: 8,
  });
  const D = c.hidden_size, I = c.moe_intermediate_size;
  const weights = new RandomWeights();
  const p = 'thinker.model.layers.0';
  const norm1 = loadRMSNorm(weights, `${p}.input_layernorm.weight`, D, 1e-6);
  const norm2 = loadRMSNorm(weights, `${p}.post_attention_layernorm.weight`, D, 1e-6);
  const attn = loadDecoderAttention(weights, `${p}.self_attn`, { hidden: D, numHeads: 32, numKvHeads: 4, headDim: 128, rmsNormEps: 1e-6 });
  // 128 real-size experts are 2.4 GB of f32, and XNNPACK keeps a packed copy of every matrix it multiplies: that
  // exceeds the 4 GiB wasm heap. So the 128 router slots share POOL distinct real-size experts (slot e -> e % POOL);
  // the bytes counted per step are those of the DISTINCT experts the step actually read.
  const POOL = 32;
  const pool = Array.from({ length: POOL }, (_, e) => loadSwiGluMlp(weights, `${p}.mlp.experts.${e}`, D, I));
  // Random weights: the [experts, hidden] data read as the pre-transposed [hidden, experts] router is as random.
  const router = tf.tensor2d(weights.get(`${p}.mlp.gate.weight`, [128, D]).data as Float32Array, [D, 128]);
  const moe: SparseMoe = { router, experts: Array.from({ length: 128 }, (_, e) => pool[e % POOL]!), topK: 8, normTopKProb: true, hidden: D };
  const past = 512;
  const cache = new KVCache({ layers: 1, kvHeads: 4, headDim: 128, capacity: 1024 });
  let pos = 0;
  const distinct: number[] = [];
  const step = (rows: number) => {
    const positions = Array.from({ length: rows }, (_, i) => pos + i);
    const [cos, sin] = ropeTensors(mropeTables([positions, positions, positions], 128, 1e6, [24, 20, 20], true));
    const y = tf.tidy(() => {
      const x = tf.randomNormal([rows, D]) as tf.Tensor2D;
      const h = tf.add(x, decoderAttention(rmsNorm(x, norm1) as tf.Tensor2D, attn, cos, sin, { cache, layer: 0 })) as tf.Tensor2D;
      const m = sparseMoe(rmsNorm(h, norm2) as tf.Tensor2D, moe);
      if (rows === 1) distinct.push(new Set(Array.from(m.routing.selectedExperts, (e) => e % POOL)).size);
      return tf.add(h, m.output);
    });
    y.dataSync();
    tf.dispose([y, cos, sin]);
    pos += rows;
  };
  try {
    step(past);
    for (let e = 0; e < POOL; e++) tf.tidy(() => swiGlu(tf.zeros([1, D]), pool[e]!).dataSync()); // pack every expert once
    distinct.length = 0;
    const triadBefore = triad();
    const ms = await medianMs(() => {
      step(1);
      cache.truncate(past); // every measured step sees the same 512-position history
      pos = past;
    }, 21, 3);
    const triadGBs = (triadBefore + triad()) / 2;
    const meanDistinct = distinct.reduce((a, b) => a + b, 0) / distinct.length;
    const attnBytes = 4 * (D * 32 * 128 * 2 + D * 4 * 128 * 2 + 2 * 128 + 2 * D);
    const bytes = attnBytes + 4 * (D * 128 + meanDistinct * 3 * D * I);
    const gbs = bytes / (ms / 1000) / 1e9;
    return {
      config: { hidden: D, heads: '32/4 x 128', experts: `128 top-8 (router real size; ${POOL} distinct expert weight sets)`, moe_intermediate: I, kvPositions: past },
      decodeStepMs: +ms.toFixed(2), meanDistinctExpertsRead: +meanDistinct.toFixed(2), activeWeightMiBPerStep: +(bytes / 2 ** 20).toFixed(1),
      effectiveGBps: +gbs.toFixed(2), triadGBps: +triadGBs.toFixed(2), fractionOfTriad: +(gbs / triadGBs).toFixed(2),
      fullModel48LayersEstimateMsPerToken: +(48 * ms).toFixed(0),
    };
  } finally {
    cache.dispose();
    disposeDecoderAttention(attn);
    for (const e of pool) disposeSwiGluMlp(e);
    tf.dispose([norm1.weight, norm2.weight, router]);
  }
}

export async function run(): Promise<object> {
  const backend = await initBackend();
  // The triad is measured right before and after each timed decode section and averaged, so a busy machine slows
  // the baseline and the measurement alike.
  const triads: number[] = [];
  const triad = (): number => {
    const gbs = measureTriadBandwidth({ megabytes: 128, repeats: 3 }).gbPerSecond;
    triads.push(gbs);
    return gbs;
  };
  const mid = await midSize(triad);
  const midBf16 = await midSize(triad, 'bf16');
  const real = await realSizeLayer(triad);
  return { backend: backend.name, triadGBpsSamples: triads, midSize: mid, midSizeBf16: midBf16, realSizeMoeLayer: real };
}
