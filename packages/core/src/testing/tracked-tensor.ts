/**
 * A tensor-like resource for tests of ownership: it counts how many are alive, so a test can assert
 * that everything a graph created was released (the way tfjs tests check `tf.memory().numTensors`).
 */
import type { TensorHandle } from '../packets.js';

/**
 * ```ts
 * const tracker = new TensorTracker();
 * const t = tracker.tensor([1, 4]);
 * t.dispose();
 * tracker.live; // 0
 * ```
 */
export class TensorTracker {
  created = 0;
  disposed = 0;
  get live(): number {
    return this.created - this.disposed;
  }
  tensor(shape: number[] = [1], dtype = 'float32'): TrackedTensor {
    this.created++;
    return new TrackedTensor(this, shape, dtype);
  }
}

export class TrackedTensor implements TensorHandle {
  private disposedFlag = false;
  constructor(
    private readonly tracker: TensorTracker,
    readonly shape: number[],
    readonly dtype: string,
  ) {}
  get isDisposed(): boolean {
    return this.disposedFlag;
  }
  dispose(): void {
    if (this.disposedFlag) return;
    this.disposedFlag = true;
    this.tracker.disposed++;
  }
}
