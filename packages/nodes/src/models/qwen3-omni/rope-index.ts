import { audioOutputLength } from './audio-encoder.js';
import type { TalkerConfig, ThinkerConfig } from './config.js';
import type { GridThw } from './vision-encoder.js';

/*
 * 3-D (t, h, w) MRoPE position ids of a multimodal prompt: the reference's `get_rope_index` (spec 3.5), in plain
 * TypeScript. Positions are float32 like the reference's (video time positions can be fractional), so every value
 * is rounded through Math.fround where the reference computes in float32.
 */

/** The token ids and sizes `getRopeIndex` needs; from the thinker or the talker config. */
export interface RopeIndexConfig {
  imageTokenId: number;
  videoTokenId: number;
  audioTokenId: number;
  visionStartTokenId: number;
  audioStartTokenId: number;
  /** Temporal positions per second of video (13 in the release). */
  positionIdPerSeconds: number;
  /** Vision patches merged per axis into one token (2). */
  spatialMergeSize: number;
  /** Audio encoder n_window, for the audio token count of each audio. */
  nWindow: number;
}

/**
 * The thinker's rope-index settings.
 *
 * ```ts
 * const cfg = ropeIndexConfigOf(config.thinker_config);
 * ```
 */
export function ropeIndexConfigOf(thinker: ThinkerConfig): RopeIndexConfig {
  return {
    imageTokenId: thinker.image_token_id,
    videoTokenId: thinker.video_token_id,
    audioTokenId: thinker.audio_token_id,
    visionStartTokenId: thinker.vision_start_token_id,
    audioStartTokenId: thinker.audio_start_token_id,
    positionIdPerSeconds: thinker.position_id_per_seconds,
    spatialMergeSize: thinker.vision_config.spatial_merge_size,
    nWindow: thinker.audio_config.n_window,
  };
}

/**
 * The talker's rope-index settings: its own token ids and merge size. The talker config has no audio encoder, so
 * `nWindow` comes from the thinker's audio config (the released code's default, 50, is the same value).
 */
export function talkerRopeIndexConfigOf(talker: TalkerConfig, nWindow = 50): RopeIndexConfig {
  return {
    imageTokenId: talker.image_token_id,
    videoTokenId: talker.video_token_id,
    audioTokenId: talker.audio_token_id,
    visionStartTokenId: talker.vision_start_token_id,
    audioStartTokenId: talker.audio_start_token_id,
    positionIdPerSeconds: talker.position_id_per_seconds,
    spatialMergeSize: talker.spatial_merge_size,
    nWindow,
  };
}

/** What `getRopeIndex` takes: the batch of prompts and the media they hold, in order of appearance. */
export interface RopeIndexInput {
  /** Token ids, [batch][seq]. */
  inputIds: readonly (readonly number[])[];
  /** 1 for real tokens, 0 for padding, [batch][seq]; all ones when absent. */
  attentionMask?: readonly (readonly number[])[];
  /** (t, h, w) patch grid of each image, across the batch in order. */
  imageGridThw?: readonly GridThw[];
  /** (t, h, w) patch grid of each video, across the batch in order. */
  videoGridThw?: readonly GridThw[];
  /** Mel frames of each audio (the encoder's feature_lens), across the batch in order. */
  audioSeqlens?: readonly number[];
  /** Seconds per temporal grid of each video (temporal_patch_size / sampling fps). */
  secondPerGrids?: readonly number[];
  /** Videos carry their soundtrack interleaved with the frames (`<|vision_start|><|audio_start|>…`). */
  useAudioInVideo?: boolean;
}

/** Position ids [3, batch, seq] (row-major, t/h/w) and each sequence's rope delta. */
export interface RopeIndex {
  readonly positionIds: Float32Array;
  readonly shape: [3, number, number];
  /** max(position) + 1 − sequence length, per batch row; a decode step at cache length P uses P + delta. */
  readonly ropeDeltas: number[];
}

/** Positions of one span, three rows of equal length. */
interface Span {
  t: number[];
  h: number[];
  w: number[];
}

const f32 = Math.fround;

function spanMax(s: Span): number {
  let m = -Infinity;
  for (const row of [s.t, s.h, s.w]) for (const v of row) if (v > m) m = v;
  return m;
}

/** `arange(n) + start` on all three rows (text, markers, audio). */
function linearSpan(n: number, start: number): Span {
  const r = Array.from({ length: n }, (_, i) => f32(i + start));
  return { t: r, h: [...r], w: [...r] };
}

/** The reference's `get_llm_pos_ids_for_vision`: tokens ordered (t, h, w) over the merged grid, offset by start. */
function visionSpan(start: number, tIndex: number[], gridH: number, gridW: number, merge: number): Span {
  const gh = Math.floor(gridH / merge);
  const gw = Math.floor(gridW / merge);
  const s: Span = { t: [], h: [], w: [] };
  for (const t of tIndex) {
    for (let i = 0; i < gh; i++) {
      for (let j = 0; j < gw; j++) {
        s.t.push(f32(t + start));
        s.h.push(f32(i + start));
        s.w.push(f32(j + start));
      }
    }
  }
  return s;
}

function sliceSpan(s: Span, from: number, to: number): Span {
  return { t: s.t.slice(from, to), h: s.h.slice(from, to), w: s.w.slice(from, to) };
}

/** Python's list.index(value, start), with an error that says what the prompt is missing. */
function indexOf(tokens: readonly number[], value: number, from: number, what: string, row: number): number {
  const i = tokens.indexOf(value, from);
  if (i < 0) throw new Error(`getRopeIndex: batch row ${row} has fewer ${what} tokens (id ${value}) after position ${from} than its media need`);
  return i;
}

/** The `count` tokens from `from` must all be placeholders of the span; otherwise the prompt and the media disagree. */
function expectPlaceholders(tokens: readonly number[], from: number, count: number, ids: readonly number[], what: string, row: number): void {
  for (let i = from; i < from + count; i++) {
    if (!ids.includes(tokens[i])) {
      throw new Error(`getRopeIndex: batch row ${row}: the ${what} at ${from} needs ${count} placeholder tokens (${ids.join('/')}) but position ${i} holds ${tokens[i] ?? 'nothing'}`);
    }
  }
  const after = tokens[from + count];
  if (ids.includes(after)) throw new Error(`getRopeIndex: batch row ${row}: the ${what} at ${from} needs ${count} placeholder tokens but the prompt has more`);
}

/**
 * The reference's `get_rope_index`: text tokens get 1-D positions on all three rows; an audio span gets one position
 * per audio token; an image or video span gets (start + t·second_per_grid·position_id_per_seconds, start + row,
 * start + col) over its merged grid; with audio-in-video the video and audio positions of one clip are merged by
 * time. After each span the next text starts at (max of the last span) + 1. With no image or video grids it is
 * `cumsum(attention_mask) − 1` on all rows, as in the reference.
 *
 * ```ts
 * const { positionIds, ropeDeltas } = getRopeIndex(
 *   { inputIds: [ids], imageGridThw: [[1, 4, 6]], audioSeqlens: [150] },
 *   ropeIndexConfigOf(config.thinker_config),
 * );
 * ```
 */
export function getRopeIndex(input: RopeIndexInput, cfg: RopeIndexConfig): RopeIndex {
  const batch = input.inputIds.length;
  if (batch === 0) throw new Error('getRopeIndex: input_ids is empty');
  const seq = input.inputIds[0].length;
  input.inputIds.forEach((r, i) => {
    if (r.length !== seq) throw new Error(`getRopeIndex: input_ids rows differ in length (row 0: ${seq}, row ${i}: ${r.length})`);
  });
  const mask = input.attentionMask ?? input.inputIds.map((r) => r.map(() => 1));
  if (mask.length !== batch || mask.some((r) => r.length !== seq)) throw new Error(`getRopeIndex: attention_mask must be [${batch}][${seq}] like input_ids`);
  const positionIds = new Float32Array(3 * batch * seq);
  const ropeDeltas: number[] = [];
  const images = input.imageGridThw ?? [];
  const videos = input.videoGridThw ?? [];

  if (images.length === 0 && videos.length === 0) {
    for (let b = 0; b < batch; b++) {
      let count = 0;
      let max = -Infinity;
      for (let s = 0; s < seq; s++) {
        count += mask[b][s];
        const p = mask[b][s] === 1 ? count - 1 : 1;
        max = Math.max(max, p);
        for (let r = 0; r < 3; r++) positionIds[(r * batch + b) * seq + s] = p;
      }
      ropeDeltas.push(max + 1 - count);
    }
    return { positionIds, shape: [3, batch, seq], ropeDeltas };
  }

  const audios = input.audioSeqlens ?? [];
  const secondPerGrids = input.secondPerGrids ?? [];
  const aiv = input.useAudioInVideo ?? false;
  const merge = cfg.spatialMergeSize;
  let imageIdx = 0;
  let videoIdx = 0;
  let audioIdx = 0;
  const need = <T>(list: readonly T[], i: number, what: string): T => {
    if (i >= list.length) throw new Error(`getRopeIndex: the prompt holds more ${what} than given (${list.length})`);
    return list[i];
  };

  for (let b = 0; b < batch; b++) {
    const tokens = input.inputIds[b].filter((_, s) => mask[b][s] === 1);
    const visionTokens: number[] = [];
    tokens.forEach((id, i) => id === cfg.visionStartTokenId && visionTokens.push(tokens[i + 1]));
    const audioNums = tokens.filter((id) => id === cfg.audioStartTokenId).length;
    const imageNums = visionTokens.filter((id) => id === cfg.imageTokenId).length;
    const videoNums = visionTokens.filter((id) => id === (aiv ? cfg.audioStartTokenId : cfg.videoTokenId)).length;
    const multimodalNums = aiv ? imageNums + audioNums : imageNums + videoNums + audioNums;
    let remainImages = imageNums;
    let remainVideos = videoNums;
    let remainAudios = audioNums;
    const spans: Span[] = [];
    const nextStart = () => (spans.length ? spanMax(spans[spans.length - 1]) + 1 : 0);
    let st = 0;
    for (let item = 0; item < multimodalNums; item++) {
      let stIdx = nextStart();
      const hasVision = tokens.includes(cfg.imageTokenId) || tokens.includes(cfg.videoTokenId);
      const edVision = hasVision && (remainVideos > 0 || remainImages > 0) ? indexOf(tokens, cfg.visionStartTokenId, st, 'vision_start', b) : tokens.length + 1;
      const edAudio = tokens.includes(cfg.audioTokenId) && remainAudios > 0 ? indexOf(tokens, cfg.audioStartTokenId, st, 'audio_start', b) : tokens.length + 1;
      const minEd = Math.min(edVision, edAudio);
      const textLen = minEd - st;
      if (textLen !== 0) {
        spans.push(linearSpan(textLen, stIdx));
        stIdx += textLen;
      }
      // <|vision_start|><|audio_start|> opens a video with its soundtrack: two markers on each side.
      const audioInVideo = minEd === edVision && edVision + 1 === edAudio;
      const markers = audioInVideo ? 2 : 1;
      spans.push(linearSpan(markers, stIdx));
      stIdx += markers;
      if (minEd === edAudio) {
        const audioLen = audioOutputLength(need(audios, audioIdx, 'audios'), cfg.nWindow);
        expectPlaceholders(tokens, edAudio + 1, audioLen, [cfg.audioTokenId], `audio ${audioIdx}`, b);
        spans.push(linearSpan(audioLen, stIdx));
        st += textLen + markers + audioLen + markers;
        audioIdx++;
        remainAudios--;
      } else if (minEd === edVision && tokens[edVision + 1] === cfg.imageTokenId) {
        const [t, h, w] = need(images, imageIdx, 'images');
        expectPlaceholders(tokens, edVision + 1, Math.floor((t * h * w) / merge ** 2), [cfg.imageTokenId], `image ${imageIdx}`, b);
        const tIndex = Array.from({ length: t }, (_, g) => f32(g * cfg.positionIdPerSeconds));
        spans.push(visionSpan(stIdx, tIndex, h, w, merge));
        st += textLen + markers + Math.floor((t * h * w) / merge ** 2) + markers;
        imageIdx++;
        remainImages--;
      } else if (minEd === edVision && tokens[edVision + 1] === cfg.videoTokenId) {
        const [t, h, w] = need(videos, videoIdx, 'videos');
        expectPlaceholders(tokens, edVision + 1, Math.floor((t * h * w) / merge ** 2), [cfg.videoTokenId], `video ${videoIdx}`, b);
        spans.push(visionSpan(stIdx, videoTimes(t, need(secondPerGrids, videoIdx, 'video second_per_grid values'), cfg), h, w, merge));
        st += textLen + markers + Math.floor((t * h * w) / merge ** 2) + markers;
        videoIdx++;
        remainVideos--;
      } else if (audioInVideo) {
        const audioLen = audioOutputLength(need(audios, audioIdx, 'audios'), cfg.nWindow);
        const audio = linearSpan(audioLen, stIdx);
        const [t, h, w] = need(videos, videoIdx, 'videos');
        const clipLen = audioLen + Math.floor((t * h * w) / merge ** 2);
        expectPlaceholders(tokens, edAudio + 1, clipLen, [cfg.videoTokenId, cfg.audioTokenId], `video ${videoIdx} with audio ${audioIdx}`, b);
        const video = visionSpan(stIdx, videoTimes(t, need(secondPerGrids, videoIdx, 'video second_per_grid values'), cfg), h, w, merge);
        // Merge by time: a video token goes first when its t is not after the audio token's.
        let vi = 0;
        let ai = 0;
        while (vi < video.t.length && ai < audio.t.length) {
          if (video.t[vi] <= audio.t[ai]) spans.push(sliceSpan(video, vi, ++vi));
          else spans.push(sliceSpan(audio, ai, ++ai));
        }
        if (vi < video.t.length) spans.push(sliceSpan(video, vi, video.t.length));
        if (ai < audio.t.length) spans.push(sliceSpan(audio, ai, audio.t.length));
        st += textLen + markers + audioLen + Math.floor((t * h * w) / merge ** 2) + markers;
        audioIdx++;
        videoIdx++;
        remainVideos--;
        remainAudios--;
      } else {
        throw new Error(`getRopeIndex: batch row ${b}: token ${tokens[edVision + 1]} after <|vision_start|> at ${edVision} is neither an image, a video nor an audio start`);
      }
      // The reference restarts from the max of the LAST span only (for audio-in-video, the clip's tail).
      spans.push(linearSpan(markers, nextStart()));
    }
    if (st < tokens.length) spans.push(linearSpan(tokens.length - st, nextStart()));

    const flat: Span = { t: spans.flatMap((s) => s.t), h: spans.flatMap((s) => s.h), w: spans.flatMap((s) => s.w) };
    if (flat.t.length !== tokens.length) {
      throw new Error(`getRopeIndex: batch row ${b}: the media spans cover ${flat.t.length} positions but the row has ${tokens.length} tokens (placeholder counts do not match the grids / audio lengths)`);
    }
    let k = 0;
    for (let s = 0; s < seq; s++) {
      if (mask[b][s] !== 1) continue;
      positionIds[(0 * batch + b) * seq + s] = flat.t[k];
      positionIds[(1 * batch + b) * seq + s] = flat.h[k];
      positionIds[(2 * batch + b) * seq + s] = flat.w[k];
      k++;
    }
    ropeDeltas.push(f32(spanMax(flat) + 1 - tokens.length));
  }
  return { positionIds, shape: [3, batch, seq], ropeDeltas };
}

/** Temporal positions of a video's groups: g · second_per_grid · position_id_per_seconds, in float32. */
function videoTimes(gridT: number, secondPerGrid: number, cfg: RopeIndexConfig): number[] {
  const spg = f32(secondPerGrid);
  return Array.from({ length: gridT }, (_, g) => f32(f32(g * spg) * cfg.positionIdPerSeconds));
}

/**
 * Positions of tokens fed during incremental decoding: the token at cache length `pastLength + i` sits at
 * `pastLength + i + ropeDelta` on all three rows.
 *
 * ```ts
 * decodePositionIds(59, 3, 1); // [[62], [62], [62]] (t, h, w)
 * ```
 */
export function decodePositionIds(pastLength: number, ropeDelta: number, count = 1): [number[], number[], number[]] {
  const row = Array.from({ length: count }, (_, i) => f32(pastLength + i + ropeDelta));
  return [row, [...row], [...row]];
}
