import * as tf from '@tensorflow/tfjs-core';
import type { ChatMessage, ContentPart, MultimodalPrompt } from './chat-template.js';
import { getRopeIndex, ropeIndexConfigOf } from './rope-index.js';
import type { Qwen3OmniConfig } from './config.js';
import type { DeepStackInput, TextModel } from './text-model.js';
import type { Qwen3OmniTokenizer } from './tokenizer.js';

/*
 * From chat messages with encoded media to what the thinker's first forward takes (spec 3.5): token ids with the
 * placeholders expanded, the input embeddings with the encoder rows written over the placeholders, the DeepStack
 * features at the visual positions, and the 3-D MRoPE positions with their decode delta.
 */

/** Encoder output for one audio: `embeds` is [audio tokens, hidden] (AudioEncoder.encode's rows for it). */
export interface AudioEmbedding {
  readonly embeds: tf.Tensor2D;
  /** Mel frames it was encoded from (sets the placeholder count; must agree with the rows). */
  readonly frames: number;
}

/** Encoder output for one image or video (VisionEncoder.encode): merged rows and the DeepStack features. */
export interface VisionEmbedding {
  readonly embeds: tf.Tensor2D;
  readonly deepstack: readonly tf.Tensor2D[];
  readonly gridThw: readonly [number, number, number];
}

/** Message content whose media parts carry their encoder outputs. The caller keeps owning the tensors. */
export type ThinkerContentPart =
  | { readonly type: 'text'; readonly text: string }
  | ({ readonly type: 'audio' } & AudioEmbedding)
  | ({ readonly type: 'image' } & VisionEmbedding)
  | ({ readonly type: 'video'; readonly secondPerGrid: number; readonly audio?: AudioEmbedding } & VisionEmbedding);

export interface ThinkerMessage {
  readonly role: ChatMessage['role'];
  readonly content: string | readonly ThinkerContentPart[];
}

/** Where a continued conversation stands: what its KV cache holds and the ids still to feed before the new turn. */
export interface PromptContinuation {
  /** Rows the KV cache holds. */
  readonly pastLength: number;
  /** Position of the next row (max position so far + 1). */
  readonly nextPosition: number;
  /** Plain tokens fed before the templated turn (the end of the previous assistant message). */
  readonly prefixIds: readonly number[];
}

/** The prefill input of one turn. `inputsEmbeds` and the DeepStack features are owned by the caller (`dispose`). */
export interface ThinkerPrompt {
  readonly prompt: MultimodalPrompt & { text: string };
  /** [S, hidden] */
  readonly inputsEmbeds: tf.Tensor2D;
  readonly deepstack?: DeepStackInput;
  /** (t, h, w) position of each prompt token. */
  readonly positions: [number[], number[], number[]];
  /** Decode step at cache length P uses position P + ropeDelta on all three axes (P counts rows already cached). */
  readonly ropeDelta: number;
  dispose(): void;
}

/**
 * Builds the thinker's prefill input for `messages` (template, placeholder expansion, embedding splice, DeepStack,
 * get_rope_index). Errors name the media item whose rows disagree with its placeholders.
 *
 * ```ts
 * const p = prepareThinkerPrompt(model, [{ role: 'user', content: [{ type: 'audio', embeds, frames: 300 }, { type: 'text', text: 'Describe it.' }] }]);
 * const out = model.thinker.forward(p.inputsEmbeds, { positions: p.positions, cache, deepstack: p.deepstack });
 * p.dispose();
 * ```
 */
export function prepareThinkerPrompt(
  model: { readonly config: Qwen3OmniConfig; readonly tokenizer: Qwen3OmniTokenizer; readonly thinker: TextModel },
  messages: readonly ThinkerMessage[],
  continuation?: PromptContinuation,
): ThinkerPrompt {
  const th = model.config.thinker_config;
  const plain: ChatMessage[] = messages.map((m) => ({ role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map(asContentPart) }));
  const encoded = model.tokenizer.encodeChat(plain, {
    spatialMergeSize: th.vision_config.spatial_merge_size,
    nWindow: th.audio_config.n_window,
    positionIdPerSeconds: th.position_id_per_seconds,
  });
  const prompt = continuation?.prefixIds.length ? { ...encoded, ids: [...continuation.prefixIds, ...encoded.ids] } : encoded;

  // Media rows in placeholder order: audios (a video's soundtrack where the video is), images, videos.
  const audios: Array<{ what: string; e: AudioEmbedding }> = [];
  const images: Array<{ what: string; e: VisionEmbedding }> = [];
  const videos: Array<{ what: string; e: VisionEmbedding }> = [];
  for (const m of messages) {
    if (typeof m.content === 'string') continue;
    for (const p of m.content) {
      if (p.type === 'audio') audios.push({ what: `audio #${audios.length + 1}`, e: p });
      else if (p.type === 'image') images.push({ what: `image #${images.length + 1}`, e: p });
      else if (p.type === 'video') {
        videos.push({ what: `video #${videos.length + 1}`, e: p });
        if (p.audio) audios.push({ what: `video #${videos.length} soundtrack`, e: p.audio });
      }
    }
  }
  const merge2 = th.vision_config.spatial_merge_size ** 2;
  audios.forEach(({ what, e }, i) => {
    if (e.embeds.shape[0] !== prompt.audioTokens[i]) {
      throw new Error(`thinker prompt: ${what} has ${e.embeds.shape[0]} embedding rows but ${e.frames} mel frames make ${prompt.audioTokens[i]} audio tokens`);
    }
  });
  for (const { what, e } of [...images, ...videos]) {
    const n = (e.gridThw[0] * e.gridThw[1] * e.gridThw[2]) / merge2;
    if (e.embeds.shape[0] !== n) throw new Error(`thinker prompt: ${what} has ${e.embeds.shape[0]} embedding rows but grid [${e.gridThw}] makes ${n} tokens`);
    if (e.deepstack.length !== th.vision_config.deepstack_visual_indexes.length) {
      throw new Error(`thinker prompt: ${what} has ${e.deepstack.length} DeepStack features, the config's deepstack_visual_indexes has ${th.vision_config.deepstack_visual_indexes.length}`);
    }
  }

  const tok = model.tokenizer.specialTokens;
  const owned: tf.Tensor[] = [];
  try {
    const cat = (xs: tf.Tensor2D[]): tf.Tensor2D => {
      const t = xs.length === 1 ? tf.clone(xs[0]) : tf.concat(xs, 0);
      owned.push(t);
      return t;
    };
    const splices = [
      ...(audios.length ? [{ tokenId: tok.audioPad, rows: cat(audios.map((a) => a.e.embeds)), name: 'audio' }] : []),
      ...(images.length ? [{ tokenId: tok.imagePad, rows: cat(images.map((a) => a.e.embeds)), name: 'image' }] : []),
      ...(videos.length ? [{ tokenId: tok.videoPad, rows: cat(videos.map((a) => a.e.embeds)), name: 'video' }] : []),
    ];
    const inputsEmbeds = model.thinker.embed(prompt.ids, splices);
    for (const t of owned.splice(0)) t.dispose();
    owned.push(inputsEmbeds);

    let deepstack: DeepStackInput | undefined;
    if (images.length || videos.length) {
      // Visual positions in sequence order; image and video rows interleave as their placeholders do.
      const positions: number[] = [];
      const pick: number[] = [];
      let im = 0;
      let vi = 0;
      const imageRows = images.reduce((a, x) => a + x.e.embeds.shape[0], 0);
      prompt.ids.forEach((id, p) => {
        if (id === tok.imagePad) {
          positions.push(p);
          pick.push(im++);
        } else if (id === tok.videoPad) {
          positions.push(p);
          pick.push(imageRows + vi++);
        }
      });
      const index = tf.tensor1d(pick, 'int32');
      const features = th.vision_config.deepstack_visual_indexes.map((_, k) =>
        tf.tidy(() => tf.gather(tf.concat([...images, ...videos].map((x) => x.e.deepstack[k]), 0), index) as tf.Tensor2D),
      );
      index.dispose();
      owned.push(...features);
      deepstack = { positions, features };
    }

    const rope = getRopeIndex(
      {
        inputIds: [prompt.ids],
        imageGridThw: prompt.imageGridThw,
        videoGridThw: prompt.videoGridThw,
        audioSeqlens: prompt.audioFrames,
        secondPerGrids: prompt.videoSecondPerGrid,
        useAudioInVideo: prompt.useAudioInVideo,
      },
      ropeIndexConfigOf(th),
    );
    const S = prompt.ids.length;
    // get_rope_index is translation invariant: a continued conversation's new rows start where the last one ended.
    const offset = continuation?.nextPosition ?? 0;
    const row = (r: number) => Array.from(rope.positionIds.subarray(r * S, (r + 1) * S), (v) => v + offset);
    const disposables = [...owned];
    return {
      prompt,
      inputsEmbeds,
      deepstack,
      positions: [row(0), row(1), row(2)],
      // Decode positions are (cache length + delta); the cache already holds `pastLength` rows.
      ropeDelta: rope.ropeDeltas[0] + offset - (continuation?.pastLength ?? 0),
      dispose: () => {
        for (const t of disposables) if (!t.isDisposed) t.dispose();
      },
    };
  } catch (err) {
    for (const t of owned) t.dispose();
    throw err;
  }
}

function asContentPart(p: ThinkerContentPart): ContentPart {
  switch (p.type) {
    case 'text':
      return p;
    case 'audio':
      return { type: 'audio', frames: p.frames };
    case 'image':
      return { type: 'image', gridThw: p.gridThw };
    case 'video':
      return { type: 'video', gridThw: p.gridThw, secondPerGrid: p.secondPerGrid, ...(p.audio ? { audioFrames: p.audio.frames } : {}) };
  }
}
