import * as tf from '@tensorflow/tfjs-core';
import { StreamState } from '../../layers/stream-state.js';
import type { Code2Wav } from './code2wav.js';

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
