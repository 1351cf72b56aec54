import * as tf from '@tensorflow/tfjs-core';
import { matMulWeight, packWeight, type WeightDtype, type WeightSource } from './linear.js';

/**
 * SwiGLU MLP `down(silu(gate(x)) ⊙ up(x))`, no biases (spec 3.1). gate_proj and up_proj are stored side by side in one
 * `[in, 2·intermediate]` matrix (gate first, like transformers' fused `gate_up_proj`), so one matmul computes both.
 */
export interface SwiGluMlp {
  /** [hidden, 2 · intermediate] (int32 [hidden, intermediate] packed when bf16, see packWeight). */
  readonly gateUp: tf.Tensor2D;
  /** [intermediate, hidden] (int32 [intermediate, hidden / 2] when bf16). */
  readonly down: tf.Tensor2D;
  readonly hidden: number;
  readonly intermediate: number;
}

/**
 * Loads `${prefix}.gate_proj/up_proj/down_proj.weight` (PyTorch [out, in]) into the pre-transposed fused layout, in
 * the given weight format.
 *
 * ```ts
 * const mlp = loadSwiGluMlp(ckpt, 'thinker.model.layers.0.mlp.experts.3', 2048, 768);
 * const y = swiGlu(x, mlp); // [n, 2048] -> [n, 2048]
 * ```
 */
export function loadSwiGluMlp(ckpt: WeightSource, prefix: string, hidden: number, intermediate: number, format: WeightDtype = 'float32'): SwiGluMlp {
  const gate = ckpt.get(`${prefix}.gate_proj.weight`, [intermediate, hidden]).data as Float32Array;
  const up = ckpt.get(`${prefix}.up_proj.weight`, [intermediate, hidden]).data as Float32Array;
  const down = ckpt.get(`${prefix}.down_proj.weight`, [hidden, intermediate]).data as Float32Array;
  return swiGluFromPyTorch(gate, up, down, hidden, intermediate, format);
}

/**
 * Builds the fused layout from PyTorch-layout host arrays (gate, up: [I, H]; down: [H, I]).
 *
 * ```ts
 * const mlp = swiGluFromPyTorch(gate, up, down, 1024, 512); // e.g. weights made in memory for a benchmark
 * ```
 */
export function swiGluFromPyTorch(gate: Float32Array, up: Float32Array, down: Float32Array, hidden: number, intermediate: number, format: WeightDtype = 'float32'): SwiGluMlp {
  // Transpose on the host into the final layout: one device tensor per matrix, no temporaries on the device.
  const gateUp = new Float32Array(hidden * 2 * intermediate);
  for (let o = 0; o < intermediate; o++) {
    for (let i = 0; i < hidden; i++) {
      gateUp[i * 2 * intermediate + o] = gate[o * hidden + i]!;
      gateUp[i * 2 * intermediate + intermediate + o] = up[o * hidden + i]!;
    }
  }
  const downT = new Float32Array(intermediate * hidden);
  for (let o = 0; o < hidden; o++) for (let i = 0; i < intermediate; i++) downT[i * hidden + o] = down[o * intermediate + i]!;
  return { gateUp: packWeight(gateUp, hidden, 2 * intermediate, format), down: packWeight(downT, intermediate, hidden, format), hidden, intermediate };
}

/**
 * SwiGLU over the rows of `x` ([n, hidden]); `alpha` scales the output in the down projection's own pass (an MoE
 * expert's routing weight costs no extra op).
 *
 * ```ts
 * const y = swiGlu(x, mlp); // [n, hidden] -> [n, hidden]
 * const weighted = swiGlu(x, expert, 0.3); // 0.3 · expert(x)
 * ```
 */
export function swiGlu(x: tf.Tensor2D, mlp: SwiGluMlp, alpha?: number): tf.Tensor2D {
  return tf.tidy(() => {
    const [g, u] = tf.split(matMulWeight(x, mlp.gateUp), 2, 1);
    return matMulWeight(tf.mul(tf.mul(g!, tf.sigmoid(g!)), u!), mlp.down, alpha === undefined ? {} : { alpha });
  });
}

export function disposeSwiGluMlp(mlp: SwiGluMlp): void {
  mlp.gateUp.dispose();
  mlp.down.dispose();
}
