import * as tf from '@tensorflow/tfjs-core';
import type { Packet, TensorHandle } from '@omniflow/core';
import { Observable, type OperatorFunction } from 'rxjs';
import { fusableOpOf, fusedLinear, type FusableOp, type LinearEpilogue } from './kernels.js';
import { forwardTensor } from './ownership.js';

/** One node of a chain the graph planner found fusable (core's `FusableNode`). */
export interface KernelNode {
  readonly id: string;
  readonly type: string;
  readonly kernel: (x: TensorHandle) => TensorHandle;
}

/** One step of a fused stage: one node's kernel, or several nodes merged into one backend op. */
export interface FusedStep {
  readonly nodes: readonly string[];
  /** 'kernel', or the merged op, e.g. 'linear(alpha 0.5, bias, relu)' (see fusedLinear). */
  readonly op: string;
  readonly run: (x: tf.Tensor) => tf.Tensor;
}

export interface TensorFuserOptions {
  /** Merge scale + matMul + bias + activation kernels into one fusedLinear op (default true). */
  readonly fuseOps?: boolean;
  /** Fuse only chains of at least this many nodes (default 2). */
  readonly minChain?: number;
}

/** The operator a fuser returns, carrying what it merged. */
export type FusedOperator = OperatorFunction<Packet, Packet> & { readonly steps: readonly FusedStep[]; readonly description: string };

/**
 * Plans the steps of a chain. A run of `scale* → matMul → scale* → biasAdd? → activation?` (kernels
 * made with scaleKernel, matMulKernel, biasAddKernel, activationKernel) becomes ONE step,
 * {@link fusedLinear}: the constant scales multiply into its `alpha`, bias and activation become its
 * epilogue. Every other kernel is its own step. A lone matMul stays its node's own kernel.
 *
 * ```ts
 * planFusedSteps(chain).map((s) => s.op); // ['linear(alpha 0.5, bias, relu)'] for gain → proj → bias → relu
 * ```
 */
export function planFusedSteps(chain: readonly KernelNode[], fuseOps = true): FusedStep[] {
  const steps: FusedStep[] = [];
  for (let i = 0; i < chain.length; ) {
    const linear = fuseOps ? linearRunAt(chain, i) : undefined;
    if (linear) {
      steps.push(linear.step);
      i += linear.step.nodes.length;
      continue;
    }
    const kernel = chain[i].kernel;
    steps.push({ nodes: [chain[i].id], op: 'kernel', run: (x) => kernel(x as unknown as TensorHandle) as unknown as tf.Tensor });
    i++;
  }
  return steps;
}

/** The fused linear step that starts at chain[i], if a matMul and at least one neighbour merge there. */
function linearRunAt(chain: readonly KernelNode[], i: number): { step: FusedStep } | undefined {
  const opAt = (j: number) => (j < chain.length ? fusableOpOf(chain[j].kernel) : undefined);
  let j = i, alpha = 1;
  // A constant gain commutes with the matMul, (f·x)·W = f·(x·W), so scales on either side fold into alpha.
  const foldScales = () => {
    for (let op = opAt(j); op?.op === 'scale'; op = opAt(++j)) alpha *= op.factor;
  };
  foldScales();
  const matMul = opAt(j);
  if (matMul?.op !== 'matMul') return undefined;
  j++;
  foldScales();
  let bias: tf.Tensor1D | undefined, activation: Extract<FusableOp, { op: 'activation' }> | undefined;
  const b = opAt(j);
  if (b?.op === 'biasAdd' && b.bias.rank === 1 && b.bias.shape[0] === matMul.weight.shape[1]) {
    bias = b.bias;
    j++;
  }
  const a = opAt(j);
  if (a?.op === 'activation') {
    activation = a;
    j++;
  }
  if (j - i < 2) return undefined;
  const epilogue: LinearEpilogue = {
    ...(alpha !== 1 ? { alpha } : {}),
    ...(bias ? { bias } : {}),
    ...(activation ? { activation: activation.activation, ...(activation.alpha !== undefined ? { leakyreluAlpha: activation.alpha } : {}) } : {}),
  };
  const what = [alpha !== 1 && `alpha ${alpha}`, bias && 'bias', activation?.activation].filter(Boolean).join(', ');
  const weight = matMul.weight;
  return { step: { nodes: chain.slice(i, j).map((c) => c.id), op: `linear(${what})`, run: (x) => fusedLinear(x, weight, epilogue) } };
}

/**
 * The runtime's fuser for core's graph compiler (`compile(g, { fuser: tensorFuser() })`): a chain of
 * kernel nodes becomes ONE stage that, per tensor packet, runs every kernel inside one tf.tidy with
 * no download to the host between them, disposes the input tensor and forwards the output in the
 * same packet envelope. scale + matMul + bias + activation kernels become one fusedLinear op (see
 * planFusedSteps). Other packets
 * (control, …) pass straight through. Fusion never changes results beyond float rounding of the
 * merged op; fused-vs-unfused is tested.
 *
 * ```ts
 * const compiled = compile(g, { fuser: tensorFuser() });
 * console.log(compiled.plan().text()); // shows fused [gain -> proj -> bias -> relu]
 * ```
 */
export function tensorFuser(options: TensorFuserOptions = {}): (chain: KernelNode[]) => FusedOperator | undefined {
  return (chain) => {
    if (chain.length < (options.minChain ?? 2)) return undefined;
    return fuseChain(chain, options);
  };
}

/** The fused operator for one chain (also usable without a graph). */
export function fuseChain(chain: readonly KernelNode[], options: TensorFuserOptions = {}): FusedOperator {
  const steps = planFusedSteps(chain, options.fuseOps ?? true);
  const label = chain.map((c) => c.id).join('+');
  const run = (x: tf.Tensor): tf.Tensor =>
    tf.tidy(() => {
      let y = x;
      for (const s of steps) {
        try {
          y = s.run(y);
        } catch (err) {
          const who = s.nodes.map((id) => `'${id}' (${chain.find((c) => c.id === id)!.type})`).join(' + ');
          throw new Error(`fused stage ${label}: node ${who} failed on input [${y.shape}]: ${(err as Error).message}`, { cause: err });
        }
      }
      return y;
    });
  const operator = ((input$: Observable<Packet>) =>
    new Observable<Packet>((subscriber) =>
      input$.subscribe({
        next: (p) => {
          if (p.kind !== 'tensor') {
            subscriber.next(p);
            return;
          }
          let y: tf.Tensor;
          try {
            y = run(p.tensor as unknown as tf.Tensor);
          } catch (err) {
            p.tensor.dispose();
            subscriber.error(err);
            return;
          }
          subscriber.next(forwardTensor(p, y));
        },
        error: (e) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    )) as FusedOperator;
  const description = steps.map((s) => (s.op === 'kernel' ? s.nodes[0] : `[${s.nodes.join('+')}: ${s.op}]`)).join(' -> ');
  Object.defineProperties(operator, { steps: { value: steps }, description: { value: description } });
  return operator;
}
