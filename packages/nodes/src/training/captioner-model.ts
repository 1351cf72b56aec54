import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { qwen3OmniExpectedTensors, SafetensorsFile, writeSafetensors, type Qwen3OmniConfigLike, type TensorToWrite } from '@omniflow/runtime-gpu';
import { parseQwen3OmniConfig } from '../models/qwen3-omni/config.js';
import { CAPTION_WORDS } from './captions.js';
import { SceneRandom } from './scenes.js';

/*
 * A small captioner in the official Qwen3-Omni layout: a thinker (audio tower + MoE text model, no vision tower, no
 * talker) with a word-level tokenizer.json. `writeCaptionerFolder` writes config.json, tokenizer files and randomly
 * initialised weights; the folder then loads with loadQwen3Omni like any released checkpoint.
 */

/** Special tokens at fixed low ids, then the chat-template role words, then the caption words. */
const SPECIAL_TOKENS = [
  '<unk>', '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|audio_start|>', '<|audio_end|>', '<|audio_pad|>',
  '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>',
] as const;
const ROLE_WORDS = ['user', 'assistant', 'system'] as const;

/**
 * Token → id of the built-in word-level vocabulary: special tokens, role words, then the caption words.
 *
 * ```ts
 * captionerVocabulary().get('<|audio_pad|>'); // 6
 * ```
 */
export function captionerVocabulary(words: readonly string[] = CAPTION_WORDS): Map<string, number> {
  const vocab = new Map<string, number>();
  for (const t of [...SPECIAL_TOKENS, ...ROLE_WORDS, ...words]) {
    if (vocab.has(t)) throw new Error(`captioner vocabulary: '${t}' is listed twice`);
    vocab.set(t, vocab.size);
  }
  return vocab;
}

/**
 * tokenizer.json (WordLevel model, Whitespace pre-tokenizer, specials as added tokens) and tokenizer_config.json
 * for a word vocabulary. Decoding joins words with single spaces.
 *
 * ```ts
 * const { tokenizerJson, tokenizerConfig } = captionerTokenizerFiles();
 * ```
 */
export function captionerTokenizerFiles(words: readonly string[] = CAPTION_WORDS): { tokenizerJson: object; tokenizerConfig: object } {
  const vocab = captionerVocabulary(words);
  const added = SPECIAL_TOKENS.map((content) => ({ id: vocab.get(content)!, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab: Object.fromEntries(vocab), unk_token: '<unk>' },
  };
  const tokenizerConfig = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    model_max_length: 32768,
    unk_token: '<unk>',
    eos_token: '<|im_end|>',
    pad_token: '<|endoftext|>',
    clean_up_tokenization_spaces: false,
    audio_token: '<|audio_pad|>',
    audio_bos_token: '<|audio_start|>',
    audio_eos_token: '<|audio_end|>',
    image_token: '<|image_pad|>',
    video_token: '<|video_pad|>',
    vision_bos_token: '<|vision_start|>',
    vision_eos_token: '<|vision_end|>',
  };
  return { tokenizerJson, tokenizerConfig };
}

/** The sizes that define a captioner; everything else in config.json follows from them. */
export interface CaptionerSizes {
  /** Audio tower width, layers, heads, FFN width and conv channels. */
  audioDModel: number;
  audioLayers: number;
  audioHeads: number;
  audioFfn: number;
  audioConvChannels: number;
  /** Mel frames per attention window of the audio tower (a multiple of 100). */
  audioWindowFrames: number;
  /** Text model width, layers, heads (head_dim = hidden / heads), KV heads, experts, experts per token, expert FFN width. */
  textHidden: number;
  textLayers: number;
  textHeads: number;
  textKvHeads: number;
  experts: number;
  expertsPerToken: number;
  moeIntermediate: number;
}

/** The shipped built-in model's sizes. */
export const BUILTIN_CAPTIONER_SIZES: CaptionerSizes = {
  audioDModel: 64, audioLayers: 2, audioHeads: 4, audioFfn: 128, audioConvChannels: 16, audioWindowFrames: 400,
  textHidden: 128, textLayers: 2, textHeads: 4, textKvHeads: 2, experts: 4, expertsPerToken: 2, moeIntermediate: 128,
};

/** A tiny configuration for tests: trains a few steps in a second or two. */
export const TINY_CAPTIONER_SIZES: CaptionerSizes = {
  audioDModel: 32, audioLayers: 1, audioHeads: 2, audioFfn: 64, audioConvChannels: 8, audioWindowFrames: 100,
  textHidden: 32, textLayers: 2, textHeads: 2, textKvHeads: 1, experts: 4, expertsPerToken: 2, moeIntermediate: 32,
};

/**
 * config.json of a thinker-only Qwen3-Omni checkpoint with these sizes (validated by parseQwen3OmniConfig).
 *
 * ```ts
 * const config = captionerConfig(TINY_CAPTIONER_SIZES);
 * config.thinker_config.text_config.hidden_size; // 32
 * ```
 */
export function captionerConfig(s: CaptionerSizes, words: readonly string[] = CAPTION_WORDS): Record<string, any> {
  const vocab = captionerVocabulary(words);
  const id = (t: string) => vocab.get(t)!;
  const headDim = s.textHidden / s.textHeads;
  if (!Number.isInteger(headDim) || headDim % 4 !== 0) throw new Error(`captioner sizes: textHidden ${s.textHidden} / textHeads ${s.textHeads} must be a whole head_dim divisible by 4`);
  if (s.audioWindowFrames % 100 !== 0) throw new Error(`captioner sizes: audioWindowFrames ${s.audioWindowFrames} must be a multiple of 100 (one chunk)`);
  const half = headDim / 2;
  // MRoPE sections over (t, h, w) in the release's proportions (24:20:20 of 64).
  const h = Math.floor((half * 20) / 64);
  const mropeSection = [half - 2 * h, h, h];
  // Vocab rounded up to a multiple of 16 (free rows the tokenizer never produces, as released checkpoints pad).
  const vocabSize = Math.ceil(vocab.size / 16) * 16;
  const config = {
    architectures: ['Qwen3OmniMoeForConditionalGeneration'],
    model_type: 'qwen3_omni_moe',
    enable_audio_output: false,
    im_start_token_id: id('<|im_start|>'),
    im_end_token_id: id('<|im_end|>'),
    user_token_id: id('user'),
    assistant_token_id: id('assistant'),
    system_token_id: id('system'),
    thinker_config: {
      model_type: 'qwen3_omni_moe_thinker',
      audio_token_id: id('<|audio_pad|>'),
      audio_start_token_id: id('<|audio_start|>'),
      audio_end_token_id: id('<|audio_end|>'),
      image_token_id: id('<|image_pad|>'),
      video_token_id: id('<|video_pad|>'),
      vision_start_token_id: id('<|vision_start|>'),
      vision_end_token_id: id('<|vision_end|>'),
      user_token_id: id('user'),
      position_id_per_seconds: 13,
      seconds_per_chunk: 2,
      initializer_range: 0.02,
      tie_word_embeddings: false,
      dtype: 'float32',
      audio_config: {
        model_type: 'qwen3_omni_moe_audio_encoder',
        d_model: s.audioDModel,
        encoder_layers: s.audioLayers,
        encoder_attention_heads: s.audioHeads,
        encoder_ffn_dim: s.audioFfn,
        downsample_hidden_size: s.audioConvChannels,
        output_dim: s.textHidden,
        num_mel_bins: 128,
        n_window: 50,
        n_window_infer: s.audioWindowFrames,
        conv_chunksize: 500,
        max_source_positions: 1500,
        activation_function: 'gelu',
        activation_dropout: 0,
        attention_dropout: 0,
        dropout: 0,
        initializer_range: 0.02,
        scale_embedding: false,
      },
      text_config: {
        model_type: 'qwen3_omni_moe_text',
        vocab_size: vocabSize,
        hidden_size: s.textHidden,
        num_hidden_layers: s.textLayers,
        num_attention_heads: s.textHeads,
        num_key_value_heads: s.textKvHeads,
        head_dim: headDim,
        intermediate_size: s.moeIntermediate,
        moe_intermediate_size: s.moeIntermediate,
        num_experts: s.experts,
        num_experts_per_tok: s.expertsPerToken,
        norm_topk_prob: true,
        decoder_sparse_step: 1,
        mlp_only_layers: [],
        shared_expert_intermediate_size: 0,
        hidden_act: 'silu',
        rms_norm_eps: 1e-6,
        rope_theta: 1000000,
        rope_scaling: { rope_type: 'default', type: 'default', interleaved: true, mrope_interleaved: true, mrope_section: mropeSection },
        max_position_embeddings: 32768,
        attention_bias: false,
        attention_dropout: 0,
        use_qk_norm: true,
        use_sliding_window: false,
        sliding_window: null,
        router_aux_loss_coef: 0.001,
        initializer_range: 0.02,
        tie_word_embeddings: false,
        use_cache: true,
      },
      // No vision tower is shipped (no thinker.visual.* tensors); the section only keeps the config complete.
      vision_config: {
        model_type: 'qwen3_omni_moe_vision_encoder',
        depth: 1, hidden_size: 32, intermediate_size: 64, num_heads: 2, out_hidden_size: s.textHidden,
        patch_size: 16, spatial_patch_size: 16, spatial_merge_size: 2, temporal_patch_size: 2, in_channels: 3, in_chans: 3,
        image_size: 768, num_position_embeddings: 64, deepstack_visual_indexes: [0], hidden_act: 'gelu_pytorch_tanh',
        apply_vit_abs_pos_embed: true, tokens_per_second: 2, initializer_range: 0.02,
      },
    },
    torch_dtype: 'float32',
  };
  parseQwen3OmniConfig(config, 'captioner config');
  return config;
}

/**
 * Random initial weights for every thinker tensor the config implies except the vision tower: N(0, 0.02) matrices
 * and embeddings, ones for norm scales, zeros for biases (transformers' `_init_weights`). Deterministic in `seed`.
 *
 * ```ts
 * const weights = initialCaptionerWeights(captionerConfig(TINY_CAPTIONER_SIZES), 0);
 * weights['thinker.model.norm.weight'].shape; // [32]
 * ```
 */
export function initialCaptionerWeights(config: Record<string, any>, seed: number): Record<string, TensorToWrite> {
  const expected = qwen3OmniExpectedTensors(config as Qwen3OmniConfigLike);
  const rng = new SceneRandom(seed, 0x5eed);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of [...expected].sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!name.startsWith('thinker.') || name.startsWith('thinker.visual.')) continue;
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    const isNorm = /(norm|layernorm|ln_post|layer_norm)\.weight$/.test(name);
    if (isNorm) data.fill(1);
    else if (!name.endsWith('.bias')) for (let i = 0; i < size; i++) data[i] = 0.02 * rng.normal();
    tensors[name] = { dtype: 'F32', shape, data };
  }
  return tensors;
}

/**
 * Writes a complete model folder: config.json, tokenizer.json, tokenizer_config.json and model.safetensors.
 *
 * ```ts
 * writeCaptionerFolder('/tmp/captioner', captionerConfig(TINY_CAPTIONER_SIZES), initialCaptionerWeights(config, 0));
 * const model = await loadQwen3Omni('/tmp/captioner');
 * ```
 */
export function writeCaptionerFolder(dir: string, config: Record<string, any>, weights: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  mkdirSync(dir, { recursive: true });
  const { tokenizerJson, tokenizerConfig } = captionerTokenizerFiles();
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeFileSync(join(dir, 'tokenizer.json'), `${JSON.stringify(tokenizerJson, null, 1)}\n`);
  writeFileSync(join(dir, 'tokenizer_config.json'), `${JSON.stringify(tokenizerConfig, null, 2)}\n`);
  writeSafetensors(join(dir, 'model.safetensors'), weights, { format: 'pt', ...metadata });
}

/** Layers to append to a trained captioner (see growCaptioner). */
export interface CaptionerGrowth {
  /** Audio tower layers added after its last one. */
  readonly audioLayers?: number;
  /** Text model decoder layers added after its last one. */
  readonly textLayers?: number;
}

/** The residual output projections of a layer: zero in a new layer, so the layer adds nothing until it is trained. */
const RESIDUAL_OUTPUTS = /^thinker\.(audio_tower\.layers\.\d+\.(self_attn\.out_proj|fc2)|model\.layers\.\d+\.(self_attn\.o_proj|mlp\.(experts\.\d+|shared_expert)\.down_proj))\.(weight|bias)$/;

/**
 * A deeper captioner computing exactly what `weights` compute: the config with `growth` more audio and text layers,
 * the trained tensors kept, and each new layer initialised like a fresh model (seeded) except its residual output
 * projections (attention out_proj / o_proj, fc2, the experts' down_proj), which are zero. A pre-norm block with a
 * zero output adds nothing to the residual stream, so the grown model's captions and losses equal the original's
 * until fine-tuning moves the new layers; their gradients are non-zero from the first step (the output projections'
 * own gradients are the layers' activations).
 *
 * ```ts
 * const grown = growCaptioner(config, weights, { audioLayers: 1, textLayers: 1 }, 0);
 * grown.config.thinker_config.text_config.num_hidden_layers; // one more
 * ```
 */
export function growCaptioner(config: Record<string, any>, weights: Record<string, TensorToWrite>, growth: CaptionerGrowth, seed: number): { config: Record<string, any>; weights: Record<string, TensorToWrite> } {
  const audio = growth.audioLayers ?? 0, text = growth.textLayers ?? 0;
  for (const [name, n] of [['audioLayers', audio], ['textLayers', text]] as const) {
    if (!Number.isInteger(n) || n < 0) throw new Error(`growCaptioner: ${name} must be a non-negative integer, got ${n}`);
  }
  const grown = structuredClone(config);
  grown.thinker_config.audio_config.encoder_layers += audio;
  grown.thinker_config.text_config.num_hidden_layers += text;
  parseQwen3OmniConfig(grown, 'grown captioner config');
  const fresh = initialCaptionerWeights(grown, seed);
  const out: Record<string, TensorToWrite> = {};
  for (const [name, t] of Object.entries(fresh)) {
    const old = weights[name];
    if (old) {
      if (old.shape.join(',') !== t.shape.join(',')) throw new Error(`growCaptioner: ${name} is [${old.shape}], the config implies [${t.shape}]`);
      out[name] = old;
    } else {
      out[name] = RESIDUAL_OUTPUTS.test(name) ? { ...t, data: new Float32Array(t.shape.reduce((a, b) => a * b, 1)) } : t;
    }
  }
  const unused = Object.keys(weights).filter((k) => !(k in out));
  if (unused.length) throw new Error(`growCaptioner: ${unused.length} tensor(s) are not part of a captioner of this config: ${unused.slice(0, 3).join(', ')}`);
  return { config: grown, weights: out };
}

/**
 * Every tensor of a safetensors file as float32 host data (bf16/f16 widened), ready to hand back to writeSafetensors:
 * a model folder's weights for growCaptioner, a checkpoint's optimizer moments.
 *
 * ```ts
 * const weights = readFloatTensors('models/omniflow-captioner/model.safetensors');
 * weights['thinker.model.norm.weight'].shape; // [128]
 * ```
 */
export function readFloatTensors(path: string): Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> {
  const f = SafetensorsFile.open(path);
  try {
    return Object.fromEntries(f.keys().map((k) => {
      const t = f.read(k);
      if (!(t.data instanceof Float32Array)) throw new Error(`${path}: tensor '${k}' is not floating point`);
      return [k, { dtype: 'F32' as const, shape: t.shape, data: t.data }];
    }));
  } finally {
    f.close();
  }
}
