import type * as tf from '@tensorflow/tfjs-core';
import type { Checkpoint, HostTensor } from '@omniflow/runtime-gpu';
import type { Qwen3OmniConfig } from '../models/qwen3-omni/config.js';

/** How cases.json describes one tensor of a case. */
export interface CaseTensorSpec {
  role: 'input' | 'intermediate' | 'output';
  dtype: string;
  shape: number[];
  atol: number;
  max_abs?: number;
  description?: string;
}

/** One case of cases.json. */
export interface CaseSpec {
  title: string;
  notes?: unknown;
  params: Record<string, unknown>;
  tensors: Record<string, CaseTensorSpec>;
}

/** The whole cases.json. Only `cases` is required; the rest is informative. */
export interface CasesFile {
  cases: Record<string, CaseSpec>;
  token_ids?: Record<string, number>;
  [key: string]: unknown;
}

/** What a runner is given: everything comes from the fixture folder, nothing from one particular fixture set. */
export interface ParityContext {
  fixtureDir: string;
  /** The folder's config.json, parsed and validated. */
  config: Qwen3OmniConfig;
  /** The folder's model.safetensors (or sharded checkpoint). */
  ckpt: Checkpoint;
  caseName: string;
  caseSpec: CaseSpec;
  params: Record<string, unknown>;
  /** Every tensor of the case from cases.safetensors (inputs, intermediates, outputs), by full name. */
  tensors: Record<string, HostTensor>;
  /** The case tensor `name`, or an error naming the case and the tensor. */
  tensor(name: string): HostTensor;
  /**
   * Any tensor of the fixture's cases.safetensors, also another case's (e.g. the thinker case reads the encoder cases'
   * inputs to build its multimodal prompt); undefined when the folder has none of that name.
   */
  fixtureTensor(name: string): HostTensor | undefined;
  /** The case parameter `name`, or an error naming the case and the parameter. */
  param<T = unknown>(name: string): T;
}

/**
 * A produced value: a host tensor, a tfjs tensor (the framework reads and disposes it), or plain numbers (compared by
 * element count and values; nested arrays are flattened).
 */
export type ParityValue = HostTensor | tf.Tensor | number[] | number[][] | number[][][] | Float32Array | Int32Array;

/** Tensors a runner computed, keyed by their full cases.json names (e.g. `moe.router_logits`). */
export type ParityOutputs = Record<string, ParityValue>;

/**
 * Computes the tensors of one KIND of case (e.g. 'thinker', 'moe'). `matches` looks at what the case is (its tensor
 * name prefixes or title), never at its sizes, so fixture sets with other configurations run unchanged.
 */
export interface ParityRunner {
  kind: string;
  matches(caseName: string, caseSpec: CaseSpec): boolean;
  run(ctx: ParityContext): Promise<ParityOutputs>;
}

/**
 * Tensor-name prefixes of a case: `thinker.hidden_states` → 'thinker'. The usual basis of `matches`.
 *
 * ```ts
 * const matches = (_name: string, spec: CaseSpec) => tensorPrefixes(spec).has('moe');
 * ```
 */
export function tensorPrefixes(caseSpec: CaseSpec): Set<string> {
  return new Set(Object.keys(caseSpec.tensors).map((n) => n.split('.')[0]!));
}
