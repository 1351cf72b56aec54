import * as tf from '@tensorflow/tfjs-core';
import { WorkerStage } from '@omniflow/runtime-gpu';
import { StreamState } from '../../layers/stream-state.js';
import type { Code2Wav } from './code2wav.js';
import type { WeightDtype } from '../../layers/linear.js';

/**
 * Streaming Code2Wav: push codec frames as the talker produces them and get audio back at once.
 *
 * Everything in Code2Wav is causal except the decoder's transposed convs, which need one input of
 * look-ahead; so each push returns every sample the frames so far determine: `samplesPerFrame·n −
 * lookaheadSamples` after the first n frames, then `samplesPerFrame` per further frame. The stream keeps
 * exactly the left context each layer needs (the last `sliding_window − 1` keys per attention layer, the
 * last `(k−1)·dilation` inputs per conv, the held-back half block per transposed conv), so per-frame cost
 * does not grow with the utterance. The concatenated pushes equal the offline `decode` of the whole
 * utterance; `flush()` at end of turn adds the `lookaheadSamples` tail that the offline decode drops.
 *
 * ```ts
 * const stream = new Code2WavStream(code2wav);
 * for (const frame of frames) play(stream.push(frame, 1)); // frame: Int32Array of 16 codes
 * play(stream.flush()); stream.dispose();
 * ```
 */
export class Code2WavStream {
  private readonly state = new StreamState();
  private position = 0;
  private samples = 0;
  private finished = false;

  constructor(readonly model: Code2Wav) {}

  /** Codec frames pushed so far. */
  get frames(): number {
    return this.position;
  }

  /** Samples returned so far. */
  get samplesOut(): number {
    return this.samples;
  }

  /** Decodes `frames` more frames (group-major codes) and returns the samples they complete. */
  push(codes: Int32Array, frames: number): Float32Array {
    if (this.finished) throw new Error('code2wav stream: push after flush() or dispose()');
    let wav: tf.Tensor2D;
    try {
      wav = this.model.forward(codes, frames, this.state, this.position);
    } catch (err) {
      this.state.rollback(); // the stream stays as it was before this push
      throw err;
    }
    this.state.commit();
    this.position += frames;
    return this.download(wav);
  }

  /** End of turn: returns the held-back tail (empty if nothing was pushed); the stream takes no more frames. */
  flush(): Float32Array {
    if (this.finished) return new Float32Array(0);
    this.finished = true;
    const tail = this.model.decoderTail(this.state);
    this.state.dispose();
    return tail ? this.download(tail) : new Float32Array(0);
  }

  /** Drops the carried context (an interrupt): nothing more is emitted. */
  dispose(): void {
    this.finished = true;
    this.state.dispose();
  }

  private download(t: tf.Tensor): Float32Array {
    try {
      const out = t.dataSync() as Float32Array;
      this.samples += out.length;
      return out;
    } finally {
      t.dispose();
    }
  }
}

/** Where the pipeline's Code2Wav weights come from. */
export type Code2WavPipelineSource = { checkpoint: string } | { randomConfig: unknown };

/**
 * Streaming Code2Wav on two worker threads, so it can use both cores: the front worker runs embedding → transformer →
 * upsampling → the first `split` decoder steps (Code2Wav.decoderSteps; default Code2Wav.pipelineSplit), the back worker
 * the rest. Pushes pipeline: while the back half finishes frame n the front half works on frame n+1. Output equals Code2WavStream's.
 * Each push costs one postMessage round trip per half (~0.1 ms), negligible beside a frame.
 *
 * ```ts
 * const pipe = await Code2WavPipeline.start({ checkpoint: 'models/Qwen3-Omni-30B-A3B-Instruct' });
 * const pieces = frames.map((f) => pipe.push(f, 1)); // in flight together
 * for (const p of pieces) play(await p);
 * play(await pipe.flush()); await pipe.close();
 * ```
 */
export class Code2WavPipeline {
  private constructor(private readonly frontStage: WorkerStage, private readonly backStage: WorkerStage, readonly groups: number) {}

  /**
   * Starts both workers and loads the weights in each (the module path defaults to this package's worker module).
   * `split`: decoder steps in front (default Code2Wav.pipelineSplit); `weights`: the weight format (Code2Wav.load).
   */
  static async start(
    source: Code2WavPipelineSource,
    options: { split?: number; groups?: number; weights?: WeightDtype; module?: string | URL } = {},
  ): Promise<Code2WavPipeline> {
    const module = options.module ?? new URL(import.meta.url.endsWith('.ts') ? './code2wav-worker.ts' : './code2wav-worker.js', import.meta.url);
    const setup = { ...source, split: options.split, weights: options.weights };
    const [front, back] = await Promise.all([
      WorkerStage.start({ module, export: 'front', setup }),
      WorkerStage.start({ module, export: 'back', setup }),
    ]);
    return new Code2WavPipeline(front, back, options.groups ?? 16);
  }

  /** Decodes `frames` frames (group-major codes); resolves with the samples they complete. */
  push(codes: Int32Array, frames: number): Promise<Float32Array> {
    if (codes.length !== this.groups * frames) throw new Error(`Code2WavPipeline.push: expected ${this.groups} x ${frames} codes, got ${codes.length}`);
    const h = this.frontStage.run({ codes: { dtype: 'int32', shape: [this.groups, frames], data: codes.slice() } });
    return h.then((o) => this.backStage.run({ h: o.out })).then((o) => o.out.data as Float32Array);
  }

  /** End of stream: the held-back tail; then `reset` before the next stream. */
  flush(): Promise<Float32Array> {
    const flag = () => ({ flush: { dtype: 'float32' as const, shape: [1], data: new Float32Array(1) } });
    return this.frontStage.run(flag()).then((o) => this.backStage.run({ h: o.out, ...flag() })).then((o) => o.out.data as Float32Array);
  }

  /** Starts a new stream in both halves. */
  async reset(): Promise<void> {
    const flag = () => ({ reset: { dtype: 'float32' as const, shape: [1], data: new Float32Array(1) } });
    await Promise.all([this.frontStage.run(flag()), this.backStage.run(flag())]);
  }

  async close(): Promise<void> {
    await Promise.all([this.frontStage.close(), this.backStage.close()]);
  }
}
