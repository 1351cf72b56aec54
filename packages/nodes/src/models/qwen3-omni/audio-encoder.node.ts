import * as tf from '@tensorflow/tfjs-core';
import type { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, disposePacket, ports, tensorPacket, type TensorPacket } from '@omniflow/core';
import { Checkpoint, initBackend } from '@omniflow/runtime-gpu';
import { AudioEncoder } from './audio-encoder.js';
import { readQwen3OmniConfig } from './config.js';

/*
 * The `audioEncoder` node: one clip's log-mel features in, its audio-token embeddings out — the rows the thinker
 * splices over `<|audio_pad|>`.
 */

/** Something that holds a loaded audio encoder (a model from `loadQwen3Omni`). */
interface HasAudioEncoder {
  readonly audioEncoder: AudioEncoder | undefined;
}

export const audioEncoderParams = z.object({
  /**
   * An `AudioEncoder`, a model from `loadQwen3Omni` (its audio encoder is borrowed), or a checkpoint folder whose
   * `thinker.audio_tower` is loaded when the node opens and freed when it closes.
   */
  model: z.union([
    z.string().min(1),
    z.custom<AudioEncoder>((v) => v instanceof AudioEncoder),
    z.custom<HasAudioEncoder>((v) => typeof v === 'object' && v !== null && 'audioEncoder' in v, {
      message: 'expected a checkpoint folder, an AudioEncoder or a model from loadQwen3Omni()',
    }),
  ]),
});
export type AudioEncoderParams = z.output<typeof audioEncoderParams>;

interface EncoderResource {
  readonly encoder: AudioEncoder;
  readonly owned: boolean;
}

/** Resolves the `model` param: instances are borrowed, a folder is loaded (and owned). */
async function openAudioEncoder(model: AudioEncoderParams['model']): Promise<EncoderResource> {
  if (model instanceof AudioEncoder) return { encoder: model, owned: false };
  if (typeof model !== 'string') {
    if (!model.audioEncoder) throw new Error('audioEncoder: the model was loaded without its audio encoder (thinker.audio_tower)');
    return { encoder: model.audioEncoder, owned: false };
  }
  await initBackend();
  const { config } = readQwen3OmniConfig(model);
  const ckpt = Checkpoint.open(model);
  try {
    return { encoder: AudioEncoder.load(ckpt, config.thinker_config.audio_config), owned: true };
  } finally {
    ckpt.close();
  }
}

/** Encodes one `input_features` packet; the input tensor is consumed. */
function encodePacket(encoder: AudioEncoder, p: TensorPacket, node: string): TensorPacket {
  try {
    const x = p.tensor as tf.Tensor;
    if (p.name !== 'input_features' || x.rank !== 2) {
      throw new Error(`${node}: port 'features' expects 'input_features' [mel, frames] tensors, got '${p.name}' [${x.shape}]`);
    }
    const { embeds } = encoder.encode(x as tf.Tensor2D, [x.shape[1]!]);
    return tensorPacket({ session: p.session, turn: p.turn, pts: p.pts, uninterruptible: p.uninterruptible, name: 'audio_embeds', tensor: embeds });
  } finally {
    disposePacket(p);
  }
}

/**
 * Encodes each clip's log-mel features (`input_features` [num_mel_bins, frames], one clip per packet) into
 * `audio_embeds` [audio tokens, output_dim] with the same session, turn and pts. Clips of an interrupted turn are
 * dropped (and freed) without being encoded.
 *
 * ```ts
 * features$.pipe(audioEncoder({ model: '/models/Qwen3-Omni-30B-A3B-Captioner' }))
 *   .subscribe((p) => console.log(p.name, p.tensor.shape)); // audio_embeds [20, 2048] for 1.5 s
 * ```
 */
export const audioEncoder = defineNode({
  type: 'audioEncoder',
  description: 'Qwen3-Omni audio encoder (AuT): log-mel features of one clip in, audio-token embeddings out',
  inputs: { features: ports.tensor({ name: 'input_features', dtype: 'float32', description: '[num_mel_bins, frames], one clip per packet' }) },
  outputs: { embeds: ports.tensor({ name: 'audio_embeds', dtype: 'float32', description: '[audio tokens, output_dim]' }) },
  params: audioEncoderParams,
  open: (params) => openAudioEncoder(params.model),
  operator: (_params, ctx, resource) => (features$: Observable<TensorPacket>) =>
    features$.pipe(ctx.mapAsync((p: TensorPacket) => [encodePacket(resource.encoder, p, ctx.node)])),
  close: (resource) => {
    if (resource.owned) resource.encoder.dispose();
  },
});
