import * as tf from '@tensorflow/tfjs-core';
import { disposeSparseMoe, loadSparseMoe, sparseMoe } from '../../layers/moe.js';
import type { ThinkerTextConfig } from '../../models/qwen3-omni/config.js';
import { tensorPrefixes, type ParityContext, type ParityOutputs, type ParityRunner } from '../types.js';

/**
 * Case kind 'moe': the sparse MoE block of decoder layer 0 alone, for the thinker (`moe.*`, thinker.model.layers.0.mlp)
 * and the talker (`talker_moe.*`, talker.model.layers.0.mlp, with its shared expert).
 */
export const moeRunner: ParityRunner = {
  kind: 'moe',
  matches: (_name, spec) => tensorPrefixes(spec).has('moe') || tensorPrefixes(spec).has('talker_moe'),
  async run(ctx) {
    const out: ParityOutputs = {};
    const prefixes = tensorPrefixes(ctx.caseSpec);
    if (prefixes.has('moe')) Object.assign(out, runBlock(ctx, 'moe', 'thinker.model.layers.0.mlp', ctx.config.thinker_config.text_config));
    if (prefixes.has('talker_moe')) {
      const talker = ctx.config.talker_config;
      if (!talker) throw new Error(`parity case ${ctx.caseName}: talker_moe tensors but config.json has no talker_config`);
      Object.assign(out, runBlock(ctx, 'talker_moe', 'talker.model.layers.0.mlp', talker.text_config));
    }
    return out;
  },
};

function runBlock(ctx: ParityContext, name: string, prefix: string, c: ThinkerTextConfig): ParityOutputs {
  const moe = loadSparseMoe(ctx.ckpt, prefix, {
    hidden: c.hidden_size, numExperts: c.num_experts, topK: c.num_experts_per_tok, moeIntermediate: c.moe_intermediate_size,
    normTopKProb: c.norm_topk_prob, sharedExpertIntermediate: c.shared_expert_intermediate_size,
  });
  try {
    const input = ctx.tensor(`${name}.input`);
    const x = tf.tensor2d(input.data as Float32Array, [input.data.length / c.hidden_size, c.hidden_size]);
    const r = sparseMoe(x, moe, { sharedDetails: true });
    x.dispose();
    const out: ParityOutputs = {
      [`${name}.router_logits`]: { dtype: 'float32', shape: [r.output.shape[0], c.num_experts], data: r.routing.routerLogits },
      [`${name}.routing_weights`]: { dtype: 'float32', shape: [r.output.shape[0], c.num_experts_per_tok], data: r.routing.routingWeights },
      [`${name}.selected_experts`]: { dtype: 'int32', shape: [r.output.shape[0], c.num_experts_per_tok], data: r.routing.selectedExperts },
      [`${name}.output`]: tf.reshape(r.output, input.shape),
    };
    r.output.dispose();
    if (r.sharedGate) out[`${name}.shared_expert_gate`] = r.sharedGate;
    if (r.sharedOutput) out[`${name}.shared_expert_output`] = r.sharedOutput;
    return out;
  } finally {
    disposeSparseMoe(moe);
  }
}
