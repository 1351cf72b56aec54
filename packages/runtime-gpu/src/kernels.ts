import * as tf from '@tensorflow/tfjs-core';
import type { TensorHandle } from '@omniflow/core';
import { matMulSmall, simdMatMulApplies } from './simd/mat-mul-small.js';

/** Activations the backends' fused matMul implements (tf.fused.matMul). */
export type FusableActivation = 'relu' | 'relu6' | 'sigmoid' | 'elu' | 'leakyrelu';

/**
 * What a fusable kernel computes, so the fuser can merge scale → matMul → bias → activation into one
 * op: a constant scale next to the matMul becomes the op's `alpha`, bias and activation its epilogue.
 */
export type FusableOp =
  | { readonly op: 'scale'; readonly factor: number }
  | { readonly op: 'matMul'; readonly weight: tf.Tensor2D }
  | { readonly op: 'biasAdd'; readonly bias: tf.Tensor1D }
  | { readonly op: 'activation'; readonly activation: FusableActivation; readonly alpha?: number };

/** A kernel (tensor in, tensor out) that says what it computes. */
export type DescribedKernel = ((x: TensorHandle) => TensorHandle) & { readonly fusableOp: FusableOp };

/** The op a kernel declares, if it is one of the fusable kernels below. */
export function fusableOpOf(kernel: (x: TensorHandle) => TensorHandle): FusableOp | undefined {
  return (kernel as Partial<DescribedKernel>).fusableOp;
}

function described(fn: (x: tf.Tensor) => tf.Tensor, op: FusableOp): DescribedKernel {
  const k = ((x: TensorHandle) => tf.tidy(() => fn(x as unknown as tf.Tensor))) as unknown as DescribedKernel;
  Object.defineProperty(k, 'fusableOp', { value: op, enumerable: true });
  return k;
}

/** Applies a [in, out] weight over the last axis of x, whatever its leading shape. */
function overLastAxis(x: tf.Tensor, inF: number, outF: number, f: (x2: tf.Tensor2D) => tf.Tensor2D): tf.Tensor {
  if (x.shape[x.rank - 1] !== inF) throw new Error(`matMul kernel: input's last axis is ${x.shape[x.rank - 1]} but the weight expects ${inF} (input shape [${x.shape}])`);
  if (x.rank === 2) return f(x as tf.Tensor2D);
  const lead = x.shape.slice(0, -1);
  return tf.reshape(f(tf.reshape(x, [-1, inF]) as tf.Tensor2D), [...lead, outF]);
}

/**
 * `x · factor`, a constant gain. Next to a matMul the fuser folds it into the matMul's `alpha`, so it
 * costs no op of its own.
 *
 * ```ts
 * const gain = defineNode({ type: 'gain', ...io, params: z.object({ factor: z.number() }), kernel: ({ factor }) => scaleKernel(factor) });
 * ```
 */
export function scaleKernel(factor: number): DescribedKernel {
  if (!Number.isFinite(factor)) throw new Error(`scaleKernel: factor must be a finite number, got ${factor}`);
  return described((x) => tf.mul(x, factor), { op: 'scale', factor });
}

/**
 * `x · W` over the last axis, W already `[in, out]` (see LINEAR_IN_OUT), through matMulSmall: the
 * SIMD kernel for a few rows on wasm, tf.matMul otherwise. Fusable with neighbouring scales and a
 * following bias and activation.
 *
 * ```ts
 * const k = matMulKernel(w); // kernel: (p) => matMulKernel(weights.get(p.layer))
 * ```
 */
export function matMulKernel(weight: tf.Tensor2D): DescribedKernel {
  const [inF, outF] = weight.shape;
  return described((x) => overLastAxis(x, inF, outF, (x2) => matMulSmall(x2, weight) as tf.Tensor2D), { op: 'matMul', weight });
}

/** `x + b` over the last axis. */
export function biasAddKernel(bias: tf.Tensor1D): DescribedKernel {
  return described((x) => tf.add(x, bias), { op: 'biasAdd', bias });
}

/** An elementwise activation the fused matMul can absorb. */
export function activationKernel(activation: FusableActivation, alpha = 0.2): DescribedKernel {
  const fns: Record<FusableActivation, (x: tf.Tensor) => tf.Tensor> = {
    relu: (x) => tf.relu(x),
    relu6: (x) => tf.relu6(x),
    sigmoid: (x) => tf.sigmoid(x),
    elu: (x) => tf.elu(x),
    leakyrelu: (x) => tf.leakyRelu(x, alpha),
  };
  if (!fns[activation]) throw new Error(`activationKernel: '${activation}' is not one of ${Object.keys(fns).join(', ')}`);
  return described(fns[activation], { op: 'activation', activation, ...(activation === 'leakyrelu' ? { alpha } : {}) });
}

/** What {@link fusedLinear} does around the matMul: `y = activation(alpha · x·W + bias)`. */
export interface LinearEpilogue {
  /** Scalar on x·W (default 1): a constant gain folded in from a neighbouring scale kernel. */
  readonly alpha?: number;
  /** Added over the last axis, `[out]`. */
  readonly bias?: tf.Tensor1D;
  readonly activation?: FusableActivation;
  /** Slope of `leakyrelu` below zero (default 0.2). */
  readonly leakyreluAlpha?: number;
}

/** Activations omniflow's SIMD matmul kernel applies in its epilogue. */
const SIMD_EPILOGUES: ReadonlySet<string> = new Set(['linear', 'relu']);

/**
 * `activation(alpha · x·W + bias)` over the last axis of x, W already `[in, out]`, as ONE backend op:
 * - where `simdMatMulApplies` (wasm, at most 16 rows) and for a linear or relu epilogue, omniflow's SIMD
 *   kernel (matMulSmall): one pass over W with alpha, bias and relu applied to each output block;
 * - otherwise the backend's `_FusedMatMul` kernel, called directly (`tf.fused.matMul` wraps it for
 *   gradients with customGrad, which costs about a third of a small matmul on wasm and buys nothing
 *   at inference). It has no alpha, so alpha ≠ 1 costs one `tf.mul` on x first, the order the
 *   unfused chain computes it in.
 *
 * ```ts
 * const y = fusedLinear(x, w, { alpha: 0.5, bias: b, activation: 'relu' }); // x [1, 320], w [320, 256] → y [1, 256]
 * ```
 */
export function fusedLinear(x: tf.Tensor, weight: tf.Tensor2D, epilogue: LinearEpilogue = {}): tf.Tensor {
  const { alpha = 1, bias, activation = 'linear', leakyreluAlpha = 0.2 } = epilogue;
  const [inF, outF] = weight.shape;
  return tf.tidy(() => overLastAxis(x, inF, outF, (x2) => {
    if (SIMD_EPILOGUES.has(activation) && simdMatMulApplies(x2.shape[0])) {
      return matMulSmall(x2, weight, { alpha, ...(bias ? { bias } : {}), activation: activation as 'linear' | 'relu' }) as tf.Tensor2D;
    }
    const scaled = alpha === 1 ? x2 : tf.mul(x2, alpha);
    const a = tf.reshape(scaled, [1, x2.shape[0], inF]);
    const b = tf.reshape(weight, [1, inF, outF]);
    const inputs: Record<string, tf.Tensor> = { a, b };
    if (bias) inputs.bias = bias;
    const attrs = { transposeA: false, transposeB: false, activation, leakyreluAlpha };
    const y = tf.engine().runKernel(tf._FusedMatMul, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
    return tf.reshape(y, [x2.shape[0], outF]) as tf.Tensor2D;
  }));
}
