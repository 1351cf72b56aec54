import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { SafetensorsFile, type HostTensor } from '@omniflow/runtime-gpu';
import { Talker, TalkerGeneration, type CodecFrame } from '../../models/qwen3-omni/talker.js';
import { CodecHead, GREEDY } from '../../models/qwen3-omni/codec-head.js';
import { CodePredictor } from '../../models/qwen3-omni/code-predictor.js';
import { buildTalkerPrompt, talkerTokenIds } from '../../models/qwen3-omni/talker-input.js';
import type { GridThw } from '../../models/qwen3-omni/vision-encoder.js';
import { tensorPrefixes, type ParityOutputs, type ParityRunner } from '../types.js';

/**
 * Talker cases (tensors `talker.*`): generate()'s talker part, greedy. The case voices a thinker generation: its token
 * ids are that generation's `thinker.sequences` and the prompt's media (for get_rope_index) are the `rope.*` inputs,
 * both read from the same cases.safetensors. From `thinker_embed` / `thinker_hidden` it builds the talker prompt, runs
 * `frames` frames (codec head + code predictor) and reports every intermediate the case lists.
 */
export const talkerRunner: ParityRunner = {
  kind: 'talker',
  matches: (_name, spec) => tensorPrefixes(spec).has('talker'),
  async run(ctx) {
    const p = 'talker';
    const config = ctx.config;
    const tc = config.talker_config;
    if (!tc) throw new Error(`${ctx.fixtureDir}/config.json has no talker_config, which case ${ctx.caseName} needs`);
    const file = SafetensorsFile.open(join(ctx.fixtureDir, 'cases.safetensors'));
    const other = (name: string): HostTensor | undefined => (file.has(name) ? file.read(name) : undefined);
    const sequences = other('thinker.sequences');
    if (!sequences) throw new Error(`parity case ${ctx.caseName}: cases.safetensors has no 'thinker.sequences' (the thinker token ids this case voices)`);
    const ids = sequences.data as Int32Array;
    const talker = Talker.load(ctx.ckpt, config);
    const head = CodecHead.load(ctx.ckpt, tc);
    const predictor = CodePredictor.load(ctx.ckpt, tc.code_predictor_config);
    const e = ctx.tensor(`${p}.thinker_embed`), h = ctx.tensor(`${p}.thinker_hidden`);
    const embeds = tf.tensor2d(e.data as Float32Array, [e.shape[1]!, e.shape[2]!]);
    const hidden = tf.tensor2d(h.data as Float32Array, [h.shape[1]!, h.shape[2]!]);
    const tokens = talkerTokenIds(config);
    const prompt = buildTalkerPrompt(talker, tokens, { ids, thinkerEmbeds: embeds, thinkerHidden: hidden, speaker: ctx.param<string>('speaker') });
    const frames = ctx.param<number>('frames');
    const grid = (name: string): GridThw[] | undefined => {
      const t = other(name);
      return t ? Array.from({ length: t.shape[0]! }, (_, i) => Array.from(t.data.subarray(3 * i, 3 * i + 3)) as unknown as GridThw) : undefined;
    };
    const media = {
      imageGridThw: grid('rope.image_grid_thw'),
      videoGridThw: grid('rope.video_grid_thw'),
      audioSeqlens: other('rope.audio_seqlens') ? Array.from(other('rope.audio_seqlens')!.data) : undefined,
      secondPerGrids: other('rope.video_second_per_grid') ? Array.from(other('rope.video_second_per_grid')!.data) : undefined,
    };
    const gen = new TalkerGeneration(talker, head, predictor, prompt, { sampling: GREEDY, predictorSampling: GREEDY, maxFrames: frames, media });
    try {
      const out: CodecFrame[] = [];
      for (let f = gen.next(); f; f = gen.next()) out.push(f);
      const S = prompt.inputsEmbeds.shape[0], G = tc.num_code_groups, D = talker.hidden;
      const positions = gen.prefillPositionIds!;
      // Prefill again without a cache for the all-rows tensors (generation keeps only the last row).
      const prefill = tf.tidy(() => {
        const last = talker.forward(prompt.inputsEmbeds, positions);
        return { last, logits: head.logits(last) };
      });
      // Decode step s fed E0(code0[s-1]) + Σ residual embeddings + trailing text row s-1 (tts_pad once used up).
      const decodeInputs = tf.tidy(() => tf.concat(out.slice(0, -1).map((fr, s) => {
        const sum = new Float32Array(D);
        for (let g = 1; g < G; g++) predictor.embeddingRow(g - 1, fr.codes[g]).forEach((v, d) => (sum[d] += v));
        const text = s < prompt.trailingText.shape[0] ? tf.slice(prompt.trailingText, [s, 0], [1, -1]) : tf.slice(talker.ttsSpecialEmbeds, [2, 0], [1, -1]);
        return tf.add(tf.add(talker.codecEmbedding([fr.codes[0]]), tf.tensor2d(sum, [1, D])), text);
      }), 0));
      const mm = new Set(tokens.multimodal);
      const codes = new Int32Array(G * out.length);
      out.forEach((fr, f) => fr.codes.forEach((c, g) => (codes[g * out.length + f] = c)));
      const result: ParityOutputs = {
        [`${p}.text_projection_out`]: tf.tidy(() => tf.expandDims(talker.textProjection(embeds), 0)),
        [`${p}.hidden_projection_out`]: tf.tidy(() => tf.expandDims(talker.hiddenProjection(hidden), 0)),
        [`${p}.multimodal_mask`]: { dtype: 'int32', shape: [1, ids.length], data: Int32Array.from(ids, (id) => (mm.has(id) ? 1 : 0)) },
        [`${p}.user_indices`]: { dtype: 'int32', shape: [1, prompt.userIndices.length], data: prompt.userIndices },
        [`${p}.tts_special_embeds`]: tf.clone(talker.ttsSpecialEmbeds),
        [`${p}.user_embeds`]: tf.expandDims(prompt.userEmbeds, 0),
        [`${p}.assistant_embeds`]: tf.expandDims(prompt.assistantEmbeds, 0),
        [`${p}.trailing_text_hidden`]: tf.expandDims(prompt.trailingText, 0),
        [`${p}.input_embeds`]: tf.expandDims(prompt.inputsEmbeds, 0),
        [`${p}.input_ids`]: { dtype: 'int32', shape: [1, S], data: prompt.inputIds },
        [`${p}.attention_mask`]: { dtype: 'int32', shape: [1, S], data: new Int32Array(S).fill(1) },
        [`${p}.position_ids`]: { dtype: 'float32', shape: [3, 1, S], data: Float32Array.from([0, 1, 2].flatMap((r) => Array.from(positions[r]))) },
        [`${p}.rope_deltas`]: { dtype: 'float32', shape: [1, 1], data: Float32Array.of(gen.ropeDeltaValue) },
        [`${p}.prefill_logits`]: tf.expandDims(prefill.logits, 0),
        [`${p}.prefill_last_hidden`]: tf.expandDims(prefill.last, 0),
        [`${p}.code0_ids`]: { dtype: 'int32', shape: [1, out.length], data: Int32Array.from(out, (f) => f.codes[0]) },
        [`${p}.step_logits`]: { dtype: 'float32', shape: [out.length, head.vocabSize], data: Float32Array.from(out.flatMap((f) => [...f.code0Logits])) },
        [`${p}.decode_input_embeds`]: decodeInputs,
        [`${p}.decode_position_ids`]: { dtype: 'float32', shape: [out.length - 1, 3], data: Float32Array.from(out.slice(1).flatMap((f) => [...f.position])) },
        [`${p}.codes`]: { dtype: 'int32', shape: [1, G, out.length], data: codes },
        [`${p}.code_predictor_logits`]: {
          dtype: 'float32', shape: [out.length, G - 1, tc.code_predictor_config.vocab_size], data: Float32Array.from(out.flatMap((f) => [...f.residualLogits])),
        },
      };
      prefill.last.dispose();
      prefill.logits.dispose();
      return result;
    } finally {
      gen.dispose();
      prompt.dispose();
      tf.dispose([embeds, hidden]);
      talker.dispose();
      head.dispose();
      predictor.dispose();
      file.close();
    }
  },
};
