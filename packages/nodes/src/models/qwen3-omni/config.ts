import { readFileSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';

/*
 * zod schemas for the official nested Qwen3-Omni-MoE `config.json` (spec section 2).
 *
 * Field names are the checkpoint's own. Every dimension the model code needs is required; fields the reference code
 * reads with a class default get that default here (the released value, where spec section 2 says the class default
 * is wrong). Fields the json carries but no code reads (initializer_range, dropout rates, …) are declared optional so
 * they are not reported as unknown. Anything else is tolerated and reported by `parseQwen3OmniConfig`.
 *
 * RoPE comes in two forms: the released 4.57-era `rope_theta` + `rope_scaling`, and transformers v5's
 * `rope_parameters`. Both are accepted and folded into one normalised `rope` field on every text config.
 */

const int = z.number().int();
const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const posNum = z.number().positive();
const tokenId = z.number().int().nonnegative();

/** Keys every HF PretrainedConfig may serialise; read by no model code here. */
const hfCommon = {
  model_type: z.string().optional(),
  architectures: z.array(z.string()).nullish(),
  torch_dtype: z.string().nullish(),
  dtype: z.string().nullish(),
  transformers_version: z.string().optional(),
  _name_or_path: z.string().optional(),
  initializer_range: z.number().optional(),
  use_cache: z.boolean().optional(),
  output_router_logits: z.boolean().optional(),
  router_aux_loss_coef: z.number().optional(),
  attention_dropout: z.number().optional(),
  dropout: z.number().optional(),
  activation_dropout: z.number().optional(),
  tie_word_embeddings: z.boolean().optional(),
};

const mropeSection = z.tuple([posInt, posInt, posInt]);

const ropeScaling = z.object({
  type: z.string().optional(),
  rope_type: z.string().optional(),
  mrope_section: mropeSection.optional(),
  interleaved: z.boolean().optional(),
  mrope_interleaved: z.boolean().optional(),
});

const ropeParameters = ropeScaling.extend({ rope_theta: posNum.optional() });

/** The normalised RoPE description every text config carries after parsing. */
export interface RopeConfig {
  /** Base of the inverse frequencies: inv_freq[j] = theta^(-2j/head_dim). */
  theta: number;
  /** rope_type; only 'default' (no scaling) is implemented. */
  type: string;
  /** (t, h, w) frequency counts of the multimodal RoPE; absent for plain 1-D RoPE. */
  mropeSection?: [number, number, number];
  /** Interleaved MRoPE layout (T H W T H W …) rather than contiguous sections. */
  interleaved: boolean;
}

/** Fields shared by the decoder-only text configs (thinker text, talker text, code predictor). */
const decoderFields = {
  ...hfCommon,
  vocab_size: posInt,
  hidden_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  num_key_value_heads: posInt,
  head_dim: posInt.optional(),
  intermediate_size: posInt,
  hidden_act: z.literal('silu').default('silu'),
  rms_norm_eps: posNum.default(1e-6),
  attention_bias: z.boolean().default(false),
  max_position_embeddings: posInt.default(32768),
  rope_theta: posNum.optional(),
  rope_scaling: ropeScaling.nullish(),
  rope_parameters: ropeParameters.nullish(),
  sliding_window: posInt.nullish(),
  use_sliding_window: z.boolean().optional(),
  max_window_layers: int.optional(),
  layer_types: z.array(z.string()).optional(),
  use_qk_norm: z.boolean().optional(),
};

const moeFields = {
  moe_intermediate_size: posInt,
  num_experts: posInt.optional(),
  /** The talker json may spell num_experts this way (spec 2.6). */
  num_local_experts: posInt.optional(),
  num_experts_per_tok: posInt,
  norm_topk_prob: z.boolean().default(true),
  decoder_sparse_step: posInt.default(1),
  mlp_only_layers: z.array(nonNegInt).default([]),
  shared_expert_intermediate_size: nonNegInt.default(0),
};

type DecoderRaw = {
  hidden_size: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim?: number;
  rope_theta?: number;
  rope_scaling?: z.infer<typeof ropeScaling> | null;
  rope_parameters?: z.infer<typeof ropeParameters> | null;
};

/** Resolves head_dim (explicit in the release; hidden/heads otherwise) and the two RoPE spellings into one. */
function normaliseDecoder<T extends DecoderRaw>(c: T, ctx: z.RefinementCtx, defaultTheta: number): T & { head_dim: number; rope: RopeConfig } {
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim)) {
    ctx.addIssue({ code: 'custom', path: ['head_dim'], message: `head_dim is absent and hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${c.num_attention_heads}` });
  }
  if (c.num_attention_heads % c.num_key_value_heads !== 0) {
    ctx.addIssue({ code: 'custom', path: ['num_key_value_heads'], message: `num_attention_heads ${c.num_attention_heads} is not a multiple of num_key_value_heads ${c.num_key_value_heads}` });
  }
  const scaling = c.rope_parameters ?? c.rope_scaling ?? undefined;
  const theta = c.rope_parameters?.rope_theta ?? c.rope_theta ?? defaultTheta;
  const type = scaling?.rope_type ?? scaling?.type ?? 'default';
  if (type !== 'default') {
    ctx.addIssue({ code: 'custom', path: [c.rope_parameters ? 'rope_parameters' : 'rope_scaling', 'rope_type'], message: `rope_type '${type}' is not supported (only 'default')` });
  }
  const section = scaling?.mrope_section;
  if (section && Number.isInteger(headDim) && section[0] + section[1] + section[2] !== headDim / 2) {
    ctx.addIssue({
      code: 'custom',
      path: [c.rope_parameters ? 'rope_parameters' : 'rope_scaling', 'mrope_section'],
      message: `mrope_section [${section}] sums to ${section[0] + section[1] + section[2]} but head_dim/2 is ${headDim / 2}`,
    });
  }
  const rope: RopeConfig = {
    theta,
    type,
    mropeSection: section ? [section[0], section[1], section[2]] : undefined,
    interleaved: scaling?.interleaved ?? scaling?.mrope_interleaved ?? false,
  };
  return { ...c, head_dim: headDim, rope };
}

type MoeRaw = { num_experts?: number; num_local_experts?: number; num_experts_per_tok: number };

function normaliseMoe<T extends MoeRaw>(c: T, ctx: z.RefinementCtx): T & { num_experts: number } {
  const n = c.num_experts ?? c.num_local_experts;
  if (n === undefined) {
    ctx.addIssue({ code: 'custom', path: ['num_experts'], message: 'Invalid input: expected number, received undefined (neither num_experts nor num_local_experts is set)' });
    return { ...c, num_experts: 0 };
  }
  if (c.num_experts_per_tok > n) {
    ctx.addIssue({ code: 'custom', path: ['num_experts_per_tok'], message: `num_experts_per_tok ${c.num_experts_per_tok} exceeds num_experts ${n}` });
  }
  return { ...c, num_experts: n };
}

/** `thinker_config.text_config`: the 48-layer MoE decoder (spec 2.3). */
export const thinkerTextConfigSchema = z
  .object({ ...decoderFields, ...moeFields })
  .transform((c, ctx) => normaliseMoe(normaliseDecoder(c, ctx, 1_000_000), ctx));

/** `talker_config.text_config`: the talker MoE decoder, with a shared expert (spec 2.6). */
export const talkerTextConfigSchema = thinkerTextConfigSchema;

/** `talker_config.code_predictor_config`: the dense 1-D-RoPE decoder predicting codebooks 1..G-1 (spec 2.6). */
export const codePredictorConfigSchema = z
  .object({ ...decoderFields, num_code_groups: posInt })
  .transform((c, ctx) => normaliseDecoder(c, ctx, 1_000_000));

/** `thinker_config.audio_config`: the AuT audio encoder (spec 2.4). */
export const audioEncoderConfigSchema = z.object({
  ...hfCommon,
  num_mel_bins: posInt,
  d_model: posInt,
  encoder_layers: posInt,
  encoder_attention_heads: posInt,
  encoder_ffn_dim: posInt,
  activation_function: z.literal('gelu').default('gelu'),
  max_source_positions: posInt.default(1500),
  scale_embedding: z.boolean().default(false),
  n_window: posInt.default(50),
  n_window_infer: posInt.default(800),
  conv_chunksize: posInt.default(500),
  downsample_hidden_size: posInt,
  output_dim: posInt,
  encoder_layerdrop: z.number().optional(),
  num_hidden_layers: posInt.optional(),
});

/** `thinker_config.vision_config`: the Qwen3-VL style ViT with DeepStack taps (spec 2.5). */
export const visionEncoderConfigSchema = z.object({
  ...hfCommon,
  depth: posInt,
  hidden_size: posInt,
  num_heads: posInt,
  intermediate_size: posInt,
  hidden_act: z.literal('gelu_pytorch_tanh').default('gelu_pytorch_tanh'),
  in_channels: posInt.default(3),
  patch_size: posInt,
  temporal_patch_size: posInt.default(2),
  spatial_merge_size: posInt.default(2),
  num_position_embeddings: posInt,
  deepstack_visual_indexes: z.array(nonNegInt).default([]),
  out_hidden_size: posInt,
  /** Not in the released json; HF fills 10000 (spec 2.5). */
  rope_theta: posNum.default(10000),
  // Serialised by the release but read by no code (spec 2.5).
  image_size: posInt.optional(),
  apply_vit_abs_pos_embed: z.boolean().optional(),
  in_chans: posInt.optional(),
  spatial_patch_size: posInt.optional(),
  tokens_per_second: z.number().optional(),
});

const multimodalTokenIds = {
  audio_token_id: tokenId,
  audio_start_token_id: tokenId,
  audio_end_token_id: tokenId.optional(),
  image_token_id: tokenId,
  video_token_id: tokenId,
  vision_start_token_id: tokenId,
  vision_end_token_id: tokenId.optional(),
  position_id_per_seconds: z.number().positive().default(13),
  seconds_per_chunk: z.number().optional(),
};

/** `thinker_config` (spec 2.2). */
export const thinkerConfigSchema = z.object({
  ...hfCommon,
  ...multimodalTokenIds,
  user_token_id: tokenId.optional(),
  text_config: thinkerTextConfigSchema,
  audio_config: audioEncoderConfigSchema,
  vision_config: visionEncoderConfigSchema,
});

/** `talker_config` (spec 2.6). */
export const talkerConfigSchema = z.object({
  ...hfCommon,
  ...multimodalTokenIds,
  spatial_merge_size: posInt.default(2),
  num_code_groups: posInt,
  thinker_hidden_size: posInt,
  accept_hidden_layer: nonNegInt,
  codec_pad_id: tokenId,
  codec_bos_id: tokenId,
  codec_eos_token_id: tokenId,
  codec_nothink_id: tokenId,
  codec_think_bos_id: tokenId,
  codec_think_eos_id: tokenId,
  speaker_id: z.record(z.string(), tokenId).default({}),
  text_config: talkerTextConfigSchema,
  code_predictor_config: codePredictorConfigSchema,
});

/** `code2wav_config`: codes → 24 kHz waveform (spec 2.7). */
export const code2WavConfigSchema = z.object({
  ...hfCommon,
  codebook_size: posInt,
  num_quantizers: posInt,
  hidden_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  num_key_value_heads: posInt,
  intermediate_size: posInt,
  hidden_act: z.literal('silu').default('silu'),
  rms_norm_eps: posNum.default(1e-5),
  sliding_window: posInt,
  rope_theta: posNum.default(10000),
  max_position_embeddings: posInt.default(8000),
  layer_scale_initial_scale: z.number().default(0.01),
  attention_bias: z.boolean().default(false),
  decoder_dim: posInt,
  upsample_rates: z.array(posInt).min(1),
  upsampling_ratios: z.array(posInt).min(1),
  // Serialised by the release but read by no code (spec 2.7).
  codebook_dim: posInt.optional(),
  num_semantic_quantizers: posInt.optional(),
  semantic_codebook_size: posInt.optional(),
  vector_quantization_hidden_dimension: posInt.optional(),
});

/** The whole nested `config.json` (spec 2.1). Captioner/Thinking checkpoints have no talker or code2wav. */
export const qwen3OmniConfigSchema = z.object({
  ...hfCommon,
  enable_audio_output: z.boolean().default(false),
  im_start_token_id: tokenId.optional(),
  im_end_token_id: tokenId.optional(),
  system_token_id: tokenId.optional(),
  user_token_id: tokenId.optional(),
  assistant_token_id: tokenId.optional(),
  tts_pad_token_id: tokenId.optional(),
  tts_bos_token_id: tokenId.optional(),
  tts_eos_token_id: tokenId.optional(),
  thinker_config: thinkerConfigSchema,
  talker_config: talkerConfigSchema.optional(),
  code2wav_config: code2WavConfigSchema.optional(),
});

export type Qwen3OmniConfig = z.output<typeof qwen3OmniConfigSchema>;
export type ThinkerConfig = z.output<typeof thinkerConfigSchema>;
export type ThinkerTextConfig = z.output<typeof thinkerTextConfigSchema>;
export type AudioEncoderConfig = z.output<typeof audioEncoderConfigSchema>;
export type VisionEncoderConfig = z.output<typeof visionEncoderConfigSchema>;
export type TalkerConfig = z.output<typeof talkerConfigSchema>;
export type TalkerTextConfig = z.output<typeof talkerTextConfigSchema>;
export type CodePredictorConfig = z.output<typeof codePredictorConfigSchema>;
export type Code2WavConfig = z.output<typeof code2WavConfigSchema>;

/** What `parseQwen3OmniConfig` returns: the typed config and the paths of fields no schema knows. */
export interface ParsedQwen3OmniConfig {
  config: Qwen3OmniConfig;
  /** Dotted paths of fields present in the json but unknown to the schema, e.g. `thinker_config.text_config.foo`. */
  unknownFields: string[];
  /** The json as given, so a caller can still read an unknown field. */
  raw: unknown;
}

/**
 * Validates a parsed Qwen3-Omni `config.json`. Wrong or missing fields throw one error listing every problem with its
 * field path; unknown fields are tolerated and returned in `unknownFields`.
 *
 * ```ts
 * const { config, unknownFields } = parseQwen3OmniConfig(JSON.parse(text), 'config.json');
 * config.thinker_config.text_config.rope.mropeSection; // [24, 20, 20] for the release
 * if (unknownFields.length) console.warn(`config.json: unknown fields ${unknownFields.join(', ')}`);
 * ```
 */
export function parseQwen3OmniConfig(json: unknown, source = 'config.json'): ParsedQwen3OmniConfig {
  const result = qwen3OmniConfigSchema.safeParse(json);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
    throw new Error(`${source}: invalid Qwen3-Omni config (${result.error.issues.length} problem${result.error.issues.length > 1 ? 's' : ''}):\n${lines.join('\n')}`);
  }
  const unknownFields: string[] = [];
  collectUnknown(json, result.data, '', unknownFields);
  return { config: result.data, unknownFields, raw: json };
}

/**
 * Reads and validates `config.json` from a checkpoint folder (or a path to the json itself).
 *
 * ```ts
 * const { config } = readQwen3OmniConfig('models/Qwen3-Omni-30B-A3B-Instruct');
 * console.log(config.thinker_config.text_config.num_hidden_layers); // 48
 * ```
 */
export function readQwen3OmniConfig(path: string): ParsedQwen3OmniConfig {
  const file = existsSync(path) && statSync(path).isDirectory() ? join(path, 'config.json') : path;
  if (!existsSync(file)) throw new Error(`${file}: no such file (a Qwen3-Omni checkpoint folder holds config.json)`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  return parseQwen3OmniConfig(json, file);
}

/**
 * zod strips keys its objects do not declare, so a key present in the input object but absent from the parsed output
 * at the same place is unknown. (Records keep every key; defaults and normalised fields only add keys.)
 */
function collectUnknown(input: unknown, output: unknown, path: string, out: string[]): void {
  if (!isPlainObject(input) || !isPlainObject(output)) return;
  for (const key of Object.keys(input)) {
    const p = path ? `${path}.${key}` : key;
    if (!(key in output)) out.push(p);
    else collectUnknown(input[key], output[key], p, out);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
