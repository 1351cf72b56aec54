/**
 * The tensors a Qwen3-Omni-MoE checkpoint holds, derived from its config.json (spec/qwen3-omni.md
 * §4.3, counted in §4.4). Names are the official state-dict keys; shapes are as stored (PyTorch
 * layout: Linear `[out, in]`, Conv `[out, in, k...]`, ConvTranspose1d `[in, out, k]`).
 */

/** The parts of config.json this derivation reads (the official nested layout). */
export interface Qwen3OmniConfigLike {
  readonly thinker_config: {
    readonly text_config: TextConfigLike & { readonly tie_word_embeddings?: boolean };
    readonly audio_config: {
      readonly d_model: number;
      readonly encoder_layers: number;
      readonly encoder_ffn_dim: number;
      readonly downsample_hidden_size: number;
      readonly num_mel_bins: number;
      readonly output_dim: number;
    };
    readonly vision_config: {
      readonly hidden_size: number;
      readonly depth: number;
      readonly intermediate_size: number;
      readonly in_channels?: number;
      readonly patch_size: number;
      readonly temporal_patch_size: number;
      readonly spatial_merge_size: number;
      readonly num_position_embeddings: number;
      readonly out_hidden_size: number;
      readonly deepstack_visual_indexes: readonly number[];
    };
  };
  readonly talker_config?: {
    readonly thinker_hidden_size: number;
    readonly num_code_groups: number;
    readonly text_config: TextConfigLike & { readonly shared_expert_intermediate_size?: number };
    readonly code_predictor_config: TextConfigLike;
  };
  readonly code2wav_config?: {
    readonly hidden_size: number;
    readonly num_hidden_layers: number;
    readonly num_attention_heads: number;
    readonly num_key_value_heads?: number;
    readonly head_dim?: number;
    readonly intermediate_size: number;
    readonly codebook_size: number;
    readonly num_quantizers: number;
    readonly upsampling_ratios: readonly number[];
    readonly upsample_rates: readonly number[];
    readonly decoder_dim: number;
  };
  readonly enable_audio_output?: boolean;
}

interface TextConfigLike {
  readonly hidden_size: number;
  readonly num_hidden_layers: number;
  readonly num_attention_heads: number;
  readonly num_key_value_heads: number;
  readonly head_dim?: number;
  readonly intermediate_size: number;
  readonly vocab_size: number;
  readonly num_experts?: number;
  readonly moe_intermediate_size?: number;
  readonly decoder_sparse_step?: number;
  readonly mlp_only_layers?: readonly number[];
}

type Shapes = Map<string, number[]>;

/**
 * Every tensor name → shape a Qwen3-Omni checkpoint with this config holds: thinker (text, audio
 * tower, vision), and, when the config has them, talker, code predictor and Code2Wav. Use it with
 * `Checkpoint.validate` to account for every key before loading.
 *
 * ```ts
 * const config = JSON.parse(readFileSync(fixturePath('config.json'), 'utf8'));
 * Checkpoint.open(fixtureDir()).validate(qwen3OmniExpectedTensors(config)); // 387 tensors, all accounted for
 * ```
 */
export function qwen3OmniExpectedTensors(config: Qwen3OmniConfigLike, parts: { thinkerOnly?: boolean } = {}): Map<string, number[]> {
  const out: Shapes = new Map();
  const th = config.thinker_config;
  if (!th?.text_config || !th.audio_config || !th.vision_config) throw new Error('qwen3OmniExpectedTensors: config has no thinker_config with text_config, audio_config and vision_config');
  decoder(out, 'thinker.model', th.text_config);
  out.set('thinker.model.embed_tokens.weight', [th.text_config.vocab_size, th.text_config.hidden_size]);
  if (!th.text_config.tie_word_embeddings) out.set('thinker.lm_head.weight', [th.text_config.vocab_size, th.text_config.hidden_size]);
  audioTower(out, th.audio_config);
  vision(out, th.vision_config);
  if (parts.thinkerOnly || config.enable_audio_output === false) return out;
  if (config.talker_config) talker(out, config.talker_config);
  if (config.code2wav_config) code2wav(out, config.code2wav_config);
  return out;
}

/** Decoder layers (attention with q/k norms, dense or MoE MLP) plus the final norm under `prefix`. */
function decoder(out: Shapes, prefix: string, c: TextConfigLike & { shared_expert_intermediate_size?: number }): void {
  const d = c.hidden_size;
  const hd = c.head_dim ?? d / c.num_attention_heads;
  for (let n = 0; n < c.num_hidden_layers; n++) {
    const l = `${prefix}.layers.${n}`;
    out.set(`${l}.input_layernorm.weight`, [d]);
    out.set(`${l}.post_attention_layernorm.weight`, [d]);
    attention(out, `${l}.self_attn`, d, c.num_attention_heads, c.num_key_value_heads, hd, true);
    // transformers' rule: a layer is sparse unless listed in mlp_only_layers, when experts exist and
    // (n + 1) is a multiple of decoder_sparse_step.
    const sparse = (c.num_experts ?? 0) > 0 && !(c.mlp_only_layers ?? []).includes(n) && (n + 1) % (c.decoder_sparse_step ?? 1) === 0;
    if (!sparse) {
      swiglu(out, `${l}.mlp`, d, c.intermediate_size);
      continue;
    }
    out.set(`${l}.mlp.gate.weight`, [c.num_experts!, d]);
    for (let m = 0; m < c.num_experts!; m++) swiglu(out, `${l}.mlp.experts.${m}`, d, c.moe_intermediate_size!);
    if (c.shared_expert_intermediate_size) {
      swiglu(out, `${l}.mlp.shared_expert`, d, c.shared_expert_intermediate_size);
      out.set(`${l}.mlp.shared_expert_gate.weight`, [1, d]);
    }
  }
  out.set(`${prefix}.norm.weight`, [d]);
}

function attention(out: Shapes, p: string, d: number, heads: number, kvHeads: number, hd: number, qkNorm: boolean): void {
  out.set(`${p}.q_proj.weight`, [heads * hd, d]);
  out.set(`${p}.k_proj.weight`, [kvHeads * hd, d]);
  out.set(`${p}.v_proj.weight`, [kvHeads * hd, d]);
  out.set(`${p}.o_proj.weight`, [d, heads * hd]);
  if (qkNorm) {
    out.set(`${p}.q_norm.weight`, [hd]);
    out.set(`${p}.k_norm.weight`, [hd]);
  }
}

function swiglu(out: Shapes, p: string, d: number, inter: number): void {
  out.set(`${p}.gate_proj.weight`, [inter, d]);
  out.set(`${p}.up_proj.weight`, [inter, d]);
  out.set(`${p}.down_proj.weight`, [d, inter]);
}

function linear(out: Shapes, p: string, inF: number, outF: number, bias = true): void {
  out.set(`${p}.weight`, [outF, inF]);
  if (bias) out.set(`${p}.bias`, [outF]);
}

function norm(out: Shapes, p: string, c: number): void {
  out.set(`${p}.weight`, [c]);
  out.set(`${p}.bias`, [c]);
}

function audioTower(out: Shapes, a: Qwen3OmniConfigLike['thinker_config']['audio_config']): void {
  const p = 'thinker.audio_tower';
  const h = a.downsample_hidden_size;
  out.set(`${p}.conv2d1.weight`, [h, 1, 3, 3]);
  out.set(`${p}.conv2d2.weight`, [h, h, 3, 3]);
  out.set(`${p}.conv2d3.weight`, [h, h, 3, 3]);
  for (const k of [1, 2, 3]) out.set(`${p}.conv2d${k}.bias`, [h]);
  // Three 3x3 stride-2 convs with padding 1 shrink the mel axis: n -> floor((n - 1) / 2) + 1.
  let mel = a.num_mel_bins;
  for (let i = 0; i < 3; i++) mel = Math.floor((mel - 1) / 2) + 1;
  out.set(`${p}.conv_out.weight`, [a.d_model, h * mel]);
  for (let n = 0; n < a.encoder_layers; n++) {
    const l = `${p}.layers.${n}`;
    for (const x of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) linear(out, `${l}.self_attn.${x}`, a.d_model, a.d_model);
    norm(out, `${l}.self_attn_layer_norm`, a.d_model);
    linear(out, `${l}.fc1`, a.d_model, a.encoder_ffn_dim);
    linear(out, `${l}.fc2`, a.encoder_ffn_dim, a.d_model);
    norm(out, `${l}.final_layer_norm`, a.d_model);
  }
  norm(out, `${p}.ln_post`, a.d_model);
  linear(out, `${p}.proj1`, a.d_model, a.d_model);
  linear(out, `${p}.proj2`, a.d_model, a.output_dim);
}

function vision(out: Shapes, v: Qwen3OmniConfigLike['thinker_config']['vision_config']): void {
  const p = 'thinker.visual';
  const h = v.hidden_size;
  const merged = h * v.spatial_merge_size ** 2;
  out.set(`${p}.patch_embed.proj.weight`, [h, v.in_channels ?? 3, v.temporal_patch_size, v.patch_size, v.patch_size]);
  out.set(`${p}.patch_embed.proj.bias`, [h]);
  out.set(`${p}.pos_embed.weight`, [v.num_position_embeddings, h]);
  for (let n = 0; n < v.depth; n++) {
    const b = `${p}.blocks.${n}`;
    norm(out, `${b}.norm1`, h);
    norm(out, `${b}.norm2`, h);
    linear(out, `${b}.attn.qkv`, h, 3 * h);
    linear(out, `${b}.attn.proj`, h, h);
    linear(out, `${b}.mlp.linear_fc1`, h, v.intermediate_size);
    linear(out, `${b}.mlp.linear_fc2`, v.intermediate_size, h);
  }
  // The final merger normalises before the 2x2 merge (width h); DeepStack mergers after it (width h*m^2).
  norm(out, `${p}.merger.ln_q`, h);
  linear(out, `${p}.merger.mlp.0`, merged, merged);
  linear(out, `${p}.merger.mlp.2`, merged, v.out_hidden_size);
  v.deepstack_visual_indexes.forEach((_, k) => {
    norm(out, `${p}.merger_list.${k}.ln_q`, merged);
    linear(out, `${p}.merger_list.${k}.mlp.0`, merged, merged);
    linear(out, `${p}.merger_list.${k}.mlp.2`, merged, v.out_hidden_size);
  });
}

function talker(out: Shapes, t: NonNullable<Qwen3OmniConfigLike['talker_config']>): void {
  const c = t.text_config;
  decoder(out, 'talker.model', c);
  out.set('talker.model.codec_embedding.weight', [c.vocab_size, c.hidden_size]);
  out.set('talker.codec_head.weight', [c.vocab_size, c.hidden_size]);
  for (const proj of ['text_projection', 'hidden_projection']) {
    linear(out, `talker.${proj}.linear_fc1`, t.thinker_hidden_size, c.intermediate_size);
    linear(out, `talker.${proj}.linear_fc2`, c.intermediate_size, c.hidden_size);
  }
  const cp = t.code_predictor_config;
  decoder(out, 'talker.code_predictor.model', cp);
  // Group 0 comes from the talker's codec head; the predictor embeds and predicts groups 1..G-1.
  for (let i = 0; i < t.num_code_groups - 1; i++) {
    out.set(`talker.code_predictor.model.codec_embedding.${i}.weight`, [cp.vocab_size, cp.hidden_size]);
    out.set(`talker.code_predictor.lm_head.${i}.weight`, [cp.vocab_size, cp.hidden_size]);
  }
}

function code2wav(out: Shapes, c: NonNullable<Qwen3OmniConfigLike['code2wav_config']>): void {
  const p = 'code2wav';
  const d = c.hidden_size;
  const hd = c.head_dim ?? d / c.num_attention_heads;
  out.set(`${p}.code_embedding.weight`, [c.codebook_size * c.num_quantizers, d]);
  for (let n = 0; n < c.num_hidden_layers; n++) {
    const l = `${p}.pre_transformer.layers.${n}`;
    out.set(`${l}.input_layernorm.weight`, [d]);
    out.set(`${l}.post_attention_layernorm.weight`, [d]);
    attention(out, `${l}.self_attn`, d, c.num_attention_heads, c.num_key_value_heads ?? c.num_attention_heads, hd, false);
    out.set(`${l}.self_attn_layer_scale.scale`, [d]);
    swiglu(out, `${l}.mlp`, d, c.intermediate_size);
    out.set(`${l}.mlp_layer_scale.scale`, [d]);
  }
  out.set(`${p}.pre_transformer.norm.weight`, [d]);
  c.upsampling_ratios.forEach((ratio, s) => {
    const u = `${p}.upsample.${s}`;
    out.set(`${u}.0.conv.weight`, [d, d, ratio]); // ConvTranspose1d [in, out, k], kernel = stride
    out.set(`${u}.0.conv.bias`, [d]);
    out.set(`${u}.1.dwconv.conv.weight`, [d, 1, 7]);
    out.set(`${u}.1.dwconv.conv.bias`, [d]);
    norm(out, `${u}.1.norm`, d);
    linear(out, `${u}.1.pwconv1`, d, 4 * d);
    linear(out, `${u}.1.pwconv2`, 4 * d, d);
    out.set(`${u}.1.gamma`, [d]);
  });
  out.set(`${p}.decoder.0.conv.weight`, [c.decoder_dim, d, 7]);
  out.set(`${p}.decoder.0.conv.bias`, [c.decoder_dim]);
  let ch = c.decoder_dim;
  c.upsample_rates.forEach((r, i) => {
    const b = `${p}.decoder.${i + 1}.block`;
    const next = ch / 2;
    out.set(`${b}.0.alpha`, [ch]);
    out.set(`${b}.0.beta`, [ch]);
    out.set(`${b}.1.conv.weight`, [ch, next, 2 * r]); // ConvTranspose1d [in, out, k], kernel = 2 x stride
    out.set(`${b}.1.conv.bias`, [next]);
    for (const u of [2, 3, 4]) {
      for (const act of ['act1', 'act2']) {
        out.set(`${b}.${u}.${act}.alpha`, [next]);
        out.set(`${b}.${u}.${act}.beta`, [next]);
      }
      out.set(`${b}.${u}.conv1.conv.weight`, [next, next, 7]);
      out.set(`${b}.${u}.conv1.conv.bias`, [next]);
      out.set(`${b}.${u}.conv2.conv.weight`, [next, next, 1]);
      out.set(`${b}.${u}.conv2.conv.bias`, [next]);
    }
    ch = next;
  });
  const k = c.upsample_rates.length;
  out.set(`${p}.decoder.${k + 1}.alpha`, [ch]);
  out.set(`${p}.decoder.${k + 1}.beta`, [ch]);
  out.set(`${p}.decoder.${k + 2}.conv.weight`, [1, ch, 7]);
  out.set(`${p}.decoder.${k + 2}.conv.bias`, [1]);
}
