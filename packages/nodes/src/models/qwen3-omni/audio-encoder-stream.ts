import * as tf from '@tensorflow/tfjs-core';
import { audioOutputLength, type AudioEncoder } from './audio-encoder.js';

/**
 * Encodes one clip while it is still arriving. The audio encoder never attends across its attention windows
 * (`n_window_infer` frames, 8 s in the release) and convolves each 100-frame chunk on its own, so every complete
 * window can be encoded as soon as its frames are in; at the end only the tail window is left. The rows are the
 * same as encoding the whole clip at once, including the reference's zero-padding of a short last chunk to a full
 * chunk (a clip shorter than one chunk is not padded, as in the reference).
 *
 * Use it for live input: by the time the user stops talking, all but the last few seconds are encoded.
 *
 * ```ts
 * const stream = new AudioEncoderStream(encoder);
 * for await (const features of melChunks) stream.push(features); // [num_mel_bins, n] each, any n
 * const { embeds, frames } = stream.finish(); // [audioOutputLength(frames), output_dim]
 * ```
 */
export class AudioEncoderStream {
  /** Mel frames in one attention window: whole windows are encoded as soon as they are complete. */
  readonly windowFrames: number;
  private pending: tf.Tensor2D | undefined;
  private readonly encoded: tf.Tensor2D[] = [];
  private frames = 0;
  private done = false;

  constructor(readonly encoder: AudioEncoder) {
    const { n_window, n_window_infer } = encoder.config;
    this.windowFrames = 2 * n_window * Math.floor(n_window_infer / (2 * n_window));
    if (this.windowFrames <= 0) throw new Error(`AudioEncoderStream: n_window_infer ${n_window_infer} is shorter than one chunk (${2 * n_window} frames)`);
  }

  /** Mel frames pushed so far. */
  get framesSeen(): number {
    return this.frames;
  }

  /** Audio tokens already encoded (complete windows). */
  get tokensEncoded(): number {
    return this.encoded.reduce((a, t) => a + t.shape[0], 0);
  }

  /** Appends `features` ([num_mel_bins, n], not consumed) and encodes every window that is now complete. */
  push(features: tf.Tensor2D): void {
    if (this.done) throw new Error('AudioEncoderStream: push after finish');
    const mel = this.encoder.config.num_mel_bins;
    if (features.rank !== 2 || features.shape[0] !== mel) {
      throw new Error(`AudioEncoderStream: features must be [num_mel_bins=${mel}, frames], got [${features.shape}]`);
    }
    if (features.shape[1] === 0) return;
    const all = this.pending ? (tf.concat([this.pending, features], 1) as tf.Tensor2D) : (tf.clone(features) as tf.Tensor2D);
    this.pending?.dispose();
    this.pending = all;
    this.frames += features.shape[1];
    const whole = Math.floor(all.shape[1] / this.windowFrames) * this.windowFrames;
    if (whole === 0) return;
    const rest = all.shape[1] - whole;
    const head = tf.slice(all, [0, 0], [mel, whole]) as tf.Tensor2D;
    try {
      // Several complete windows go through as one audio: its windows are exactly these.
      this.encoded.push(this.encoder.encode(head, [whole]).embeds);
    } finally {
      head.dispose();
    }
    this.pending = rest > 0 ? (tf.slice(all, [0, whole], [mel, rest]) as tf.Tensor2D) : undefined;
    all.dispose();
  }

  /**
   * Encodes what is left and returns every row of the clip, [audioOutputLength(frames), output_dim] (caller-owned),
   * with the frame count. The stream is finished afterwards.
   */
  finish(): { embeds: tf.Tensor2D; frames: number } {
    if (this.done) throw new Error('AudioEncoderStream: finish called twice');
    if (this.frames === 0) throw new Error('AudioEncoderStream: no features were pushed');
    this.done = true;
    const chunk = 2 * this.encoder.config.n_window;
    if (this.pending) {
      // The whole clip's chunks are padded to its longest chunk, a full one once the clip has one.
      const padChunksTo = this.frames >= chunk ? chunk : 0;
      this.encoded.push(this.encoder.encode(this.pending, [this.pending.shape[1]], { padChunksTo }).embeds);
      this.pending.dispose();
      this.pending = undefined;
    }
    const embeds = this.encoded.length === 1 ? this.encoded[0] : (tf.concat(this.encoded, 0) as tf.Tensor2D);
    if (this.encoded.length > 1) for (const t of this.encoded) t.dispose();
    this.encoded.length = 0;
    const expected = audioOutputLength(this.frames, this.encoder.config.n_window);
    if (embeds.shape[0] !== expected) {
      embeds.dispose();
      throw new Error(`AudioEncoderStream: ${this.frames} frames gave ${embeds.shape[0]} rows, expected ${expected}`);
    }
    return { embeds, frames: this.frames };
  }

  /** Frees what the stream holds (pending frames, encoded windows not yet returned). */
  dispose(): void {
    this.pending?.dispose();
    this.pending = undefined;
    for (const t of this.encoded) t.dispose();
    this.encoded.length = 0;
    this.done = true;
  }
}
