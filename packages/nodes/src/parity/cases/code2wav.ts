import * as tf from '@tensorflow/tfjs-core';
import { Code2Wav } from '../../models/qwen3-omni/code2wav.js';
import { tensorPrefixes, type ParityOutputs, type ParityRunner } from '../types.js';

/**
 * Code2Wav cases (tensors `code2wav.*`): decodes `codes` [1, G, T] with the folder's `code2wav_config` and
 * checkpoint, reporting every stage (embedding mean, pre-transformer, upsampled, unclamped and clamped waveform)
 * and the reference chunked decode with the case's `chunk_size` / `left_context_size`.
 */
export const code2WavRunner: ParityRunner = {
  kind: 'code2wav',
  matches: (_name, spec) => tensorPrefixes(spec).has('code2wav'),
  async run(ctx) {
    const p = 'code2wav';
    const config = ctx.config.code2wav_config;
    if (!config) throw new Error(`${ctx.fixtureDir}/config.json has no code2wav_config, which case ${ctx.caseName} needs`);
    const c2w = Code2Wav.load(ctx.ckpt, config);
    try {
      const input = ctx.tensor(`${p}.codes`);
      const frames = input.shape[2]!;
      const codes = input.data as Int32Array;
      const stages = tf.tidy(() => {
        const embed = c2w.embed(codes, frames);
        const pre = c2w.preTransformer(embed);
        const up = c2w.upsample(pre);
        const raw = c2w.decoder(up, undefined, false);
        // The reference is channels-first [1, C, L]; ours channels-last [1, L, C].
        return { embed, pre, up: tf.transpose(up, [0, 2, 1]), raw: tf.reshape(raw, [1, 1, raw.shape[1]]) };
      });
      const wav = c2w.decode(codes, frames);
      const result: ParityOutputs = {
        [`${p}.embed_mean`]: stages.embed,
        [`${p}.pre_transformer`]: stages.pre,
        [`${p}.upsampled`]: stages.up,
        [`${p}.wav_unclamped`]: stages.raw,
        [`${p}.wav`]: { dtype: 'float32', shape: [1, 1, wav.length], data: wav },
      };
      if (`${p}.wav_chunked` in ctx.caseSpec.tensors) {
        const chunked = c2w.chunkedDecode(codes, frames, ctx.param<number>('chunk_size'), ctx.param<number>('left_context_size'));
        result[`${p}.wav_chunked`] = { dtype: 'float32', shape: [1, 1, chunked.length], data: chunked };
      }
      return result;
    } finally {
      c2w.dispose();
    }
  },
};
