import * as tf from '@tensorflow/tfjs-core';
import { matMulWeight, type WeightDtype, type WeightSource } from './linear.js';
import { disposeSwiGluMlp, loadSwiGluMlp, swiGlu, type SwiGluMlp } from './mlp.js';

/**
 * Sparse mixture-of-experts block (`*SparseMoeBlock`, spec 3.1): router `mlp.gate` → softmax over ALL experts →
 * top-k → optional renormalisation → weighted sum of SwiGLU experts; the talker adds
 * `sigmoid(shared_expert_gate(x)) · shared_expert(x)`.
 *
 * Experts are separate pre-transposed `[in, out]` matrices (the checkpoint stores them per expert), so an active
 * expert reads only its own weights: no slicing of a stacked tensor, which on wasm would copy them.
 */
export interface SparseMoe {
  /**
   * The router `mlp.gate`, [hidden, numExperts]; with a shared expert one more column, `shared_expert_gate`, so one
   * product and one read-back per layer give the routing logits and the shared expert's gate logit.
   */
  readonly router: tf.Tensor2D;
  readonly experts: readonly SwiGluMlp[];
  readonly topK: number;
  readonly normTopKProb: boolean;
  readonly sharedExpert?: SwiGluMlp;
  readonly hidden: number;
}

export interface SparseMoeSizes {
  hidden: number;
  numExperts: number;
  topK: number;
  moeIntermediate: number;
  normTopKProb: boolean;
  /** 0 or absent: no shared expert (the thinker). */
  sharedExpertIntermediate?: number;
  /**
   * Format of the experts' weights (default float32). The router and the shared-expert gate stay float32 whatever
   * the format: they are 2% of the bytes, and the router's logits make discrete choices.
   */
  weights?: WeightDtype;
}

/**
 * Loads `${prefix}.gate`, `${prefix}.experts.M.*` and, when `sharedExpertIntermediate` > 0, `${prefix}.shared_expert.*`
 * and `${prefix}.shared_expert_gate`.
 *
 * ```ts
 * const moe = loadSparseMoe(ckpt, 'thinker.model.layers.0.mlp', { hidden: 2048, numExperts: 128, topK: 8, moeIntermediate: 768, normTopKProb: true });
 * const { output } = sparseMoe(x, moe); // x [n, 2048]
 * ```
 */
export function loadSparseMoe(ckpt: WeightSource, prefix: string, s: SparseMoeSizes): SparseMoe {
  const gate = ckpt.get(`${prefix}.gate.weight`, [s.numExperts, s.hidden]).data as Float32Array;
  const sharedGate = s.sharedExpertIntermediate ? ckpt.get(`${prefix}.shared_expert_gate.weight`, [1, s.hidden]).data as Float32Array : undefined;
  const experts: SwiGluMlp[] = [];
  for (let e = 0; e < s.numExperts; e++) experts.push(loadSwiGluMlp(ckpt, `${prefix}.experts.${e}`, s.hidden, s.moeIntermediate, s.weights));
  const shared = s.sharedExpertIntermediate ? loadSwiGluMlp(ckpt, `${prefix}.shared_expert`, s.hidden, s.sharedExpertIntermediate, s.weights) : undefined;
  return { router: routerWeight(gate, sharedGate, s.hidden), experts, topK: s.topK, normTopKProb: s.normTopKProb, sharedExpert: shared, hidden: s.hidden };
}

/**
 * The router as SparseMoe keeps it, from the checkpoint's `mlp.gate.weight` ([numExperts, hidden]) and, when there is a
 * shared expert, `mlp.shared_expert_gate.weight` ([1, hidden]): [hidden, numExperts (+ 1)], float32.
 *
 * ```ts
 * const router = routerWeight(gate, sharedGate, 1024); // [1024, 129] for the talker's 128 experts
 * ```
 */
export function routerWeight(gate: Float32Array, sharedGate: Float32Array | undefined, hidden: number): tf.Tensor2D {
  const E = gate.length / hidden, cols = E + (sharedGate ? 1 : 0);
  if (!Number.isInteger(E) || (sharedGate && sharedGate.length !== hidden)) {
    throw new Error(`routerWeight: gate of ${gate.length} values and shared gate of ${sharedGate?.length ?? 0} do not fit hidden size ${hidden}`);
  }
  const w = new Float32Array(hidden * cols);
  for (let i = 0; i < hidden; i++) {
    for (let e = 0; e < E; e++) w[i * cols + e] = gate[e * hidden + i]!;
    if (sharedGate) w[i * cols + E] = sharedGate[i]!;
  }
  return tf.tensor2d(w, [hidden, cols]);
}

/** Host routing decisions for n tokens. */
export interface MoeRouting {
  /** [n, numExperts] router logits (x · gateᵀ). */
  readonly routerLogits: Float32Array;
  /** [n, topK] expert indices, descending probability (torch.topk order; ties to the lower index). */
  readonly selectedExperts: Int32Array;
  /** [n, topK] weights: the top-k softmax probabilities, renormalised to sum 1 when normTopKProb. */
  readonly routingWeights: Float32Array;
}

export interface SparseMoeResult {
  /** [n, hidden], owned by the caller. */
  readonly output: tf.Tensor2D;
  readonly routing: MoeRouting;
  /** With `{ sharedDetails: true }` and a shared expert: sigmoid gate [n, 1] and shared expert output [n, hidden]. */
  readonly sharedGate?: tf.Tensor2D;
  readonly sharedOutput?: tf.Tensor2D;
}

/**
 * The MoE block over the rows of `x` ([n, hidden]). Tokens are grouped per expert: each active expert gathers its rows,
 * runs one SwiGLU over them, and the weighted results are summed back per token (a gather + sum, deterministic) — no
 * loop over tokens on the device. The router's top-k needs host values, so the router logits are read back once.
 * A single row (a decode step) takes a shorter path: each chosen expert's routing weight — and the shared expert's
 * sigmoid gate, read back with the router's logits (its column of `router`) — scales its down projection in the
 * matmul itself, and one AddN sums them.
 *
 * ```ts
 * const { output, routing } = sparseMoe(x, moe); // x [n, hidden]; routing.selectedExperts [n * topK]
 * output.dispose();
 * ```
 */
export function sparseMoe(x: tf.Tensor2D, moe: SparseMoe, options: { sharedDetails?: boolean; differentiableRouting?: boolean } = {}): SparseMoeResult {
  const [n, hidden] = x.shape;
  if (hidden !== moe.hidden) throw new Error(`sparseMoe: input has ${hidden} features but the block expects ${moe.hidden}`);
  const E = moe.experts.length;
  const logitsT = matMulWeight(x, moe.router);
  const all = logitsT.dataSync() as Float32Array;
  logitsT.dispose();
  // With a shared expert each row is [E router logits, shared gate logit].
  let routerLogits = all, sharedGateLogits: Float32Array | undefined;
  if (moe.sharedExpert) {
    routerLogits = new Float32Array(n * E);
    sharedGateLogits = new Float32Array(n);
    for (let t = 0; t < n; t++) {
      routerLogits.set(all.subarray(t * (E + 1), t * (E + 1) + E), t * E);
      sharedGateLogits[t] = all[t * (E + 1) + E]!;
    }
  }
  const routing = route(routerLogits, n, E, moe.topK, moe.normTopKProb);
  const k = moe.topK;
  if (n === 1 && !options.differentiableRouting && !options.sharedDetails) return { output: singleRowMoe(x, moe, routing, sharedGateLogits?.[0]), routing };

  // Group (token, slot) pairs by expert, in expert order; remember where each pair's result row lands.
  const perExpert: number[][] = moe.experts.map(() => []);
  for (let t = 0; t < n; t++) for (let s = 0; s < k; s++) perExpert[routing.selectedExperts[t * k + s]!]!.push(t * k + s);
  const rowOfPair = new Int32Array(n * k);
  let rows = 0;
  for (const pairs of perExpert) for (const pair of pairs) rowOfPair[pair] = rows++;

  const tensors = tf.tidy(() => {
    // Training: the same top-k choice (a constant), but the combine weights gathered from a softmax of the router
    // logits on the device, so the router receives gradients. Values agree with the host's to float32 rounding.
    const pairWeights = options.differentiableRouting ? differentiableRoutingWeights(x, moe, routing.selectedExperts, n, k) : undefined;
    const parts: tf.Tensor2D[] = [];
    perExpert.forEach((pairs, e) => {
      if (!pairs.length) return;
      const tokens = Int32Array.from(pairs, (p) => Math.floor(p / k));
      const weights = pairWeights
        ? tf.reshape(tf.gather(pairWeights, tf.tensor1d(Int32Array.from(pairs), 'int32')), [pairs.length, 1])
        : tf.tensor2d(Float32Array.from(pairs, (p) => routing.routingWeights[p]!), [pairs.length, 1]);
      const xe = tokens.length === n && tokens.every((t, i) => t === i) ? x : tf.gather(x, tf.tensor1d(tokens, 'int32'));
      parts.push(tf.mul(swiGlu(xe, moe.experts[e]!), weights));
    });
    const stacked = parts.length === 1 ? parts[0]! : tf.concat(parts, 0);
    // Row t·k + s of `ordered` is token t's slot-s contribution; summing the k slots adds the experts back per token.
    const ordered = k === 1 ? stacked : tf.gather(stacked, tf.tensor1d(rowOfPair, 'int32'));
    let output = (k === 1 ? ordered : tf.sum(tf.reshape(ordered, [n, k, hidden]), 1)) as tf.Tensor2D;
    let sharedGate: tf.Tensor2D | undefined, sharedOutput: tf.Tensor2D | undefined;
    if (moe.sharedExpert && sharedGateLogits) {
      // Training: the gate from the device product so its weights get gradients; otherwise from the logits read back.
      const gate = tf.sigmoid(options.differentiableRouting ? tf.slice(tf.matMul(x, moe.router), [0, E], [n, 1]) : tf.tensor2d(sharedGateLogits, [n, 1])) as tf.Tensor2D;
      const shared = swiGlu(x, moe.sharedExpert);
      output = tf.add(output, tf.mul(gate, shared)) as tf.Tensor2D;
      sharedGate = gate;
      sharedOutput = shared;
    }
    const keep = options.sharedDetails && sharedGate ? { output, sharedGate, sharedOutput } : { output };
    return keep as { output: tf.Tensor2D; sharedGate?: tf.Tensor2D; sharedOutput?: tf.Tensor2D };
  });
  return { ...tensors, routing };
}

/** The decode-step MoE: Σ_s w_s · expert_s(x) (+ σ(x·g) · shared(x)), every weight applied inside its down projection. */
function singleRowMoe(x: tf.Tensor2D, moe: SparseMoe, routing: MoeRouting, sharedGateLogit?: number): tf.Tensor2D {
  return tf.tidy(() => {
    const outs: tf.Tensor2D[] = [];
    for (let s = 0; s < moe.topK; s++) outs.push(swiGlu(x, moe.experts[routing.selectedExperts[s]!]!, routing.routingWeights[s]!));
    if (moe.sharedExpert && sharedGateLogit !== undefined) outs.push(swiGlu(x, moe.sharedExpert, Math.fround(1 / (1 + Math.exp(-sharedGateLogit)))));
    return outs.length === 1 ? outs[0]! : tf.addN(outs);
  });
}

/** [n·k] combine weights of the chosen experts, pair t·k + s at index t·k + s: softmax probabilities, renormalised when normTopKProb. */
function differentiableRoutingWeights(x: tf.Tensor2D, moe: SparseMoe, selected: Int32Array, n: number, k: number): tf.Tensor1D {
  const E = moe.experts.length;
  const flat = Int32Array.from(selected, (e, pair) => Math.floor(pair / k) * E + e);
  const logits = tf.matMul(x, moe.router);
  const routerLogits = moe.sharedExpert ? tf.slice(logits, [0, 0], [n, E]) : logits; // without the shared gate's column
  const chosen = tf.gather(tf.reshape(tf.softmax(routerLogits, -1), [n * E]), tf.tensor1d(flat, 'int32'));
  if (!moe.normTopKProb) return chosen as tf.Tensor1D;
  const perToken = tf.reshape(chosen, [n, k]);
  return tf.reshape(tf.div(perToken, tf.sum(perToken, 1, true)), [n * k]) as tf.Tensor1D;
}

/**
 * Softmax over all experts, top-k (descending; ties to the lower index, like torch.topk on CPU), renormalised when
 * `normTopKProb`. Computed in float64 and rounded to float32: the reference computes in float32; the difference is
 * ~1e-7 relative, far below routing gaps.
 *
 * ```ts
 * route(Float32Array.of(0, 2, 1, 2), 1, 4, 2, true); // selectedExperts [1, 3], routingWeights [0.5, 0.5]
 * ```
 */
export function route(routerLogits: Float32Array, n: number, numExperts: number, topK: number, normTopKProb: boolean): MoeRouting {
  const selectedExperts = new Int32Array(n * topK);
  const routingWeights = new Float32Array(n * topK);
  const probs = new Float64Array(numExperts);
  const taken = new Uint8Array(numExperts);
  for (let t = 0; t < n; t++) {
    const row = t * numExperts;
    let max = -Infinity;
    for (let e = 0; e < numExperts; e++) max = Math.max(max, routerLogits[row + e]!);
    let sum = 0;
    for (let e = 0; e < numExperts; e++) sum += probs[e] = Math.exp(routerLogits[row + e]! - max);
    taken.fill(0);
    let picked = 0;
    for (let s = 0; s < topK; s++) {
      let best = -1;
      for (let e = 0; e < numExperts; e++) if (!taken[e] && (best < 0 || probs[e]! > probs[best]!)) best = e;
      taken[best] = 1;
      selectedExperts[t * topK + s] = best;
      picked += probs[best]! / sum;
    }
    for (let s = 0; s < topK; s++) {
      const p = probs[selectedExperts[t * topK + s]!]! / sum;
      routingWeights[t * topK + s] = normTopKProb ? p / picked : p;
    }
  }
  return { routerLogits, selectedExperts, routingWeights };
}

export function disposeSparseMoe(moe: SparseMoe): void {
  moe.router.dispose();
  for (const e of moe.experts) disposeSwiGluMlp(e);
  if (moe.sharedExpert) disposeSwiGluMlp(moe.sharedExpert);
}
