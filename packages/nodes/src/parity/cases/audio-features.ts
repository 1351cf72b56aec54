import * as tf from '@tensorflow/tfjs-core';
import { logMelFeatures, logMelFrameCount, melFilterBank } from '../../media/log-mel.js';
import { tensorPrefixes, type ParityRunner } from '../types.js';

/**
 * Audio-feature cases (tensors `audio_fe.*`): the Whisper log-mel of `audio_fe.waveform` as Qwen3-Omni's processor
 * computes it, with the case's sampling_rate / n_fft / hop_length / n_mels: the Slaney filter bank, the
 * [1, n_mels, frames] features and the frame mask (one clip, so all ones over the frame count).
 */
export const audioFeaturesRunner: ParityRunner = {
  kind: 'audio-features',
  matches: (_name, spec) => tensorPrefixes(spec).has('audio_fe'),
  async run(ctx) {
    const options = {
      sampleRate: ctx.param<number>('sampling_rate'),
      nFft: ctx.param<number>('n_fft'),
      hopLength: ctx.param<number>('hop_length'),
      nMels: ctx.param<number>('n_mels'),
    };
    const pcm = ctx.tensor('audio_fe.waveform').data as Float32Array;
    const { features, frames } = logMelFeatures(pcm, options);
    const nBins = options.nFft / 2 + 1;
    const maskLength = logMelFrameCount(pcm.length, options.hopLength);
    const batched = tf.reshape(features, [1, options.nMels, frames]);
    features.dispose();
    return {
      'audio_fe.mel_filters': { dtype: 'float32', shape: [nBins, options.nMels], data: melFilterBank(options) },
      'audio_fe.input_features': batched,
      'audio_fe.feature_attention_mask': { dtype: 'int32', shape: [1, maskLength], data: new Int32Array(maskLength).fill(1) },
    };
  },
};
