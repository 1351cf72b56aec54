import * as tf from '@tensorflow/tfjs-core';
import { Checkpoint, type HostTensor } from '@omniflow/runtime-gpu';
import { StreamState } from '../../layers/stream-state.js';
import { Code2Wav } from './code2wav.js';
import type { WeightDtype } from '../../layers/linear.js';
import { code2WavConfigSchema, readQwen3OmniConfig } from './config.js';

/*
 * One half of a streaming Code2Wav on a worker thread (the stage module behind Code2WavPipeline). The wasm backend is
 * single-threaded in Node, so the decoder is cut in two at a decoder block: the `front` worker runs the embedding, the
 * transformer, the upsampling and the first decoder steps (Code2Wav.decoderSteps); the `back` worker the remaining steps
 * and the output. Each keeps the streaming state of its own layers.
 */

export interface Code2WavWorkerSetup {
  /** A checkpoint folder (config.json + code2wav.* tensors)… */
  checkpoint?: string;
  /** …or a raw code2wav_config to build random weights from (benchmarks). */
  randomConfig?: unknown;
  /** The weight format (Code2Wav.load); default float32. */
  weights?: WeightDtype;
  /** Decoder steps (Code2Wav.decoderSteps) run by the front half (default Code2Wav.pipelineSplit); the back half runs the rest. */
  split?: number;
}

let model: Code2Wav | undefined;
let state = new StreamState();
let split = 0;
let position = 0;

/**
 * A checkpoint stand-in with random weights made on request (uniform ±2/√fan_in matrices, unit norms, zero log-space
 * SnakeBeta parameters, small LayerScale / ConvNeXt gains): real shapes and real work, for benchmarks.
 *
 * ```ts
 * const c2w = Code2Wav.load(randomCheckpoint(), code2WavConfigSchema.parse(rawConfig));
 * ```
 */
export function randomCheckpoint(seed = 0x9e3779b9): Checkpoint {
  let s = seed >>> 0 || 1;
  const rand = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296 - 0.5;
  };
  const get = (name: string, shape?: readonly number[]): HostTensor => {
    if (!shape) throw new Error(`random checkpoint: '${name}' asked for without a shape`);
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (/(norm|layernorm)\.weight$/.test(name)) data.fill(1);
    else if (/\.(alpha|beta)$/.test(name) || /norm\.bias$/.test(name)) data.fill(0);
    else if (/layer_scale\.scale$/.test(name)) data.fill(0.01);
    else if (/\.gamma$/.test(name)) data.fill(0.1);
    else {
      const scale = 2 / Math.sqrt(shape.length === 1 ? shape[0] : n / shape[0]);
      for (let i = 0; i < n; i++) data[i] = rand() * scale;
    }
    return { dtype: 'float32', shape: [...shape], data };
  };
  return { get, has: () => true, keys: () => [], unused: () => [], close: () => undefined, path: '(random weights in memory)' } as unknown as Checkpoint;
}

export function setup(options: Code2WavWorkerSetup): void {
  const load = { weights: options.weights };
  if (options.checkpoint) {
    const { config } = readQwen3OmniConfig(options.checkpoint);
    if (!config.code2wav_config) throw new Error(`${options.checkpoint}/config.json has no code2wav_config`);
    const ckpt = Checkpoint.open(options.checkpoint);
    try {
      model = Code2Wav.load(ckpt, config.code2wav_config, 'code2wav', load);
    } finally {
      ckpt.close();
    }
  } else {
    model = Code2Wav.load(randomCheckpoint(), code2WavConfigSchema.parse(options.randomConfig), 'code2wav', load);
  }
  const wanted = options.split ?? Code2Wav.pipelineSplit(model.config, options.weights);
  if (!Number.isInteger(wanted) || wanted < 0 || wanted > model.decoderSteps) {
    throw new Error(`code2wav worker: split ${wanted} is outside the decoder steps [0, ${model.decoderSteps}]`);
  }
  split = wanted;
}

/** Runs `fn` against the stream state: commit on success, roll back on error. */
function step<T>(fn: () => T): T {
  try {
    const out = fn();
    state.commit();
    return out;
  } catch (err) {
    state.rollback();
    throw err;
  }
}

/** A new stream: drop the carried context. */
function reset(): tf.Tensor {
  state.dispose();
  state = new StreamState();
  position = 0;
  return tf.zeros([0]);
}

/** Front half. Inputs: `codes` int32 [G, frames] (group-major), or `flush`, or `reset`. Output: activation [1, L, C]. */
export function front(inputs: Record<string, tf.Tensor>): tf.Tensor {
  const m = model!;
  if (inputs.reset) return reset();
  if (inputs.flush) return step(() => m.decoderTailPart(undefined, state, { from: 0, to: split }) ?? tf.zeros([1, 0, 1]));
  const codes = inputs.codes;
  const frames = codes.shape[1]!;
  const out = step(() => {
    const x = m.upsample(m.preTransformer(m.embed(codes.dataSync() as Int32Array, frames), state, position), state);
    return m.decoderPart(x, state, { from: 0, to: split });
  });
  position += frames;
  return out;
}

/** Back half. Inputs: `h` (the front's output), with `flush` at end of stream, or `reset`. Output: samples [N]. */
export function back(inputs: Record<string, tf.Tensor>): tf.Tensor {
  const m = model!;
  if (inputs.reset) return reset();
  const h = inputs.h as tf.Tensor3D;
  const wav = step(() =>
    inputs.flush ? m.decoderTailPart(h.shape[1] ? h : undefined, state, { from: split, to: m.decoderSteps }) : m.decoderPart(h, state, { from: split, to: m.decoderSteps }));
  return wav ? tf.reshape(wav, [-1]) : tf.zeros([0]);
}
