/**
 * Speech output at the released dimensions (spec 2.6, 2.7) with random weights, on the active backend:
 * - Code2Wav streaming on two worker threads (Code2WavPipeline): throughput RTF with the halves overlapping;
 * - Code2Wav streaming: one codec frame per push (the streaming decoder keeps its left context), real-time factor
 *   = decode time per frame / 80 ms, and the time to the first audio packet after the first code frame; the offline
 *   decode of the same 25 frames beside it; per-stage CPU time of a frame; float32, bf16 and int8 weights (int8: also
 *   the waveform's SNR against float32 on the same weights);
 * - code predictor: one codec frame (2-row prefill + 14 single-row steps, 15 heads), with the bytes of weights each
 *   step reads and the resulting effective bandwidth;
 * - talker decode step at context 100: 20 MoE layers (top-6 of 128 experts + shared expert), final norm, codec head;
 *   bytes of active weights per step and effective bandwidth.
 * Code predictor and talker each run four ways: float32 weights through omniflow's SIMD small-M kernel (the
 * default), bf16 weights through its bf16 kernel (`weights: 'bf16'`), int8 weights through its int8 kernel
 * (`weights: 'int8'`), and float32 through plain tf.matMul (the baseline before the kernel, `useSimdMatMul(false)`).
 * Baseline measured in the same run: the machine's memory bandwidth (bench/memory.ts triad).
 *
 * Weights are random, built in memory (no files), by a Checkpoint stand-in that answers `get(name, shape)`. The talker's
 * 20 × 128 experts are 12 GB of float32, more than the 4 GiB wasm heap: every layer keeps its real router over 128
 * experts, but the expert slots share a pool of EXPERT_POOL distinct real-size experts (300 MB, far larger than the
 * caches), so each step still reads six distinct experts' weights per layer from memory.
 * Reference anchors (PyTorch + OpenBLAS, 2 threads, this machine type; notes/pytorch-cpu-anchors.md): Code2Wav
 * streaming chunk 535 ms per frame (RTF 6.7), offline T=25 RTF 0.26; code predictor 270 ms per frame; talker step 78 ms.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, int8PackedShape, type KVCache } from '@omniflow/runtime-gpu';
import {
  Code2Wav, Code2WavPipeline, Code2WavStream, StreamState, CodePredictor, randomCheckpoint, CodecHead, GREEDY, Sampler, TextModel, disposeDecoderAttention, loadDecoderAttention,
  loadRMSNorm, loadSwiGluMlp, code2WavConfigSchema, codePredictorConfigSchema, talkerTextConfigSchema,
  useSimdMatMul, routerWeight, type SparseMoe, type SwiGluMlp, type TalkerConfig, type TextDecoderLayer, type ThinkerTextConfig, type WeightDtype,
} from '@omniflow/nodes';
import { measureTriadBandwidth, medianMs } from './memory.js';

const FRAMES = 25; // 2 s of audio
const CONTEXT = 100;
const EXPERT_POOL = 64;

/** code2wav_config of the release (spec 2.7). */
export const CODE2WAV_RELEASE = {
  codebook_size: 2048, num_quantizers: 16, hidden_size: 1024, num_hidden_layers: 8, num_attention_heads: 16, num_key_value_heads: 16,
  intermediate_size: 3072, rms_norm_eps: 1e-5, sliding_window: 72, rope_theta: 10000, decoder_dim: 1536,
  upsample_rates: [8, 5, 4, 3], upsampling_ratios: [2, 2],
};

/**
 * Median wall time and median CPU time (this process, all its threads) of `fn`. The machine is shared: when other
 * work takes the cores, wall time measures the queue; CPU time is what the work itself cost.
 */
async function medianWallCpu(fn: () => unknown, repeats: number, warmup: number): Promise<{ wallMs: number; cpuMs: number }> {
  for (let i = 0; i < warmup; i++) await fn();
  const wall: number[] = [], cpu: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const c0 = process.cpuUsage(), t0 = performance.now();
    await fn();
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  const mid = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { wallMs: +mid(wall).toFixed(1), cpuMs: +mid(cpu).toFixed(1) };
}

const mb = (bytes: number) => +(bytes / 2 ** 20).toFixed(1);
const gbps = (bytes: number, ms: number) => +(bytes / (ms / 1000) / 1e9).toFixed(2);

/**
 * Code2Wav at spec 2.7 dims: streaming RTF, first-packet latency, offline decode, with float32 weights (top-level
 * fields), with `weights: 'bf16'` (the release's own precision for the weight-streaming layers, `bf16`) and with
 * `weights: 'int8'` (every matrix and decoder conv int8, `int8`); the per-stage CPU time of a steady-state frame; two
 * frames per push (bf16), which reads the weights once per two frames at the cost of 80 ms more latency; and int8's
 * offline waveform against float32's on the same random weights (SNR, largest sample error).
 */
export async function code2wavBench(): Promise<object> {
  const config = code2WavConfigSchema.parse(CODE2WAV_RELEASE);
  let seed = 7;
  const codes = Int32Array.from({ length: 16 * FRAMES }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % 2048);
  const chunk = (f: number, n: number) => {
    const out = new Int32Array(16 * n);
    for (let g = 0; g < 16; g++) out.set(codes.subarray(g * FRAMES + f, g * FRAMES + f + n), g * n);
    return out;
  };
  /** Pushes the 25 frames `perPush` at a time: wall and CPU ms per frame of each push. */
  const stream = (c2w: Code2Wav, perPush: number) => {
    const warm = new Code2WavStream(c2w); // first use of every kernel
    for (let f = 0; f < 3; f++) warm.push(chunk(f, 1), 1);
    warm.dispose();
    const st = new Code2WavStream(c2w);
    const wall: number[] = [], cpu: number[] = [];
    let samples = 0;
    for (let f = 0; f < FRAMES; f += perPush) {
      const n = Math.min(perPush, FRAMES - f);
      const c0 = process.cpuUsage(), t0 = performance.now();
      samples += st.push(chunk(f, n), n).length;
      wall.push((performance.now() - t0) / n);
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1000 / n);
    }
    const tail = st.flush().length;
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    return { wall, cpu, samples, tail, steadyWall: med(wall.slice(1)), steadyCpu: med(cpu.slice(1)) };
  };
  const r = (x: number, d = 1) => +x.toFixed(d);

  const f32 = Code2Wav.load(randomCheckpoint(), config);
  let float32: object;
  let float32Wav: Float32Array = new Float32Array(0);
  try {
    const s = stream(f32, 1);
    const offlineMs = await medianMs(() => (float32Wav = f32.decode(codes, FRAMES)), 1, 0); // one run: the kernels are warm from the stream
    float32 = {
      frames: FRAMES,
      samplesStreamed: s.samples,
      tailSamples: s.tail,
      firstAudioPacketMs: r(s.wall[0]),
      firstPacketSamples: f32.outputLength(1),
      streamingMsPerFrameMedian: r(s.steadyWall),
      streamingMsPerFrameMax: r(Math.max(...s.wall.slice(1))),
      streamingRealTimeFactor: r(s.steadyWall / 80, 2),
      streamingCpuMsPerFrameMedian: r(s.steadyCpu),
      streamingCpuRealTimeFactor: r(s.steadyCpu / 80, 2),
      firstAudioPacketCpuMs: r(s.cpu[0]),
      streamingTotalSeconds: r(s.wall.reduce((a, b) => a + b, 0) / 1000, 2),
      offlineDecodeMs: r(offlineMs, 0),
      offlineRealTimeFactor: r(offlineMs / 1000 / ((1920 * FRAMES - 555) / 24_000), 2),
      audioSeconds: r((s.samples + s.tail) / 24_000, 2),
      perStageCpuMs: stageProfile(f32, chunk),
    };
  } finally {
    f32.dispose();
  }
  let int8: object;
  const q8 = Code2Wav.load(randomCheckpoint(), config, 'code2wav', { weights: 'int8' }); // the same random weights
  try {
    const s = stream(q8, 1);
    let wav: Float32Array = new Float32Array(0);
    const offlineMs = await medianMs(() => (wav = q8.decode(codes, FRAMES)), 1, 0);
    let signal = 0, noise = 0, worst = 0;
    float32Wav.forEach((v, i) => {
      [signal, noise, worst] = [signal + v * v, noise + (wav[i] - v) ** 2, Math.max(worst, Math.abs(wav[i] - v))];
    });
    int8 = {
      firstAudioPacketMs: r(s.wall[0]),
      streamingMsPerFrameMedian: r(s.steadyWall),
      streamingRealTimeFactor: r(s.steadyWall / 80, 2),
      streamingCpuMsPerFrameMedian: r(s.steadyCpu),
      streamingCpuRealTimeFactor: r(s.steadyCpu / 80, 2),
      firstAudioPacketCpuMs: r(s.cpu[0]),
      offlineDecodeMs: r(offlineMs, 0),
      vsFloat32: { snrDb: r(10 * Math.log10(signal / noise)), maxAbsSampleError: r(worst, 4), waveformRms: r(Math.sqrt(signal / wav.length), 4) },
      perStageCpuMs: stageProfile(q8, chunk),
    };
  } finally {
    q8.dispose();
  }
  const b16 = Code2Wav.load(randomCheckpoint(), config, 'code2wav', { weights: 'bf16' });
  try {
    const s = stream(b16, 1), two = stream(b16, 2);
    return {
      ...float32,
      int8,
      bf16: {
        firstAudioPacketMs: r(s.wall[0]),
        streamingMsPerFrameMedian: r(s.steadyWall),
        streamingRealTimeFactor: r(s.steadyWall / 80, 2),
        streamingCpuMsPerFrameMedian: r(s.steadyCpu),
        streamingCpuRealTimeFactor: r(s.steadyCpu / 80, 2),
        twoFramesPerPush: { msPerFrameMedian: r(two.steadyWall), cpuMsPerFrameMedian: r(two.steadyCpu), realTimeFactor: r(two.steadyWall / 80, 2) },
        perStageCpuMs: stageProfile(b16, chunk),
      },
      goalRealTimeFactor: 1.0,
      referenceAnchor: { pytorchStreamingMsPerFrame: 535, pytorchOfflineRtf: 0.26 },
    };
  } finally {
    b16.dispose();
  }
}

/**
 * CPU ms of each stage of a steady-state streamed frame (median over 8 frames after 3), with a dataSync barrier after
 * each: the embedding + transformer, the upsampling, and each decoder step (Code2Wav.decoderSteps: decoder.0, per
 * block its upsampling and three residual units, the output). The barriers add a little; the sum is close to a push.
 */
export function stageProfile(c2w: Code2Wav, chunk: (f: number, n: number) => Int32Array): object {
  const state = new StreamState();
  const rows: number[][] = [];
  const cpu = () => {
    const c = process.cpuUsage();
    return (c.user + c.system) / 1000;
  };
  for (let f = 0; f < 11; f++) {
    const times: number[] = [], keep: tf.Tensor[] = [];
    let c0 = cpu();
    const lap = <T extends tf.Tensor>(t: T): T => {
      t.dataSync();
      const c1 = cpu();
      times.push(c1 - c0);
      c0 = c1;
      keep.push(t);
      return t;
    };
    let h = lap(c2w.upsample(lap(c2w.preTransformer(c2w.embed(chunk(f % FRAMES, 1), 1), state, f)), state));
    for (let step = 0; step < c2w.decoderSteps; step++) h = lap(c2w.decoderPart(h, state, { from: step, to: step + 1 }));
    state.commit();
    tf.dispose(keep);
    if (f >= 3) rows.push(times);
  }
  state.dispose();
  const med = (i: number) => +rows.map((t) => t[i]).sort((a, b) => a - b)[Math.floor(rows.length / 2)].toFixed(1);
  const decoderSteps = Array.from({ length: c2w.decoderSteps }, (_, s) => med(s + 2));
  return { embedAndTransformer: med(0), upsample: med(1), decoderSteps, total: +(med(0) + med(1) + decoderSteps.reduce((a, b) => a + b, 0)).toFixed(1) };
}

/**
 * The same stream on two worker threads (Code2WavPipeline, cut at Code2Wav.pipelineSplit): frames pushed back to back
 * as a fast talker would, so the halves overlap; throughput RTF = wall time / audio time. With float32 weights (top-level
 * fields), bf16 (`bf16`) and int8 (`int8`), each at its own default cut.
 */
export async function code2wavPipelineBench(rawConfig: unknown): Promise<object> {
  const config = code2WavConfigSchema.parse(rawConfig);
  const run = async (weights: WeightDtype) => {
    const split = Code2Wav.pipelineSplit(config, weights);
    const pipe = await Code2WavPipeline.start({ randomConfig: rawConfig }, { weights, split });
    try {
      let seed = 11;
      const frame = () => Int32Array.from({ length: 16 }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % 2048);
      await Promise.all([0, 1, 2].map(() => pipe.push(frame(), 1))); // warm-up
      await pipe.reset();
      const c0 = process.cpuUsage(), t0 = performance.now();
      let first = 0;
      const pieces = Array.from({ length: FRAMES }, (_, f) => pipe.push(frame(), 1).then((p) => {
        if (f === 0) first = performance.now() - t0;
        return p.length;
      }));
      const samples = (await Promise.all(pieces)).reduce((a, b) => a + b, 0);
      const ms = performance.now() - t0;
      const c = process.cpuUsage(c0);
      const cpuPerFrame = (c.user + c.system) / 1000 / FRAMES;
      return {
        cpuMsPerFrameBothWorkers: +cpuPerFrame.toFixed(1),
        // With two free cores the halves overlap: throughput is bounded by the busier half, at best half the total.
        idealTwoCoreRealTimeFactor: +(cpuPerFrame / 2 / 80).toFixed(2),
        split: `front: embedding, transformer, upsampling, decoder steps 0-${split - 1} | back: steps ${split}-${2 + 4 * config.upsample_rates.length - 1} (Code2Wav.decoderSteps)`,
        firstAudioPacketMs: +first.toFixed(1),
        msPerFrameThroughput: +(ms / FRAMES).toFixed(1),
        realTimeFactor: +(ms / FRAMES / 80).toFixed(2),
        samples,
      };
    } finally {
      await pipe.close();
    }
  };
  const float32 = await run('float32');
  return { ...float32, bf16: await run('bf16'), int8: await run('int8') };
}

/**
 * The weights a variant reads: plain tf.matMul over float32, or omniflow's SIMD kernels over float32, packed bf16 or
 * per-column int8.
 */
type Variant = 'tfjs' | 'float32' | 'bf16' | 'int8';
const dtypeOf = (v: Variant): WeightDtype => (v === 'tfjs' ? 'float32' : v);

/** Bytes a [K, N] matmul weight occupies (and a decode step reads) in a variant's format (int8: runtime-gpu's packInt8 layout). */
function matrixBytes(K: number, N: number, v: Variant): number {
  if (v === 'int8') return int8PackedShape(K, N).reduce((a, b) => a * b, 4);
  return K * N * (v === 'bf16' ? 2 : 4);
}

/**
 * Runs `fn` (one decode unit) for each variant on a model loaded per weight dtype; the float32 model serves both the
 * kernel and the tfjs baseline (useSimdMatMul toggles between them, back to back in the same process).
 */
async function variants<M>(
  load: (dtype: WeightDtype) => M, dispose: (m: M) => void, time: (m: M) => Promise<{ wallMs: number; cpuMs: number }>,
): Promise<Record<Variant, { wallMs: number; cpuMs: number }>> {
  const out = {} as Record<Variant, { wallMs: number; cpuMs: number }>;
  for (const dtype of ['float32', 'bf16', 'int8'] as const) {
    const m = load(dtype);
    try {
      out[dtype] = await time(m);
      if (dtype === 'float32') {
        useSimdMatMul(false);
        try {
          out.tfjs = await time(m);
        } finally {
          useSimdMatMul(true);
        }
      }
    } finally {
      dispose(m);
    }
  }
  return out;
}

/** ms, bytes of weights read and effective bandwidth of each variant, beside the machine's triad bandwidth. */
function report(t: Record<Variant, { wallMs: number; cpuMs: number }>, bytes: (v: Variant) => number, units: number, machineGBps: number): object {
  return Object.fromEntries((['float32', 'bf16', 'int8', 'tfjs'] as const).map((v) => [v, {
    weights: v === 'tfjs' ? 'float32 through tf.matMul (before the SIMD kernel)' : `${dtypeOf(v)} through the SIMD kernel`,
    ms: t[v].wallMs,
    cpuMs: t[v].cpuMs,
    weightMiBRead: mb(bytes(v) * units),
    effectiveGBps: gbps(bytes(v) * units, t[v].wallMs),
    effectiveGBpsByCpuTime: gbps(bytes(v) * units, t[v].cpuMs),
    fractionOfMachine: +(gbps(bytes(v) * units, t[v].cpuMs) / machineGBps).toFixed(2),
  }]));
}

/** code_predictor_config of the release (spec 2.6). */
export const CODE_PREDICTOR_RELEASE = {
  vocab_size: 2048, hidden_size: 1024, num_hidden_layers: 5, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128,
  intermediate_size: 3072, num_code_groups: 16, rms_norm_eps: 1e-6, rope_theta: 1_000_000,
};

/** talker_config.text_config of the release (spec 2.6). */
export const TALKER_TEXT_RELEASE = {
  vocab_size: 3072, hidden_size: 1024, num_hidden_layers: 20, num_attention_heads: 16, num_key_value_heads: 2, head_dim: 128,
  intermediate_size: 2048, moe_intermediate_size: 384, num_experts: 128, num_experts_per_tok: 6, norm_topk_prob: true,
  shared_expert_intermediate_size: 768, rms_norm_eps: 1e-6, rope_theta: 1_000_000,
  rope_scaling: { type: 'default', mrope_section: [24, 20, 20], interleaved: true },
};

/** Code predictor at spec 2.6 dims: ms per codec frame (15 predictions) and effective bandwidth, per variant. */
export async function codePredictorBench(machineGBps: number): Promise<object> {
  const config = codePredictorConfigSchema.parse(CODE_PREDICTOR_RELEASE);
  const h = tf.randomNormal([1, 1024]) as tf.Tensor2D, e0 = tf.randomNormal([1, 1024]) as tf.Tensor2D;
  try {
    const sampler = new Sampler(GREEDY);
    const t = await variants(
      (weights) => CodePredictor.load(randomCheckpoint(), config, undefined, { weights }),
      (mtp) => mtp.dispose(),
      (mtp) => medianWallCpu(() => mtp.predict(h, e0, sampler).embeddingSum.dispose(), 5, 2),
    );
    // Per step: the 5 layers' fused q/k/v, o, fused gate/up, down + one 2048-row head, all in the variant's format.
    const perStep = (v: Variant) => 5 * (matrixBytes(1024, 4096, v) + matrixBytes(2048, 1024, v) + matrixBytes(1024, 6144, v) + matrixBytes(3072, 1024, v))
      + matrixBytes(1024, 2048, v);
    return {
      unit: 'one codec frame = 15 sequential steps (a 2-row prefill, then 14 single rows)',
      ...report(t, perStep, 15, machineGBps),
      weightMiBPerStepFloat32: mb(perStep('float32')),
      bf16MsPerStep: +(t.bf16.wallMs / 15).toFixed(2),
      int8MsPerStep: +(t.int8.wallMs / 15).toFixed(2),
      goalMsPerFrame: 130,
      referenceAnchor: { pytorchMsPerFrame: 270 },
    };
  } finally {
    tf.dispose([h, e0]);
  }
}

/** A talker decode model at spec 2.6 dims whose expert slots share a pool (see the header). */
export interface PooledTalker {
  model: TextModel;
  head: CodecHead;
  layers: TextDecoderLayer[];
  pool: SwiGluMlp[];
  cache: KVCache;
}

export function pooledTalker(c: ThinkerTextConfig, weights: WeightDtype): PooledTalker {
  const ckpt = randomCheckpoint();
  const D = c.hidden_size, E = c.num_experts;
  const pool: SwiGluMlp[] = Array.from({ length: EXPERT_POOL }, (_, i) => loadSwiGluMlp(ckpt, `pool.${i}`, D, c.moe_intermediate_size, weights));
  const layers: TextDecoderLayer[] = Array.from({ length: c.num_hidden_layers }, (_, l) => {
    const p = `talker.model.layers.${l}`;
    const mlp: SparseMoe = {
      // The real router over 128 experts and the shared-expert gate (float32 in every variant, as loadSparseMoe keeps
      // them); slot e of layer l reads pool expert (l·128 + e) mod pool size.
      router: routerWeight(ckpt.get(`${p}.mlp.gate.weight`, [E, D]).data as Float32Array, ckpt.get(`${p}.mlp.shared_expert_gate.weight`, [1, D]).data as Float32Array, D),
      experts: Array.from({ length: E }, (_, e) => pool[(l * E + e) % pool.length]!),
      topK: c.num_experts_per_tok,
      normTopKProb: true,
      sharedExpert: loadSwiGluMlp(ckpt, `${p}.mlp.shared_expert`, D, c.shared_expert_intermediate_size, weights),
      hidden: D,
    };
    return {
      input_layernorm: loadRMSNorm(ckpt, `${p}.input_layernorm.weight`, D, c.rms_norm_eps),
      self_attn: loadDecoderAttention(ckpt, `${p}.self_attn`, { hidden: D, numHeads: 16, numKvHeads: 2, headDim: 128, rmsNormEps: c.rms_norm_eps, weights, fuseQkv: true }),
      post_attention_layernorm: loadRMSNorm(ckpt, `${p}.post_attention_layernorm.weight`, D, c.rms_norm_eps),
      mlp,
    };
  });
  // TextModel.load would read all 2560 experts; the bench assembles the same model object from the pooled layers.
  const model = new (TextModel as unknown as new (...a: unknown[]) => TextModel)(
    c, new Float32Array(c.vocab_size * D), layers, loadRMSNorm(ckpt, 'talker.model.norm.weight', D, c.rms_norm_eps), undefined,
  );
  const head = CodecHead.load(ckpt, { text_config: c, codec_eos_token_id: 2150, code_predictor_config: { vocab_size: 2048 } } as unknown as TalkerConfig, undefined, { weights });
  const cache = model.createCache({ capacity: CONTEXT + 16 });
  const prefill = tf.randomNormal([CONTEXT, D]) as tf.Tensor2D;
  const pos = Float32Array.from({ length: CONTEXT }, (_, i) => i);
  model.forward(prefill, { positions: [pos, pos, pos], cache, logits: 'none' }).lastHiddenState.dispose();
  prefill.dispose();
  return { model, head, layers, pool, cache };
}

export function disposePooledTalker(t: PooledTalker): void {
  t.cache.dispose();
  t.head.dispose();
  for (const l of t.layers) {
    const moe = l.mlp as SparseMoe;
    tf.dispose([l.input_layernorm.weight, l.post_attention_layernorm.weight, moe.router, moe.sharedExpert!.gateUp, moe.sharedExpert!.down]);
    disposeDecoderAttention(l.self_attn);
  }
  for (const e of t.pool) tf.dispose([e.gateUp, e.down]);
  t.model.norm.weight.dispose();
}

/** Talker decode step at spec 2.6 dims and context 100 (experts from a shared pool, see the header), per variant. */
export async function talkerBench(machineGBps: number): Promise<object> {
  const c = talkerTextConfigSchema.parse(TALKER_TEXT_RELEASE);
  const D = c.hidden_size, E = c.num_experts;
  const sampler = new Sampler(GREEDY);
  const t = await variants((weights) => pooledTalker(c, weights), disposePooledTalker, ({ model, head, cache }) => medianWallCpu(() => {
    cache.truncate(CONTEXT);
    const x = tf.randomNormal([1, D]) as tf.Tensor2D; // a fresh input picks fresh experts
    const out = model.forward(x, { positions: [[CONTEXT], [CONTEXT], [CONTEXT]], cache, logits: 'none' });
    const logits = head.logits(out.lastHiddenState);
    head.pick(logits.dataSync() as Float32Array, sampler);
    tf.dispose([x, out.lastHiddenState, logits]);
  }, 7, 2));
  // Per step: per layer the fused q/k/v, o, six experts and the shared expert in the variant's format, the router with
  // the shared-expert gate's column in float32; then the codec head.
  const layer = (v: Variant) => matrixBytes(D, 2048 + 2 * 256, v) + matrixBytes(2048, D, v) + 6 * (matrixBytes(D, 768, v) + matrixBytes(384, D, v))
    + matrixBytes(D, 1536, v) + matrixBytes(768, D, v) + D * (E + 1) * 4;
  const perStep = (v: Variant) => c.num_hidden_layers * layer(v) + matrixBytes(D, 3072, v);
  return {
    context: CONTEXT,
    unit: 'one decode step: 20 MoE layers, final norm, codec head, pick',
    ...report(t, perStep, 1, machineGBps),
    expertPool: `${EXPERT_POOL} distinct real-size experts behind the 128 router slots of each layer`,
    goalMsPerStep: 40,
    referenceAnchor: { pytorchMsPerStep: 78.3 },
  };
}

export async function run(): Promise<object> {
  const backend = await initBackend();
  const memory = measureTriadBandwidth();
  const code2wav = await code2wavBench();
  const code2wavTwoWorkers = await code2wavPipelineBench(CODE2WAV_RELEASE);
  const codePredictor = await codePredictorBench(memory.gbPerSecond);
  const talker = await talkerBench(memory.gbPerSecond);
  return {
    backend: backend.name,
    machineBandwidthGBps: memory.gbPerSecond,
    code2wav,
    code2wavTwoWorkers,
    codePredictor,
    talker,
    notes: [
      'code2wav: float32 weights, bf16 for the weight-streaming layers under `bf16`, int8 for every matrix and decoder conv under `int8`; everything but code2wavTwoWorkers: one wasm thread (Node runs the wasm backend single-threaded)',
      'the machine is shared: cpu* figures (process CPU time) are what the work cost; wall figures include waiting for a core',
      'the talker experts come from a shared pool of real-size experts (the full 12 GB does not fit the wasm heap); routing and per-step reads are as in the release',
    ],
  };
}
