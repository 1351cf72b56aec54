import * as tf from '@tensorflow/tfjs-core';
import { AudioEncoder } from '../../models/qwen3-omni/audio-encoder.js';
import { tensorPrefixes, type ParityOutputs, type ParityRunner } from '../types.js';

/**
 * Audio-encoder cases (tensors `audio_enc.*`): encodes `input_features` [mel, frames] with `feature_lens` using the
 * folder's config (`thinker_config.audio_config`) and checkpoint, and reports the chunk plan, the conv embeddings and
 * the encoder output.
 */
export const audioEncoderRunner: ParityRunner = {
  kind: 'audio-encoder',
  matches: (_name, spec) => tensorPrefixes(spec).has('audio_enc'),
  async run(ctx) {
    const p = 'audio_enc';
    const enc = AudioEncoder.load(ctx.ckpt, ctx.config.thinker_config.audio_config);
    const input = ctx.tensor(`${p}.input_features`);
    const features = tf.tensor2d(input.data as Float32Array, input.shape as [number, number]);
    try {
      const out = enc.encode(features, Array.from(ctx.tensor(`${p}.feature_lens`).data), { keepConvEmbeds: true });
      const { plan } = out;
      const result: ParityOutputs = {
        [`${p}.chunk_lengths`]: plan.chunkLengths,
        [`${p}.chunk_lengths_after_cnn`]: plan.chunkLengthsAfterCnn,
        [`${p}.valid_indices`]: plan.validIndices,
        [`${p}.cu_seqlens`]: plan.cuSeqlens,
        [`${p}.output_lengths`]: out.outputLengths,
        [`${p}.conv_embeds`]: out.convEmbeds!,
        [`${p}.last_hidden_state`]: out.embeds,
      };
      return result;
    } finally {
      features.dispose();
      enc.dispose();
    }
  },
};
