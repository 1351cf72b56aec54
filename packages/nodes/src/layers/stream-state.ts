import * as tf from '@tensorflow/tfjs-core';

/**
 * The left context a streaming (causal) model carries from one chunk to the next: one tensor per named
 * layer (a conv's last input samples, an attention layer's recent keys). A step reads the previous
 * tensors with `get`, stages the new ones with `set` (inside its `tf.tidy`), and then either `commit`s
 * (old tensors are disposed, staged ones become current) or `rollback`s on error, so a failed step
 * leaves the stream exactly as it was.
 *
 * ```ts
 * const state = new StreamState();
 * const y = tf.tidy(() => causalConv1d(x, conv, state, 'decoder.0'));
 * state.commit();
 * ```
 */
export class StreamState {
  private readonly current = new Map<string, tf.Tensor>();
  private readonly staged = new Map<string, tf.Tensor>();

  /**
   * The latest tensor of `name`: staged earlier in this step if a layer ran twice (a flush), else committed
   * by the previous step; undefined at the start of a stream. Still owned by the state.
   */
  get(name: string): tf.Tensor | undefined {
    return this.staged.get(name) ?? this.current.get(name);
  }

  /** Stages `tensor` as the new value of `name`; the state takes ownership (it survives the caller's tidy). */
  set(name: string, tensor: tf.Tensor): void {
    this.staged.get(name)?.dispose();
    this.staged.set(name, tf.keep(tensor));
  }

  commit(): void {
    for (const [name, t] of this.staged) {
      this.current.get(name)?.dispose();
      this.current.set(name, t);
    }
    this.staged.clear();
  }

  rollback(): void {
    for (const t of this.staged.values()) t.dispose();
    this.staged.clear();
  }

  /** Number of tensors the state holds (for leak checks and reports). */
  get size(): number {
    return this.current.size;
  }

  dispose(): void {
    this.rollback();
    for (const t of this.current.values()) t.dispose();
    this.current.clear();
  }
}
