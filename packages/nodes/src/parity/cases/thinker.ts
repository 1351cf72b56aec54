import * as tf from '@tensorflow/tfjs-core';
import type { HostTensor } from '@omniflow/runtime-gpu';
import { AudioEncoder } from '../../models/qwen3-omni/audio-encoder.js';
import { generate } from '../../models/qwen3-omni/generate.js';
import { getRopeIndex, ropeIndexConfigOf } from '../../models/qwen3-omni/rope-index.js';
import { TextModel, type EmbeddingSplice } from '../../models/qwen3-omni/text-model.js';
import { VisionEncoder, type GridThw } from '../../models/qwen3-omni/vision-encoder.js';
import { tensorPrefixes, type ParityContext, type ParityOutputs, type ParityRunner } from '../types.js';

/**
 * Case kind 'thinker' (tensors `thinker.*`): the whole thinker path from the prompt ids. The multimodal rows come
 * from OUR encoders run on the media the fixture holds (the audio-encoder case's `audio_enc.input_features`, the
 * vision case's pixel values), positions from our getRopeIndex (with the media metadata of the rope case's copy of
 * this prompt, `rope.*`), then the prefill (hidden states, logits) and a greedy KV-cached decode of
 * `num_new_tokens` tokens through `generate`.
 */
export const thinkerRunner: ParityRunner = {
  kind: 'thinker',
  matches: (_name, spec) => tensorPrefixes(spec).has('thinker'),
  async run(ctx) {
    const cfg = ctx.config.thinker_config;
    const ids = Array.from(ctx.tensor('thinker.input_ids').data);
    const S = ids.length;
    const owned: tf.Tensor[] = [];
    const model = TextModel.load(ctx.ckpt, cfg.text_config);
    try {
      const media = encodeMedia(ctx, ids, owned);
      const inputsEmbeds = model.embed(ids, media.splices);
      owned.push(inputsEmbeds);
      const rope = ropeIndexFor(ctx, ids, media);
      const visual = ids.flatMap((id, p) => (id === cfg.image_token_id || id === cfg.video_token_id ? [p] : []));
      const deepstack = media.deepstack.length ? { positions: visual, features: media.deepstack } : undefined;

      // Prefill without cache: every hidden state and all logits, as transformers' output_hidden_states returns them.
      const L = cfg.text_config.num_hidden_layers;
      const all = Array.from({ length: L + 1 }, (_, i) => i);
      const full = model.forward(inputsEmbeds, { positions: rope.positions, deepstack, hiddenStates: all, logits: 'all' });
      const stacked = tf.stack(all.map((i) => full.hiddenStates.get(i)!));
      for (const t of full.hiddenStates.values()) t.dispose();
      const out: ParityOutputs = {
        'thinker.inputs_embeds': tf.reshape(inputsEmbeds, [1, S, model.hidden]),
        'thinker.position_ids': { dtype: 'float32', shape: [3, 1, S], data: rope.flat },
        'thinker.visual_pos_masks': { dtype: 'int32', shape: [1, S], data: Int32Array.from(ids, (_, p) => (visual.includes(p) ? 1 : 0)) },
        'thinker.hidden_states': stacked,
        'thinker.last_hidden_state': tf.reshape(full.lastHiddenState, [1, S, model.hidden]),
        'thinker.logits': tf.reshape(full.logits!, [1, S, model.vocabSize]),
      };
      if (media.deepstack.length) out['thinker.deepstack_visual_embeds'] = tf.stack(media.deepstack);
      full.lastHiddenState.dispose();
      full.logits!.dispose();

      // Greedy decode with the KV cache through the public generation loop.
      const n = ctx.param<number>('num_new_tokens');
      const generated: number[] = [];
      const stepLogits: Float32Array[] = [];
      const decodePositions: number[] = [];
      for await (const step of generate(model, { inputIds: ids, inputsEmbeds, positions: rope.positions, ropeDelta: rope.delta, deepstack, maxNewTokens: n, returnLogits: true })) {
        generated.push(step.token);
        stepLogits.push(step.logits!);
        if (step.fedPosition !== undefined) decodePositions.push(step.fedPosition, step.fedPosition, step.fedPosition);
      }
      const V = model.vocabSize;
      const logitsFlat = new Float32Array(n * V);
      stepLogits.forEach((l, i) => logitsFlat.set(l, i * V));
      out['thinker.generated_ids'] = { dtype: 'int32', shape: [1, n], data: Int32Array.from(generated) };
      out['thinker.sequences'] = { dtype: 'int32', shape: [1, S + n], data: Int32Array.from([...ids, ...generated]) };
      out['thinker.step_logits'] = { dtype: 'float32', shape: [n, V], data: logitsFlat };
      out['thinker.decode_position_ids'] = { dtype: 'float32', shape: [n - 1, 3], data: Float32Array.from(decodePositions) };
      return out;
    } finally {
      for (const t of owned) t.dispose();
      model.dispose();
    }
  },
};

interface Media {
  splices: EmbeddingSplice[];
  deepstack: tf.Tensor2D[];
  audioSeqlens?: number[];
  imageGrids?: GridThw[];
  videoGrids?: GridThw[];
}

/** Runs our audio and vision encoders on the fixture's media for every placeholder kind the prompt holds. */
function encodeMedia(ctx: ParityContext, ids: number[], owned: tf.Tensor[]): Media {
  const cfg = ctx.config.thinker_config;
  const has = (id: number) => ids.includes(id);
  const need = (name: string): HostTensor => {
    const t = ctx.fixtureTensor(name);
    if (!t) throw new Error(`parity case ${ctx.caseName}: the prompt holds placeholders that need '${name}', which the fixture does not have`);
    return t;
  };
  const media: Media = { splices: [], deepstack: [] };
  if (has(cfg.audio_token_id)) {
    const f = need('audio_enc.input_features');
    media.audioSeqlens = Array.from(need('audio_enc.feature_lens').data);
    const enc = AudioEncoder.load(ctx.ckpt, cfg.audio_config);
    const features = tf.tensor2d(f.data as Float32Array, f.shape as [number, number]);
    try {
      const { embeds } = enc.encode(features, media.audioSeqlens);
      owned.push(embeds);
      media.splices.push({ tokenId: cfg.audio_token_id, rows: embeds, name: 'audio' });
    } finally {
      features.dispose();
      enc.dispose();
    }
  }
  const items = [
    { id: cfg.image_token_id, pixels: 'vision.pixel_values', grid: 'vision.image_grid_thw', name: 'image' },
    { id: cfg.video_token_id, pixels: 'vision.pixel_values_videos', grid: 'vision.video_grid_thw', name: 'video' },
  ].filter((it) => has(it.id));
  if (!items.length) return media;
  const vit = VisionEncoder.load(ctx.ckpt, cfg.vision_config);
  const perKind: { id: number; deepstack: tf.Tensor2D[] }[] = [];
  try {
    for (const it of items) {
      const px = need(it.pixels);
      const grids = gridRows(need(it.grid));
      if (it.name === 'image') media.imageGrids = grids;
      else media.videoGrids = grids;
      const input = tf.tensor2d(px.data as Float32Array, px.shape as [number, number]);
      try {
        const enc = vit.encode(input, grids);
        owned.push(enc.embeds, ...enc.deepstack);
        media.splices.push({ tokenId: it.id, rows: enc.embeds, name: it.name });
        perKind.push({ id: it.id, deepstack: enc.deepstack });
      } finally {
        input.dispose();
      }
    }
  } finally {
    vit.dispose();
  }
  // DeepStack rows in joint visual order: walk the visual placeholders and take the next row of their own kind.
  const levels = perKind[0]!.deepstack.length;
  const offsets = new Map<number, number>();
  let offset = 0;
  for (const k of perKind) {
    offsets.set(k.id, offset);
    offset += k.deepstack[0]!.shape[0];
  }
  const next = new Map(perKind.map((k) => [k.id, 0]));
  const order: number[] = [];
  for (const id of ids) {
    if (!next.has(id)) continue;
    order.push(offsets.get(id)! + next.get(id)!);
    next.set(id, next.get(id)! + 1);
  }
  for (let level = 0; level < levels; level++) {
    const joint = tf.tidy(() => tf.gather(tf.concat(perKind.map((k) => k.deepstack[level]!), 0), tf.tensor1d(Int32Array.from(order), 'int32')) as tf.Tensor2D);
    owned.push(joint);
    media.deepstack.push(joint);
  }
  return media;
}

/**
 * Prefill positions from our getRopeIndex. Seconds per video grid are not a property of the pixels, so they come from
 * the rope case's copy of the same prompt (`rope.input_ids` equal to ours); without video none are needed.
 */
function ropeIndexFor(ctx: ParityContext, ids: number[], media: Media): { positions: [Float32Array, Float32Array, Float32Array]; flat: Float32Array; delta: number } {
  const cfg = ctx.config.thinker_config;
  let secondPerGrids: number[] | undefined;
  if (media.videoGrids) {
    const ropeIds = ctx.fixtureTensor('rope.input_ids');
    const spg = ctx.fixtureTensor('rope.video_second_per_grid');
    if (!ropeIds || !spg || ropeIds.data.length !== ids.length || ropeIds.data.some((v, i) => v !== ids[i])) {
      throw new Error(`parity case ${ctx.caseName}: the prompt has video but the fixture has no rope.video_second_per_grid for this prompt (rope.input_ids must equal thinker.input_ids)`);
    }
    secondPerGrids = Array.from(spg.data);
  }
  const audioInVideo = ids.some((id, p) => id === cfg.vision_start_token_id && ids[p + 1] === cfg.audio_start_token_id);
  const r = getRopeIndex(
    { inputIds: [ids], imageGridThw: media.imageGrids, videoGridThw: media.videoGrids, audioSeqlens: media.audioSeqlens, secondPerGrids, useAudioInVideo: audioInVideo },
    ropeIndexConfigOf(cfg),
  );
  const S = ids.length;
  const flat = r.positionIds;
  return { positions: [flat.subarray(0, S), flat.subarray(S, 2 * S), flat.subarray(2 * S, 3 * S)], flat, delta: r.ropeDeltas[0]! };
}

function gridRows(t: HostTensor): GridThw[] {
  const out: GridThw[] = [];
  for (let i = 0; i < t.shape[0]!; i++) out.push([t.data[3 * i]!, t.data[3 * i + 1]!, t.data[3 * i + 2]!]);
  return out;
}
