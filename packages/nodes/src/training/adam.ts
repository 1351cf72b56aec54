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
 * The optimizer, on the host: gradients, moments and the update are Float32Arrays (a few multiply-adds per weight, a
 * few milliseconds for the built-in captioner, where ~14 tensor ops per variable cost ~40 ms on wasm); each variable
 * gets its new values in one assign. `apply` takes gradients by variable name.
 *
 * ```ts
 * const adam = new Adam(new Map([['w', w]]), { clipNorm: 1 });
 * const { gradNorm } = adam.apply({ w: new Float32Array([0.1, -0.2]) }, 1e-3);
 * ```
 */
export class Adam {
  step = 0;
  private readonly m = new Map<string, Float32Array>();
  private readonly v = new Map<string, Float32Array>();
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
      this.m.set(name, new Float32Array(w.size));
      this.v.set(name, new Float32Array(w.size));
    }
  }

  /**
   * One update with learning rate `lr`; the gradients are not modified. A variable without a gradient is left alone.
   * Returns the global gradient norm before clipping.
   */
  apply(grads: Readonly<Record<string, Float32Array>>, lr: number): { gradNorm: number } {
    let sq = 0;
    for (const [name, g] of Object.entries(grads)) {
      const w = this.variables.get(name);
      if (!w) throw new Error(`Adam.apply: gradient for unknown variable '${name}'`);
      if (g.length !== w.size) throw new Error(`Adam.apply: gradient for '${name}' has ${g.length} values, the variable ${w.size}`);
      for (let i = 0; i < g.length; i++) sq += g[i]! * g[i]!;
    }
    const gradNorm = Math.sqrt(sq);
    const scale = this.clipNorm > 0 && gradNorm > this.clipNorm ? this.clipNorm / gradNorm : 1;
    this.step++;
    const b1 = this.beta1, b2 = this.beta2, eps = this.epsilon;
    const c1 = 1 - b1 ** this.step, c2 = 1 - b2 ** this.step;
    for (const [name, variable] of this.variables) {
      const g = grads[name];
      if (!g) continue;
      const m = this.m.get(name)!, v = this.v.get(name)!;
      const w = (variable.dataSync() as Float32Array).slice();
      const decay = this.weightDecay > 0 && variable.rank >= 2 ? lr * this.weightDecay : 0;
      for (let i = 0; i < w.length; i++) {
        const gi = g[i]! * scale;
        m[i] = b1 * m[i]! + (1 - b1) * gi;
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
        // AdamW: the decay uses the weight before this step's update.
        w[i] = w[i]! - (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + eps) - decay * w[i]!;
      }
      // The variable takes the new values' buffer; the temporary tensor object is dropped (not the data).
      const next = tf.tensor(w, variable.shape, 'float32');
      variable.assign(next);
      next.dispose();
    }
    return { gradNorm };
  }

  /** The moments by variable name (`<name>.m`, `<name>.v`) as host arrays (copies), and the step. */
  exportState(): { step: number; tensors: Record<string, { shape: number[]; data: Float32Array }> } {
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, w] of this.variables) {
      tensors[`${name}.m`] = { shape: w.shape, data: this.m.get(name)!.slice() };
      tensors[`${name}.v`] = { shape: w.shape, data: this.v.get(name)!.slice() };
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
        target.set(t.data);
      }
    }
    this.step = step;
  }

  /** Nothing on the device to free (the moments are host arrays); kept so callers own the optimizer like a model. */
  dispose(): void {
    this.m.clear();
    this.v.clear();
  }
}
