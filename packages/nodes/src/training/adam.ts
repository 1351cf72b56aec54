import * as tf from '@tensorflow/tfjs-core';

/*
 * Adam(W) with global-norm gradient clipping and a warmup + cosine learning-rate schedule, over named variables. The
 * whole state (step and both moments) is plain Float32Arrays, so a checkpoint restores it bit for bit.
 */

export interface AdamOptions {
  readonly beta1?: number;
  readonly beta2?: number;
  readonly epsilon?: number;
  /** Decoupled weight decay (AdamW), applied to matrices only (not norms, biases or 1-D tensors). */
  readonly weightDecay?: number;
  /** Clip the global gradient norm to this value (0: no clipping). */
  readonly clipNorm?: number;
}

/**
 * Learning rate at `step` (0-based): linear warmup to `peak` over `warmup` steps, then cosine decay to
 * `peak · minRatio` at `total`.
 *
 * ```ts
 * learningRate(0, { peak: 1e-3, warmup: 100, total: 1000, minRatio: 0.1 }); // 1e-5
 * learningRate(100, { peak: 1e-3, warmup: 100, total: 1000, minRatio: 0.1 }); // 1e-3
 * ```
 */
export function learningRate(step: number, s: { peak: number; warmup: number; total: number; minRatio: number }): number {
  if (step < s.warmup) return (s.peak * (step + 1)) / s.warmup;
  const progress = Math.min(1, (step - s.warmup) / Math.max(1, s.total - s.warmup));
  return s.peak * (s.minRatio + (1 - s.minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}

/**
 * The optimizer. `apply` takes gradients by variable name.
 *
 * ```ts
 * const adam = new Adam(new Map([['w', w]]), { clipNorm: 1 });
 * const { gradNorm } = adam.apply({ w: dw }, 1e-3);
 * ```
 */
export class Adam {
  step = 0;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  readonly clipNorm: number;

  constructor(readonly variables: ReadonlyMap<string, tf.Variable>, options: AdamOptions = {}) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.98;
    this.epsilon = options.epsilon ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0;
    this.clipNorm = options.clipNorm ?? 0;
    for (const [name, w] of variables) {
      this.m.set(name, tf.variable(tf.zerosLike(w), false));
      this.v.set(name, tf.variable(tf.zerosLike(w), false));
    }
  }

  /** One update with learning rate `lr`; the gradients are not consumed. Returns the global gradient norm before clipping. */
  apply(grads: Readonly<Record<string, tf.Tensor>>, lr: number): { gradNorm: number } {
    for (const name of Object.keys(grads)) if (!this.variables.has(name)) throw new Error(`Adam.apply: gradient for unknown variable '${name}'`);
    const sq = tf.tidy(() => tf.addN(Object.values(grads).map((g) => tf.sum(tf.square(g)))));
    const gradNorm = Math.sqrt(sq.dataSync()[0]!);
    sq.dispose();
    const scale = this.clipNorm > 0 && gradNorm > this.clipNorm ? this.clipNorm / gradNorm : 1;
    this.step++;
    const b1 = this.beta1, b2 = this.beta2;
    const c1 = 1 - b1 ** this.step, c2 = 1 - b2 ** this.step;
    for (const [name, w] of this.variables) {
      const g0 = grads[name];
      if (!g0) continue;
      const m = this.m.get(name)!, v = this.v.get(name)!;
      tf.tidy(() => {
        const g = scale === 1 ? g0 : tf.mul(g0, scale);
        const m1 = tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1));
        const v1 = tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2));
        m.assign(m1);
        v.assign(v1);
        const update = tf.div(tf.div(m1, c1), tf.add(tf.sqrt(tf.div(v1, c2)), this.epsilon));
        let next = tf.sub(w, tf.mul(update, lr));
        if (this.weightDecay > 0 && w.rank >= 2) next = tf.sub(next, tf.mul(w, lr * this.weightDecay));
        w.assign(next);
      });
    }
    return { gradNorm };
  }

  /** The moments by variable name (`<name>.m`, `<name>.v`) as host arrays, and the step. */
  exportState(): { step: number; tensors: Record<string, { shape: number[]; data: Float32Array }> } {
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, m] of this.m) {
      tensors[`${name}.m`] = { shape: m.shape, data: m.dataSync() as Float32Array };
      tensors[`${name}.v`] = { shape: this.v.get(name)!.shape, data: this.v.get(name)!.dataSync() as Float32Array };
    }
    return { step: this.step, tensors };
  }

  /** Restores what exportState gave; every moment must be there with its variable's shape. */
  importState(step: number, tensors: Readonly<Record<string, { shape: readonly number[]; data: Float32Array }>>): void {
    for (const [name, w] of this.variables) {
      for (const [suffix, target] of [['m', this.m.get(name)!], ['v', this.v.get(name)!]] as const) {
        const t = tensors[`${name}.${suffix}`];
        if (!t) throw new Error(`Adam.importState: optimizer state has no '${name}.${suffix}'`);
        if (t.shape.length !== w.shape.length || t.shape.some((d, i) => d !== w.shape[i])) throw new Error(`Adam.importState: '${name}.${suffix}' is [${t.shape}] but the variable is [${w.shape}]`);
        target.assign(tf.tensor(t.data, w.shape, 'float32'));
      }
    }
    this.step = step;
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}
