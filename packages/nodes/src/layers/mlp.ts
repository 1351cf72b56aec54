import * as tf from '@tensorflow/tfjs-core';
import { heapOffset, wasmHeap, type WasmBackendInternals } from '@omniflow/runtime-gpu';
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
  return tf.tidy(() => matMulWeight(siluMul(matMulWeight(x, mlp.gateUp)), mlp.down, alpha === undefined ? {} : { alpha }));
}

/*
 * Between its two matmuls a SwiGLU is split, sigmoid, two multiplies: four tfjs kernels, each a few µs of dispatch on
 * a row of a few hundred values. A decode step runs 7 SwiGLUs per talker layer (six experts and the shared one), so
 * for small inputs `siluMul` does it in one pass over the wasm heap.
 */

/**
 * Output values (rows × intermediate) up to which siluMul runs its one-pass kernel on wasm. Measured (CPU per call,
 * one row, back to back): 384 values 9 vs 45 µs for the ops (a talker expert), 768 15 vs 22 µs (its shared expert),
 * but 3072 54 vs 41 µs — per value the JS pass's Math.exp is slower than XNNPACK's sigmoid, so large rows keep the ops.
 */
export const SILU_MUL_MAX_VALUES = 1024;

const SILU_MUL = 'OmniflowSiluMul';

/**
 * `silu(g) ⊙ u` for rows `[g | u]` of `gateUp` ([n, 2·I] -> [n, I]): the middle of a SwiGLU whose gate and up
 * projections share one matmul. One kernel on wasm for at most SILU_MUL_MAX_VALUES outputs (differentiable), else tfjs ops.
 *
 * ```ts
 * const h = siluMul(tf.tensor2d([[1, -2, 3, 4]])); // [[silu(1)·3, silu(-2)·4]] = [[2.193, -0.954]]
 * ```
 */
export function siluMul(gateUp: tf.Tensor2D): tf.Tensor2D {
  const [n, width] = gateUp.shape;
  if (width % 2 !== 0) throw new Error(`siluMul: rows of ${width} values cannot be split into gate and up halves`);
  if (tf.getBackend() !== 'wasm' || (n * width) / 2 > SILU_MUL_MAX_VALUES || gateUp.dtype !== 'float32') return siluMulOps(gateUp);
  registerSiluMul();
  return tf.engine().runKernel(SILU_MUL, { x: gateUp }) as tf.Tensor2D;
}

/** The same as tfjs ops (any backend, any size). */
export function siluMulOps(gateUp: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const [g, u] = tf.split(gateUp, 2, 1);
    return tf.mul(tf.mul(g!, tf.sigmoid(g!)), u!) as tf.Tensor2D;
  });
}

let siluMulRegistered = false;

function registerSiluMul(): void {
  if (siluMulRegistered) return;
  siluMulRegistered = true;
  tf.registerKernel({ kernelName: SILU_MUL, backendName: 'wasm', kernelFunc: siluMulWasm as unknown as tf.KernelFunc });
  tf.registerGradient({
    kernelName: SILU_MUL,
    inputsToSave: ['x'],
    // y = g·σ(g)·u: dy/du = g·σ(g), dy/dg = u·σ(g)·(1 + g·(1 − σ(g))).
    gradFunc: ((dy: tf.Tensor, saved: tf.Tensor[]) => ({
      x: () => {
        const [g, u] = tf.split(saved[0]!, 2, 1);
        const s = tf.sigmoid(g!);
        const dg = tf.mul(tf.mul(dy, u!), tf.mul(s, tf.add(1, tf.mul(g!, tf.sub(1, s)))));
        return tf.concat([dg, tf.mul(dy, tf.mul(g!, s))], 1);
      },
    })) as unknown as tf.GradFunc,
  });
}

function siluMulWasm(args: { inputs: { x: tf.TensorInfo }; backend: WasmBackendInternals }): tf.TensorInfo {
  const { backend } = args;
  const { x } = args.inputs;
  const [n, width] = x.shape as [number, number];
  const I = width / 2;
  const out = backend.makeOutput([n, I], 'float32');
  if (n === 0 || I === 0) return out;
  const f = new Float32Array(wasmHeap(backend).buffer); // after makeOutput, which may have grown the heap
  const xo = heapOffset(backend, x, 'x') >>> 2, yo = heapOffset(backend, out, 'y') >>> 2;
  for (let r = 0; r < n; r++) {
    const gr = xo + r * width, ur = gr + I, yr = yo + r * I;
    for (let i = 0; i < I; i++) {
      const g = f[gr + i]!;
      // float32 steps like the ops: σ(g), g·σ(g), then ·u
      f[yr + i] = Math.fround(g * Math.fround(1 / (1 + Math.exp(-g)))) * f[ur + i]!;
    }
  }
  return out;
}

export function disposeSwiGluMlp(mlp: SwiGluMlp): void {
  mlp.gateUp.dispose();
  mlp.down.dispose();
}
