import * as tf from '@tensorflow/tfjs-core';
import type { HostTensor } from '@omniflow/runtime-gpu';
import { LogMel } from '../media/log-mel.js';
import { loadQwen3Omni } from '../models/qwen3-omni/load.js';
import { captionExample, labelledClip, loadCaptionFolder, type CaptionDataSource, type LabelledClip } from './caption-data.js';
import { TrainableCaptioner, type CaptionLossOptions } from './trainable-captioner.js';
import { registerTfjsGradients } from './tfjs-gradients.js';
import { registerWasmGradientKernels } from './wasm-gradient-kernels.js';

/*
 * A data-parallel gradient worker (a WorkerStage module): it holds a replica of the captioner, and for each request
 * takes the current weights and a list of example indices, builds those examples itself (scene generation, log-mel)
 * and returns the summed-loss gradients. The trainer averages the shards' gradients and applies one update.
 */

export interface GradientStageSetup {
  readonly modelDir: string;
  readonly data: CaptionDataSource;
  /** Focal-loss γ (0: plain cross-entropy), as TrainCaptionerOptions.focalGamma. */
  readonly focalGamma?: number;
}

let replica: { trainable: TrainableCaptioner; logMel: LogMel; data: CaptionDataSource; folder?: LabelledClip[]; focalGamma: number } | undefined;

/**
 * A model folder loaded for training, as the trainer and each gradient worker hold it: tfjs's gradient functions
 * registered, the captioner's two modules loaded, the wasm training kernels registered once that backend is up (not
 * before: its own kernels would replace them), the weights made trainable, and the log-mel extractor of its config.
 */
export async function loadTrainableCaptioner(dir: string): Promise<{ trainable: TrainableCaptioner; logMel: LogMel }> {
  await registerTfjsGradients();
  const model = await loadQwen3Omni(dir, { modules: ['thinker', 'audio_tower'] });
  if (model.report.backend === 'wasm') registerWasmGradientKernels();
  return { trainable: new TrainableCaptioner(model), logMel: new LogMel({ nMels: model.config.thinker_config.audio_config.num_mel_bins }) };
}

export async function setup(options: GradientStageSetup): Promise<void> {
  const { trainable, logMel } = await loadTrainableCaptioner(options.modelDir);
  replica = { trainable, logMel, data: options.data, folder: options.data.kind === 'folder' ? await loadCaptionFolder(options.data.dir) : undefined, focalGamma: options.focalGamma ?? 0 };
}

/**
 * Inputs: every parameter by name (current weights, flat) and `__indices` (int32 example indices). Outputs: gradients
 * of the token-summed loss by name, and `__loss` = [loss sum, tokens].
 */
export function stage(inputs: Record<string, tf.Tensor>): Record<string, tf.Tensor> {
  if (!replica) throw new Error('gradient stage: setup did not run');
  const { trainable, logMel, data, folder, focalGamma } = replica;
  const indices = inputs.__indices;
  if (!indices) throw new Error('gradient stage: no __indices input');
  for (const p of trainable.parameters) {
    const w = inputs[p.name];
    if (!w) throw new Error(`gradient stage: no weights for parameter '${p.name}'`);
    p.variable.assign(tf.reshape(w, p.variable.shape));
  }
  const examples = Array.from(indices.dataSync(), (i) => captionExample(labelledClip(data, i, folder), trainable.model.tokenizer, logMel));
  const { loss, tokens, grads } = shardGradients(trainable, examples, { focalGamma });
  const out: Record<string, tf.Tensor> = { __loss: tf.tensor1d([loss, tokens]) };
  for (const [name, g] of grads) out[name] = tf.tensor(g.data, g.shape, 'float32');
  return out;
}

/**
 * Gradients of Σ (per-token cross-entropy, or focal loss with `focalGamma`) over the examples — the sum, not the
 * mean, so shards of different token counts add up exactly — as host arrays by parameter name.
 */
export function shardGradients(trainable: TrainableCaptioner, examples: Parameters<TrainableCaptioner['loss']>[0], options: CaptionLossOptions = {}): { loss: number; tokens: number; grads: Map<string, HostTensor> } {
  let tokens = 0;
  const vars = trainable.parameters.map((p) => p.variable);
  const { value, grads } = tf.variableGrads(() => {
    const r = trainable.loss(examples, options);
    tokens = r.tokens;
    return tf.mul(r.loss, r.tokens) as tf.Scalar;
  }, vars);
  const loss = value.dataSync()[0]!;
  value.dispose();
  const out = new Map<string, HostTensor>();
  for (const p of trainable.parameters) {
    const g = grads[p.variable.name];
    // An expert no token of the shard was routed to has no gradient: zero.
    if (!g) out.set(p.name, { dtype: 'float32', shape: p.variable.shape, data: new Float32Array(p.variable.size) });
    else {
      out.set(p.name, { dtype: 'float32', shape: g.shape, data: g.dataSync() as Float32Array });
      g.dispose();
    }
  }
  return { loss, tokens, grads: out };
}
