import { Template } from '@huggingface/jinja';
import { audioOutputLength } from './audio-encoder.js';

/*
 * Qwen3-Omni chat prompts (spec 5.4): ChatML rendered with @huggingface/jinja, then the processor's
 * `replace_multimodal_special_tokens` step, which expands each single media placeholder to as many tokens as the
 * encoder will produce rows, and interleaves a video's own audio with its frames by timestamp (audio-in-video).
 */

/** A piece of a message: text, or a media item described by the sizes its placeholders depend on. */
export type ContentPart =
  | { readonly type: 'text'; readonly text: string }
  /** An audio clip of `frames` log-mel frames (100 per second; the feature_attention_mask sum). */
  | { readonly type: 'audio'; readonly frames: number }
  /** An image of `gridThw` = [t, h, w] patches (t = 1 for a still). */
  | { readonly type: 'image'; readonly gridThw: readonly [number, number, number] }
  /**
   * A video of `gridThw` patches whose temporal patches are `secondPerGrid` seconds apart (temporal_patch_size / fps).
   * With `audioFrames`, the video's own soundtrack is interleaved with its frames (use_audio_in_video).
   */
  | {
      readonly type: 'video';
      readonly gridThw: readonly [number, number, number];
      readonly secondPerGrid: number;
      readonly audioFrames?: number;
    };

export interface ChatMessage {
  readonly role: 'system' | 'user' | 'assistant';
  readonly content: string | readonly ContentPart[];
}

/**
 * The built-in Qwen3-Omni chat template, used when a model folder ships none. It renders the ChatML layout of spec
 * 5.4: media placeholders in content order, no default system prompt (whether the official template injects one is
 * unverified), `<|im_start|>assistant\n` as the generation prompt. Token strings come from the context so the same
 * template serves any vocabulary.
 */
export const QWEN3_OMNI_CHAT_TEMPLATE = [
  '{%- for message in messages -%}',
  "{{ im_start }}{{ message.role }}{{ '\\n' }}",
  '{%- if message.content is string -%}{{ message.content }}',
  '{%- else -%}{%- for part in message.content -%}',
  "{%- if part.type == 'text' -%}{{ part.text }}",
  "{%- elif part.type == 'audio' -%}{{ audio_bos_token }}{{ audio_token }}{{ audio_eos_token }}",
  "{%- elif part.type == 'image' -%}{{ vision_bos_token }}{{ image_token }}{{ vision_eos_token }}",
  "{%- elif part.type == 'video' -%}{{ vision_bos_token }}{{ video_token }}{{ vision_eos_token }}",
  "{%- else -%}{{ raise_exception('unknown content part type: ' ~ part.type) }}",
  '{%- endif -%}{%- endfor -%}{%- endif -%}',
  "{{ im_end }}{{ '\\n' }}",
  '{%- endfor -%}',
  "{%- if add_generation_prompt -%}{{ im_start }}assistant{{ '\\n' }}{%- endif -%}",
].join('');

/** Token strings a template refers to, keyed by the names HF tokenizers expose. */
export interface ChatTemplateTokens {
  readonly im_start: string;
  readonly im_end: string;
  readonly audio_token: string;
  readonly audio_bos_token: string;
  readonly audio_eos_token: string;
  readonly image_token: string;
  readonly video_token: string;
  readonly vision_bos_token: string;
  readonly vision_eos_token: string;
}

/**
 * Renders a jinja chat template over `messages`. Media parts reach the template as `{ type: 'audio', audio: … }` etc.,
 * which satisfies both styles HF templates test (`part.type == 'audio'` and `'audio' in part`).
 *
 * ```ts
 * const text = renderChatTemplate(QWEN3_OMNI_CHAT_TEMPLATE, [{ role: 'user', content: 'Hi' }], { tokens });
 * // '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
 * ```
 */
export function renderChatTemplate(
  template: string,
  messages: readonly ChatMessage[],
  options: { tokens: ChatTemplateTokens; addGenerationPrompt?: boolean; extra?: Record<string, unknown> },
): string {
  let compiled: Template;
  try {
    compiled = new Template(template);
  } catch (err) {
    throw new Error(`chat template: does not parse (${(err as Error).message})`, { cause: err });
  }
  const context = {
    ...options.tokens,
    ...options.extra,
    messages: messages.map((m, i) => {
      if (m.role !== 'system' && m.role !== 'user' && m.role !== 'assistant') {
        throw new Error(`chat template: messages[${i}].role is '${String(m.role)}', expected system, user or assistant`);
      }
      return { role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map(templatePart) };
    }),
    add_generation_prompt: options.addGenerationPrompt ?? true,
    bos_token: '',
    eos_token: options.tokens.im_end,
  };
  try {
    return compiled.render(context);
  } catch (err) {
    throw new Error(`chat template: ${(err as Error).message}`, { cause: err });
  }
}

function templatePart(p: ContentPart): Record<string, unknown> {
  switch (p.type) {
    case 'text':
      return { type: 'text', text: p.text };
    case 'audio':
      return { type: 'audio', audio: `audio:${p.frames}` };
    case 'image':
      return { type: 'image', image: `image:${p.gridThw.join('x')}` };
    case 'video':
      return { type: 'video', video: `video:${p.gridThw.join('x')}` };
    default:
      return { type: String((p as { type?: unknown }).type) };
  }
}

/** Token ids of the multimodal markers (from config.json's thinker_config). */
export interface MultimodalTokenIds {
  readonly audioStart: number;
  readonly audioEnd: number;
  readonly audioPad: number;
  readonly visionStart: number;
  readonly visionEnd: number;
  readonly imagePad: number;
  readonly videoPad: number;
}

/** What the thinker needs besides the ids: per-item sizes in placeholder order (the inputs of get_rope_index). */
export interface MultimodalPrompt {
  readonly ids: number[];
  /** Mel frames of every audio in placeholder order, a video's own soundtrack included (HF `audio_seqlens`). */
  readonly audioFrames: number[];
  /** Audio tokens of each of `audioFrames`. */
  readonly audioTokens: number[];
  readonly imageGridThw: Array<[number, number, number]>;
  readonly videoGridThw: Array<[number, number, number]>;
  readonly videoSecondPerGrid: number[];
  /** Whether videos carry their soundtrack (one flag for the prompt, as get_rope_index takes one). */
  readonly useAudioInVideo: boolean;
}

export interface PlaceholderOptions {
  /** vision_config.spatial_merge_size: placeholders per image = t·h·w / merge². */
  readonly spatialMergeSize: number;
  /** audio_config.n_window (chunks of 2·n_window mel frames). */
  readonly nWindow: number;
  /** thinker_config.position_id_per_seconds (13): time scale of the audio-in-video interleaving. */
  readonly positionIdPerSeconds: number;
}

/**
 * The processor's placeholder expansion over already tokenised ids: every `<|audio_pad|>` becomes
 * `audioOutputLength(frames)` copies, every `<|image_pad|>`/`<|video_pad|>` t·h·w/merge² copies, and a video with
 * `audioFrames` has `<|vision_start|><|video_pad|><|vision_end|>` replaced by
 * `<|vision_start|><|audio_start|>` + frames and audio merged by time + `<|audio_end|><|vision_end|>`: video token k
 * of temporal group g sits at g·secondPerGrid·positionIdPerSeconds, audio token j at j, and a video token goes first
 * when its time is ≤ the audio token's.
 *
 * ```ts
 * const p = expandMultimodalPlaceholders(ids, [{ type: 'audio', frames: 150 }], tokenIds, opts);
 * p.audioTokens; // [20]
 * ```
 */
export function expandMultimodalPlaceholders(
  ids: readonly number[],
  media: readonly ContentPart[],
  tokens: MultimodalTokenIds,
  options: PlaceholderOptions,
): MultimodalPrompt {
  const audios = media.filter((p) => p.type === 'audio');
  const images = media.filter((p) => p.type === 'image');
  const videos = media.filter((p) => p.type === 'video');
  const withSound = videos.filter((v) => v.audioFrames !== undefined).length;
  if (withSound !== 0 && withSound !== videos.length) {
    throw new Error(`prompt: ${withSound} of ${videos.length} videos carry audioFrames; audio-in-video must be used for all videos or none`);
  }
  const useAudioInVideo = withSound > 0;
  const merge2 = options.spatialMergeSize ** 2;
  const gridTokens = (g: readonly [number, number, number], what: string): number => {
    if (!g.every((d) => Number.isInteger(d) && d > 0)) throw new Error(`prompt: ${what} gridThw [${g}] must be positive integers`);
    const n = g[0] * g[1] * g[2];
    if (n % merge2 !== 0) throw new Error(`prompt: ${what} gridThw [${g}] has ${n} patches, not a multiple of spatial_merge_size² = ${merge2}`);
    return n / merge2;
  };
  const audioTokensOf = (frames: number, what: string): number => {
    if (!Number.isInteger(frames) || frames <= 0) throw new Error(`prompt: ${what} has ${frames} mel frames, expected a positive integer`);
    return audioOutputLength(frames, options.nWindow);
  };

  const out: number[] = [];
  const result = {
    ids: out,
    audioFrames: [] as number[],
    audioTokens: [] as number[],
    imageGridThw: [] as Array<[number, number, number]>,
    videoGridThw: [] as Array<[number, number, number]>,
    videoSecondPerGrid: [] as number[],
    useAudioInVideo,
  };
  let a = 0;
  let im = 0;
  let v = 0;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id === tokens.audioPad) {
      const item = audios[a++];
      if (!item) throw new Error(`prompt: more audio placeholders than the ${audios.length} audio item(s) given`);
      const n = audioTokensOf(item.frames, `audio #${a}`);
      result.audioFrames.push(item.frames);
      result.audioTokens.push(n);
      for (let k = 0; k < n; k++) out.push(tokens.audioPad);
    } else if (id === tokens.imagePad) {
      const item = images[im++];
      if (!item) throw new Error(`prompt: more image placeholders than the ${images.length} image item(s) given`);
      const n = gridTokens(item.gridThw, `image #${im}`);
      result.imageGridThw.push([...item.gridThw]);
      for (let k = 0; k < n; k++) out.push(tokens.imagePad);
    } else if (id === tokens.videoPad) {
      const item = videos[v++];
      if (!item) throw new Error(`prompt: more video placeholders than the ${videos.length} video item(s) given`);
      const n = gridTokens(item.gridThw, `video #${v}`);
      if (!(item.secondPerGrid > 0)) throw new Error(`prompt: video #${v} secondPerGrid is ${item.secondPerGrid}, expected > 0`);
      result.videoGridThw.push([...item.gridThw]);
      result.videoSecondPerGrid.push(item.secondPerGrid);
      if (!useAudioInVideo) {
        for (let k = 0; k < n; k++) out.push(tokens.videoPad);
        continue;
      }
      if (out[out.length - 1] !== tokens.visionStart || ids[i + 1] !== tokens.visionEnd) {
        throw new Error(`prompt: video #${v} with audio must be written <|vision_start|><|video_pad|><|vision_end|> (token ${i})`);
      }
      const audioN = audioTokensOf(item.audioFrames!, `video #${v} soundtrack`);
      result.audioFrames.push(item.audioFrames!);
      result.audioTokens.push(audioN);
      const perGroup = n / item.gridThw[0];
      const step = item.secondPerGrid * options.positionIdPerSeconds;
      out.push(tokens.audioStart);
      let vk = 0;
      let ak = 0;
      while (vk < n && ak < audioN) {
        if (Math.floor(vk / perGroup) * step <= ak) {
          out.push(tokens.videoPad);
          vk++;
        } else {
          out.push(tokens.audioPad);
          ak++;
        }
      }
      for (; vk < n; vk++) out.push(tokens.videoPad);
      for (; ak < audioN; ak++) out.push(tokens.audioPad);
      out.push(tokens.audioEnd);
    } else {
      out.push(id);
    }
  }
  if (a !== audios.length || im !== images.length || v !== videos.length) {
    throw new Error(
      `prompt: the template placed ${a} audio, ${im} image and ${v} video placeholder(s) for ` +
        `${audios.length} audio, ${images.length} image and ${videos.length} video item(s)`,
    );
  }
  return result;
}
