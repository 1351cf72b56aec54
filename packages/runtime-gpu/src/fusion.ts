import * as tf from '@tensorflow/tfjs-core';
import type { Packet, TensorHandle } from '@omniflow/core';
import { Observable, type OperatorFunction } from 'rxjs';
import { fusableOpOf, fusedLinear, type FusableOp } from './kernels.js';
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
  /** 'kernel' or the merged backend op, e.g. 'fused.matMul(bias, relu)'. */
  readonly op: string;
  readonly run: (x: tf.Tensor) => tf.Tensor;
}

export interface TensorFuserOptions {
  /** Merge matMul + bias + activation kernels into one tf.fused.matMul (default true). */
  readonly fuseOps?: boolean;
  /** Fuse only chains of at least this many nodes (default 2). */
  readonly minChain?: number;
}

/** The operator a fuser returns, carrying what it merged. */
export type FusedOperator = OperatorFunction<Packet, Packet> & { readonly steps: readonly FusedStep[]; readonly description: string };

/**
 * Plans the steps of a chain: runs of matMul → biasAdd? → activation? (kernels made with
 * matMulKernel, biasAddKernel, activationKernel) become one tf.fused.matMul; every other kernel is
 * its own step.
 */
export function planFusedSteps(chain: readonly KernelNode[], fuseOps = true): FusedStep[] {
  const steps: FusedStep[] = [];
  for (let i = 0; i < chain.length; i++) {
    const op = fuseOps ? fusableOpOf(chain[i].kernel) : undefined;
    if (op?.op === 'matMul') {
      const nodes = [chain[i].id];
      let bias: Extract<FusableOp, { op: 'biasAdd' }> | undefined;
      let act: Extract<FusableOp, { op: 'activation' }> | undefined;
      const next = () => (i + 1 < chain.length ? fusableOpOf(chain[i + 1].kernel) : undefined);
      const n1 = next();
      if (n1?.op === 'biasAdd' && n1.bias.shape[0] === op.weight.shape[1]) {
        bias = n1;
        nodes.push(chain[++i].id);
      }
      const n2 = next();
      if (n2?.op === 'activation') {
        act = n2;
        nodes.push(chain[++i].id);
      }
      if (nodes.length > 1) {
        const what = [bias && 'bias', act && act.activation].filter(Boolean).join(', ');
        steps.push({ nodes, op: `fused.matMul(${what})`, run: (x) => fusedLinear(x, op.weight, bias?.bias, act) });
        continue;
      }
    }
    const kernel = chain[i].kernel;
    steps.push({ nodes: [chain[i].id], op: 'kernel', run: (x) => kernel(x as unknown as TensorHandle) as unknown as tf.Tensor });
  }
  return steps;
}

/**
 * The runtime's fuser for core's graph compiler (`compile(g, { fuser: tensorFuser() })`): a chain of
 * kernel nodes becomes ONE stage that, per tensor packet, runs every kernel inside one tf.tidy with
 * no download to the host between them, disposes the input tensor and forwards the output in the
 * same packet envelope. matMul + bias + activation kernels become one tf.fused.matMul. Other packets
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
