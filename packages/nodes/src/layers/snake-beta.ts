import * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint } from '@omniflow/runtime-gpu';

/**
 * SnakeBeta activation (BigVGAN style): `y = x + 1/(exp(β) + 1e-9) · sin²(x · exp(α))`, per channel.
 * The checkpoint stores α and β in log space, so both exponentials are taken once at load.
 */
export interface SnakeBeta {
  /** exp(alpha), [C]: the frequency. */
  readonly frequency: tf.Tensor1D;
  /** 1 / (exp(beta) + 1e-9), [C]: the magnitude's reciprocal, as the reference computes it. */
  readonly inverseMagnitude: tf.Tensor1D;
  readonly channels: number;
}

/**
 * Loads `${prefix}.alpha` and `${prefix}.beta` ([C] each).
 *
 * ```ts
 * const act = loadSnakeBeta(ckpt, 'code2wav.decoder.5', 96);
 * const y = snakeBeta(x, act); // x [..., 96]
 * ```
 */
export function loadSnakeBeta(ckpt: Checkpoint, prefix: string, channels: number): SnakeBeta {
  const alpha = ckpt.get(`${prefix}.alpha`, [channels]).data as Float32Array;
  const beta = ckpt.get(`${prefix}.beta`, [channels]).data as Float32Array;
  return tf.tidy(() => ({
    frequency: tf.exp(tf.tensor1d(alpha)),
    inverseMagnitude: tf.div(1, tf.add(tf.exp(tf.tensor1d(beta)), 1e-9)) as tf.Tensor1D,
    channels,
  }));
}

/**
 * Applies SnakeBeta over the last (channel) axis of `x`, channels-last. On the wasm backend it is one pass over the
 * heap (the `SnakeBeta` kernel below); elsewhere a chain of tfjs ops with `sinSquared`.
 */
export function snakeBeta(x: tf.Tensor, act: SnakeBeta): tf.Tensor {
  if (x.shape[x.rank - 1] !== act.channels) {
    throw new Error(`snakeBeta: input [${x.shape}] has ${x.shape[x.rank - 1]} channels on its last axis, the activation has ${act.channels}`);
  }
  if (x.dtype === 'float32' && registerSnakeBetaKernel()) {
    return tf.engine().runKernel(SNAKE_BETA, { x, frequency: act.frequency, inverseMagnitude: act.inverseMagnitude }) as tf.Tensor;
  }
  return snakeBetaOps(x, act);
}

/** SnakeBeta as tfjs ops (any backend): x + inverseMagnitude · sin²(x · frequency). */
export function snakeBetaOps(x: tf.Tensor, act: SnakeBeta): tf.Tensor {
  return tf.tidy(() => tf.add(x, tf.mul(sinSquared(tf.mul(x, act.frequency)), act.inverseMagnitude)));
}

const SNAKE_BETA = 'SnakeBeta';

interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
}

/**
 * Registers the `SnakeBeta` kernel for the wasm backend (once) and says whether the active backend has it. As tfjs ops,
 * SnakeBeta is ~20 elementwise passes, most of them broadcasting (the wasm backend's slow path): 12% of a streaming
 * Code2Wav frame. The kernel reads the input and writes the output in the wasm heap in one pass, computing in double
 * precision (so it is at least as exact as the float32 reference).
 */
function registerSnakeBetaKernel(): boolean {
  const backend = tf.getBackend();
  if (backend !== 'wasm') return false;
  if (!tf.getKernel(SNAKE_BETA, backend)) {
    tf.registerKernel({ kernelName: SNAKE_BETA, backendName: 'wasm', kernelFunc: snakeBetaWasm as unknown as tf.KernelFunc });
  }
  return true;
}

const PI = Math.PI, INV_PI = 1 / Math.PI;
// Taylor coefficients of sin(r)/r in r², up to r¹²: on |r| ≤ π/2 the truncation error is below 3e-10 (double arithmetic).
const S1 = -1 / 6, S2 = 1 / 120, S3 = -1 / 5040, S4 = 1 / 362_880, S5 = -1 / 39_916_800, S6 = 1 / 6_227_020_800;

function snakeBetaWasm(args: { inputs: { x: tf.TensorInfo; frequency: tf.TensorInfo; inverseMagnitude: tf.TensorInfo }; backend: WasmHeapBackend }): tf.TensorInfo {
  const { x, frequency, inverseMagnitude } = args.inputs;
  const out = args.backend.makeOutput(x.shape.slice(), 'float32');
  // Views after makeOutput: allocating may grow the heap, which detaches views taken before.
  const heap = (t: tf.TensorInfo) => args.backend.typedArrayFromHeap(t) as Float32Array;
  snakeBetaLoop(heap(x), heap(frequency), heap(inverseMagnitude), heap(out));
  return out;
}

/** y = x + inv[c]·sin²(x·freq[c]) over rows of C channels; sin² via r = z − round(z/π)·π and an odd polynomial. */
function snakeBetaLoop(x: Float32Array, freq: Float32Array, inv: Float32Array, y: Float32Array): void {
  const C = freq.length, rows = x.length / C;
  for (let row = 0, o = 0; row < rows; row++, o += C) {
    for (let c = 0; c < C; c++) {
      const v = x[o + c], z = v * freq[c];
      const r = z - Math.floor(z * INV_PI + 0.5) * PI, r2 = r * r;
      const s = r * (1 + r2 * (S1 + r2 * (S2 + r2 * (S3 + r2 * (S4 + r2 * (S5 + r2 * S6))))));
      y[o + c] = v + inv[c] * s * s;
    }
  }
}

// Taylor coefficients of sin(r)/r in r², up to r¹⁰: on |r| ≤ π/2 the truncation error is below 6e-8.
const SIN_OVER_R = [1, -1 / 6, 1 / 120, -1 / 5040, 1 / 362_880, -1 / 39_916_800];

/**
 * sin²(z), elementwise, as a polynomial: the wasm backend's Sin kernel is ~15x slower than a handful of multiply-adds
 * (measured on Code2Wav's activations, where SnakeBeta was a third of the decoder's time). sin² has period π, so
 * z is reduced to r = z − round(z/π)·π ∈ [−π/2, π/2] and sin(r) is an odd polynomial. The reduction loses about
 * |z|·1e-7 in float32 (1e-6 at |z| = 10; activations here are of order 1), the polynomial < 6e-8.
 *
 * ```ts
 * sinSquared(tf.tensor1d([0, Math.PI / 2, 10])); // ≈ [0, 1, 0.29596]
 * ```
 */
export function sinSquared(z: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const r = tf.sub(z, tf.mul(tf.round(tf.mul(z, 1 / Math.PI)), Math.PI));
    const r2 = tf.square(r);
    let p: tf.Tensor = tf.mul(r2, SIN_OVER_R[5]);
    for (let i = 4; i > 0; i--) p = tf.mul(tf.add(p, SIN_OVER_R[i]), r2);
    return tf.square(tf.mul(tf.add(p, SIN_OVER_R[0]), r));
  });
}

export function disposeSnakeBeta(act: SnakeBeta): void {
  act.frequency.dispose();
  act.inverseMagnitude.dispose();
}
