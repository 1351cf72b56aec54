import * as tf from '@tensorflow/tfjs-core';
import { LogMel } from '../media/log-mel.js';

/*
 * The caption model's log-mel stage on a worker thread (a WorkerStage module). The wasm backend is single-threaded in
 * Node, so features of the next requests are computed on the second core while the main thread runs the current
 * batch through the encoder and the thinker. Same kernels as the main thread: the features are bit-identical.
 */

let mel: LogMel | undefined;

/**
 * Builds the log-mel kernel once per worker.
 *
 * ```ts
 * setup({ nMels: 128 });
 * ```
 */
export function setup(options: { nMels: number }): void {
  mel = new LogMel({ nMels: options.nMels });
}

/**
 * One clip: `pcm` [samples] 16 kHz mono → features [nMels, frames] (as `LogMel.features`).
 *
 * ```ts
 * const { out } = await workerStage.run({ pcm: { dtype: 'float32', shape: [pcm.length], data: pcm.slice() } });
 * ```
 */
export function stage(inputs: Record<string, tf.Tensor>): tf.Tensor {
  if (!mel) throw new Error('log-mel worker: setup() was not called');
  const pcm = inputs.pcm;
  if (!pcm || pcm.rank !== 1) throw new Error(`log-mel worker: input 'pcm' must be rank 1 [samples], got ${pcm ? `[${pcm.shape}]` : 'nothing'}`);
  return mel.features(pcm as tf.Tensor1D);
}
