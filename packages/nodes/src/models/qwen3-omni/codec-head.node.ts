import * as tf from '@tensorflow/tfjs-core';
import type { Observable } from 'rxjs';
import { map } from 'rxjs';
import { z } from 'zod';
import { defineNode, disposePacket, ports, tokensPacket, type TensorPacket, type TokensPacket } from '@omniflow/core';
import { GREEDY } from './codec-head.js';
import { Sampler, samplerOptionsSchema } from './sampler.js';
import { talkerParams, type TalkerParts } from './talker.node.js';

/*
 * The `codecHead` node: talker final-norm hidden states in, codebook-0 codes out (one per row). The talker node runs
 * the head inside its frame loop; this node is the same head for graphs that run the talker decoder on its own.
 */

export const codecHeadParams = z.object({
  model: talkerParams.shape.model,
  /** Sampling; default generate()'s talker sampling with the control-code suppression. */
  sampling: samplerOptionsSchema.partial().optional(),
  greedy: z.boolean().default(false),
  seed: z.number().int().default(0),
});

/**
 * Chooses code 0 for each row of 'talker_hidden' tensor packets ([n, hidden]); emits a tokens packet of n codes and
 * frees the tensor.
 *
 * ```ts
 * talkerHidden$.pipe(codecHead({ model, greedy: true })).subscribe((p) => console.log(p.ids));
 * ```
 */
export const codecHead = defineNode({
  type: 'codecHead',
  description: 'Qwen3-Omni talker codec head: talker hidden states in, codebook-0 codes out',
  inputs: { hidden: ports.tensor({ name: 'talker_hidden', dtype: 'float32', description: '[n, hidden] final-norm talker rows' }) },
  outputs: { codes: ports.tokens({ description: 'code 0 of each row' }) },
  params: codecHeadParams,
  open: (params) => {
    if (typeof params.model === 'string') throw new Error("codecHead: pass a model from loadQwen3Omni() (a folder is loaded by the 'talker' node)");
    const parts: TalkerParts = params.model.talker!; // the param schema checked it is there
    return { parts, sampler: new Sampler({ seed: params.seed, ...(params.greedy ? GREEDY : (params.sampling ?? {})) }), history: [] as number[] };
  },
  operator: (_params, ctx, r) => (hidden$: Observable<TensorPacket>) =>
    hidden$.pipe(map((p): TokensPacket => {
      try {
        const x = p.tensor as unknown as tf.Tensor;
        const D = r.parts.talker.hidden;
        if (x.rank !== 2 || x.shape[1] !== D) throw new Error(`${ctx.node}: expects 'talker_hidden' [n, ${D}] tensors, got '${p.name}' [${x.shape}]`);
        const logits = r.parts.codecHead.logits(x as tf.Tensor2D);
        const rows = logits.arraySync() as number[][];
        logits.dispose();
        const ids = Int32Array.from(rows, (row) => {
          const id = r.parts.codecHead.pick(Float32Array.from(row), r.sampler, r.history);
          r.history.push(id);
          return id;
        });
        return tokensPacket({ session: p.session, turn: p.turn, pts: p.pts, ids });
      } finally {
        disposePacket(p);
      }
    })),
});
