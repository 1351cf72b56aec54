import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { fixturePath } from '@omniflow/runtime-gpu';
import { parseQwen3OmniConfig, readQwen3OmniConfig } from './config.js';

const fixtureJson = (): Record<string, any> => JSON.parse(readFileSync(fixturePath('config.json'), 'utf8'));

/** The released Qwen3-Omni-30B-A3B-Instruct values of spec section 2, in the 4.57-era serialisation. */
function releaseJson(): Record<string, any> {
  return {
    architectures: ['Qwen3OmniMoeForConditionalGeneration'],
    model_type: 'qwen3_omni_moe',
    enable_audio_output: true,
    im_start_token_id: 151644, im_end_token_id: 151645, system_token_id: 8948, user_token_id: 872,
    assistant_token_id: 77091, tts_pad_token_id: 151671, tts_bos_token_id: 151672, tts_eos_token_id: 151673,
    torch_dtype: 'bfloat16',
    thinker_config: {
      audio_token_id: 151675, audio_start_token_id: 151669, audio_end_token_id: 151670, image_token_id: 151655,
      video_token_id: 151656, vision_start_token_id: 151652, vision_end_token_id: 151653, user_token_id: 872,
      position_id_per_seconds: 13, seconds_per_chunk: 2, tie_word_embeddings: false,
      text_config: {
        vocab_size: 152064, hidden_size: 2048, num_hidden_layers: 48, num_attention_heads: 32, num_key_value_heads: 4,
        head_dim: 128, intermediate_size: 768, moe_intermediate_size: 768, num_experts: 128, num_experts_per_tok: 8,
        norm_topk_prob: true, decoder_sparse_step: 1, mlp_only_layers: [], shared_expert_intermediate_size: 0,
        hidden_act: 'silu', rms_norm_eps: 1e-6, rope_theta: 1000000, max_position_embeddings: 65536,
        attention_bias: false, sliding_window: null, use_sliding_window: false, use_qk_norm: true, router_aux_loss_coef: 0.001,
        rope_scaling: { interleaved: true, mrope_interleaved: true, mrope_section: [24, 20, 20], rope_type: 'default', type: 'default' },
      },
      audio_config: {
        num_mel_bins: 128, d_model: 1280, encoder_layers: 32, encoder_attention_heads: 20, encoder_ffn_dim: 5120,
        activation_function: 'gelu', max_source_positions: 1500, scale_embedding: false, n_window: 50, n_window_infer: 800,
        conv_chunksize: 500, downsample_hidden_size: 480, output_dim: 2048, dropout: 0, attention_dropout: 0, activation_dropout: 0,
      },
      vision_config: {
        depth: 27, hidden_size: 1152, num_heads: 16, intermediate_size: 4304, hidden_act: 'gelu_pytorch_tanh', in_channels: 3,
        patch_size: 16, temporal_patch_size: 2, spatial_merge_size: 2, num_position_embeddings: 2304,
        deepstack_visual_indexes: [8, 16, 24], out_hidden_size: 2048, image_size: 768, apply_vit_abs_pos_embed: true,
        in_chans: 3, spatial_patch_size: 16, tokens_per_second: 2,
      },
    },
    talker_config: {
      num_code_groups: 16, thinker_hidden_size: 2048, accept_hidden_layer: 24, codec_pad_id: 2148, codec_bos_id: 2149,
      codec_eos_token_id: 2150, codec_nothink_id: 2155, codec_think_bos_id: 2156, codec_think_eos_id: 2157,
      speaker_id: { chelsie: 2301, ethan: 2302, aiden: 2303 }, audio_token_id: 151675, audio_start_token_id: 151669,
      audio_end_token_id: 151670, image_token_id: 151655, video_token_id: 151656, vision_start_token_id: 151652,
      position_id_per_seconds: 13, seconds_per_chunk: 2, spatial_merge_size: 2, output_router_logits: false,
      text_config: {
        vocab_size: 3072, hidden_size: 1024, num_hidden_layers: 20, num_attention_heads: 16, num_key_value_heads: 2,
        head_dim: 128, intermediate_size: 2048, moe_intermediate_size: 384, num_local_experts: 128, num_experts_per_tok: 6,
        norm_topk_prob: true, shared_expert_intermediate_size: 768, hidden_act: 'silu', rms_norm_eps: 1e-6,
        rope_theta: 1000000, max_position_embeddings: 65536, attention_bias: false,
        rope_scaling: { interleaved: true, mrope_section: [24, 20, 20], rope_type: 'default', type: 'default' },
      },
      code_predictor_config: {
        vocab_size: 2048, hidden_size: 1024, num_hidden_layers: 5, num_attention_heads: 16, num_key_value_heads: 8,
        head_dim: 128, intermediate_size: 3072, num_code_groups: 16, hidden_act: 'silu', rms_norm_eps: 1e-6,
        rope_theta: 1000000, rope_scaling: null, max_position_embeddings: 32768,
        layer_types: ['full_attention', 'full_attention', 'full_attention', 'full_attention', 'full_attention'],
      },
    },
    code2wav_config: {
      codebook_size: 2048, num_quantizers: 16, hidden_size: 1024, num_hidden_layers: 8, num_attention_heads: 16,
      num_key_value_heads: 16, intermediate_size: 3072, hidden_act: 'silu', rms_norm_eps: 1e-5, sliding_window: 72,
      rope_theta: 10000, max_position_embeddings: 8000, layer_scale_initial_scale: 0.01, attention_bias: false,
      decoder_dim: 1536, upsample_rates: [8, 5, 4, 3], upsampling_ratios: [2, 2], codebook_dim: 512,
      num_semantic_quantizers: 1, semantic_codebook_size: 4096, vector_quantization_hidden_dimension: 512,
    },
  };
}

describe('parseQwen3OmniConfig', () => {
  it('parses the tiny fixture config with nothing unknown', () => {
    const { config, unknownFields } = readQwen3OmniConfig(fixturePath('config.json'));
    expect(unknownFields).toEqual([]);
    const text = config.thinker_config.text_config;
    expect(text.hidden_size).toBe(32);
    expect(text.head_dim).toBe(16);
    expect(text.num_experts).toBe(4);
    expect(text.rope).toEqual({ theta: 1_000_000, type: 'default', mropeSection: [4, 2, 2], interleaved: true });
    expect(config.thinker_config.vision_config.deepstack_visual_indexes).toEqual([0, 2]);
    expect(config.talker_config!.text_config.shared_expert_intermediate_size).toBe(16);
    expect(config.talker_config!.code_predictor_config.rope).toEqual({ theta: 1_000_000, type: 'default', mropeSection: undefined, interleaved: false });
    expect(config.code2wav_config!.upsample_rates).toEqual([2, 3]);
  });

  it('parses the released 30B-A3B values, including num_local_experts', () => {
    const { config, unknownFields } = parseQwen3OmniConfig(releaseJson());
    expect(unknownFields).toEqual([]);
    expect(config.thinker_config.text_config.rope.mropeSection).toEqual([24, 20, 20]);
    expect(config.talker_config!.text_config.num_experts).toBe(128);
    expect(config.talker_config!.speaker_id.ethan).toBe(2302);
    expect(config.thinker_config.vision_config.rope_theta).toBe(10000);
  });

  it('parses a thinker-only (Captioner / Thinking) config without talker and code2wav', () => {
    const json = releaseJson();
    delete json.talker_config;
    delete json.code2wav_config;
    json.enable_audio_output = false;
    const { config } = parseQwen3OmniConfig(json);
    expect(config.talker_config).toBeUndefined();
    expect(config.code2wav_config).toBeUndefined();
    expect(config.thinker_config.audio_config.output_dim).toBe(2048);
  });

  it('accepts the transformers v5 rope_parameters form', () => {
    const json = fixtureJson();
    const t = json.thinker_config.text_config;
    delete t.rope_scaling;
    delete t.rope_theta;
    t.rope_parameters = { rope_type: 'default', rope_theta: 5000, mrope_section: [4, 2, 2], interleaved: true };
    const { config } = parseQwen3OmniConfig(json);
    expect(config.thinker_config.text_config.rope).toEqual({ theta: 5000, type: 'default', mropeSection: [4, 2, 2], interleaved: true });
  });

  it('reports unknown fields by path and keeps parsing', () => {
    const json = fixtureJson();
    json.brand_new_flag = 1;
    json.thinker_config.text_config.fancy_norm = 'x';
    json.thinker_config.text_config.rope_scaling.factor = 2;
    const { unknownFields, raw } = parseQwen3OmniConfig(json);
    expect(unknownFields.sort()).toEqual(['brand_new_flag', 'thinker_config.text_config.fancy_norm', 'thinker_config.text_config.rope_scaling.factor']);
    expect((raw as any).brand_new_flag).toBe(1);
  });

  it('rejects wrong types and missing fields naming the field path and the source', () => {
    const json = fixtureJson();
    json.thinker_config.text_config.hidden_size = '32';
    delete json.thinker_config.audio_config.d_model;
    expect(() => parseQwen3OmniConfig(json, 'tiny/config.json')).toThrow(/tiny\/config\.json: invalid Qwen3-Omni config \(2 problems\)/);
    expect(() => parseQwen3OmniConfig(json)).toThrow(/thinker_config\.text_config\.hidden_size: Invalid input: expected number, received string/);
    expect(() => parseQwen3OmniConfig(json)).toThrow(/thinker_config\.audio_config\.d_model: Invalid input: expected number, received undefined/);
  });

  it('rejects inconsistent dimensions', () => {
    const json = fixtureJson();
    json.thinker_config.text_config.rope_scaling.mrope_section = [4, 2, 3];
    json.thinker_config.text_config.num_key_value_heads = 3;
    json.talker_config.text_config.num_experts_per_tok = 9;
    const run = () => parseQwen3OmniConfig(json);
    expect(run).toThrow(/thinker_config\.text_config\.rope_scaling\.mrope_section: mrope_section \[4,2,3\] sums to 9 but head_dim\/2 is 8/);
    expect(run).toThrow(/thinker_config\.text_config\.num_key_value_heads: num_attention_heads 4 is not a multiple/);
    expect(run).toThrow(/talker_config\.text_config\.num_experts_per_tok: num_experts_per_tok 9 exceeds num_experts 4/);
  });

  it('names the file when the json does not exist or does not parse', () => {
    expect(() => readQwen3OmniConfig('/nonexistent/dir')).toThrow(/\/nonexistent\/dir: no such file/);
  });
});
