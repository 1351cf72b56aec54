import * as tf from '@tensorflow/tfjs-core';
import type { Observable } from 'rxjs';
import { map } from 'rxjs';
import { z } from 'zod';
import { codesPacket, defineNode, disposePacket, ports, type CodesPacket, type TensorPacket } from '@omniflow/core';
import { CODE_PREDICTOR_SAMPLING, GREEDY } from './codec-head.js';
import { Sampler, samplerOptionsSchema } from './sampler.js';
import { talkerParams, type TalkerParts } from './talker.node.js';

/*
 * The `codePredictor` node: for one frame, the talker's hidden state and code 0 in, all G codes out. The talker node
 * runs the predictor inside its frame loop; this node is the same predictor for graphs that split the talker.
 */

export const codePredictorParams = z.object({
  model: talkerParams.shape.model,
  /** Sampling; default top-k 50, top-p 0.8 (generate()'s code predictor). */
  sampling: samplerOptionsSchema.partial().optional(),
  greedy: z.boolean().default(false),
  seed: z.number().int().default(0),
});

/**
 * Completes frames: each 'talker_hidden' tensor packet ([1, hidden], the row that produced code 0) with extra
 * `code0` (int32 [1]) becomes a codes packet of G codes (code 0, then the predicted groups 1..G-1).
 *
 * ```ts
 * frames$.pipe(codePredictor({ model, greedy: true })).subscribe((p) => console.log(p.codes)); // 16 codes
 * ```
 */
export const codePredictor = defineNode({
  type: 'codePredictor',
  description: 'Qwen3-Omni code predictor: talker hidden state + code 0 in, the frame\'s 16 codes out',
  inputs: { frame: ports.tensor({ name: 'talker_hidden', dtype: 'float32', description: "[1, hidden] with extra 'code0' int32 [1]" }) },
  outputs: { codes: ports.codes() },
  params: codePredictorParams,
  open: (params) => {
    if (typeof params.model === 'string') throw new Error("codePredictor: pass a model from loadQwen3Omni() (a folder is loaded by the 'talker' node)");
    const parts: TalkerParts = params.model.talker!; // the param schema checked it is there
    return { parts, sampler: new Sampler({ seed: params.seed, ...(params.greedy ? GREEDY : (params.sampling ?? CODE_PREDICTOR_SAMPLING)) }) };
  },
  operator: (_params, ctx, r) => (frame$: Observable<TensorPacket>) =>
    frame$.pipe(map((p): CodesPacket => {
      try {
        const h = p.tensor as unknown as tf.Tensor;
        const code0 = (p.extras as Record<string, tf.Tensor> | undefined)?.code0;
        const D = r.parts.talker.hidden;
        if (h.rank !== 2 || h.shape[0] !== 1 || h.shape[1] !== D || !code0 || code0.size !== 1) {
          throw new Error(`${ctx.node}: expects 'talker_hidden' [1, ${D}] with extra 'code0' int32 [1], got '${p.name}' [${h.shape}]${code0 ? '' : ' without code0'}`);
        }
        const c0 = code0.dataSync()[0];
        const e0 = r.parts.talker.codecEmbedding([c0]);
        const frame = r.parts.codePredictor.predict(h as tf.Tensor2D, e0, r.sampler);
        tf.dispose([e0, frame.embeddingSum]);
        const codes = new Int32Array(1 + frame.residualCodes.length);
        codes[0] = c0;
        codes.set(frame.residualCodes, 1);
        return codesPacket({ session: p.session, turn: p.turn, pts: p.pts, codes, groups: codes.length, frames: 1 });
      } finally {
        disposePacket(p);
      }
    })),
});
