import type { HostTensor } from '@omniflow/runtime-gpu';
import { getRopeIndex, ropeIndexConfigOf } from '../../models/qwen3-omni/rope-index.js';
import type { GridThw } from '../../models/qwen3-omni/vision-encoder.js';
import type { ParityContext, ParityOutputs, ParityRunner } from '../types.js';

function rows(t: HostTensor): number[][] {
  const [n, m] = t.shape;
  return Array.from({ length: n }, (_, i) => Array.from(t.data.subarray(i * m, (i + 1) * m)));
}

/** Prompts of a case: every prefix P with both `P.input_ids` and `P.position_ids` (e.g. `rope`, `rope_aiv`). */
function prompts(ctx: ParityContext): string[] {
  return Object.keys(ctx.caseSpec.tensors)
    .filter((n) => n.endsWith('.position_ids'))
    .map((n) => n.slice(0, -'.position_ids'.length))
    .filter((p) => `${p}.input_ids` in ctx.caseSpec.tensors && `${p}.rope_deltas` in ctx.caseSpec.tensors);
}

/**
 * MRoPE position-id cases (tensors `P.position_ids` + `P.rope_deltas` next to `P.input_ids`): runs `getRopeIndex`
 * with the folder's thinker config over each prompt's ids, mask, grids, audio lengths and seconds per grid. The case
 * parameter `use_audio_in_video` is a boolean for all prompts or one per prompt, in the order the prompts appear.
 */
export const ropeIndexRunner: ParityRunner = {
  kind: 'rope-index',
  matches: (_name, spec) => Object.keys(spec.tensors).some((n) => n.endsWith('.rope_deltas')) && !Object.keys(spec.tensors).some((n) => n.startsWith('thinker.') || n.startsWith('talker.')),
  async run(ctx) {
    const cfg = ropeIndexConfigOf(ctx.config.thinker_config);
    const flag = ctx.params.use_audio_in_video;
    const out: ParityOutputs = {};
    prompts(ctx).forEach((p, i) => {
      const opt = (name: string) => (`${p}.${name}` in ctx.tensors ? ctx.tensor(`${p}.${name}`) : undefined);
      const grids = (t?: HostTensor) => (t ? (rows(t) as unknown as GridThw[]) : undefined);
      const useAudioInVideo = Array.isArray(flag) ? Boolean(flag[i]) : Boolean(flag);
      const r = getRopeIndex(
        {
          inputIds: rows(ctx.tensor(`${p}.input_ids`)),
          attentionMask: opt('attention_mask') && rows(opt('attention_mask')!),
          imageGridThw: grids(opt('image_grid_thw')),
          videoGridThw: grids(opt('video_grid_thw')),
          audioSeqlens: opt('audio_seqlens') && Array.from(opt('audio_seqlens')!.data),
          secondPerGrids: opt('video_second_per_grid') && Array.from(opt('video_second_per_grid')!.data),
          useAudioInVideo,
        },
        cfg,
      );
      out[`${p}.position_ids`] = { dtype: 'float32', shape: r.shape, data: r.positionIds };
      out[`${p}.rope_deltas`] = { dtype: 'float32', shape: [r.ropeDeltas.length, 1], data: Float32Array.from(r.ropeDeltas) };
    });
    return out;
  },
};
