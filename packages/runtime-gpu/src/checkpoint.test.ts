import * as tf from '@tensorflow/tfjs-core';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { Checkpoint, LINEAR_IN_OUT, transpose2d, writeShardedCheckpoint } from './checkpoint.js';
import { leakCheck } from './ownership.js';
import { qwen3OmniExpectedTensors, type Qwen3OmniConfigLike } from './qwen3-omni-tensors.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';
import { fixtureDir, fixturePath } from './testing/fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'omniflow-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeAll(async () => {
  await initBackend();
});

const ramp = (n: number, from = 0) => Float32Array.from({ length: n }, (_, i) => from + i);

describe('Checkpoint', () => {
  it('loads a sharded checkpoint through model.safetensors.index.json', () => {
    const tensors: Record<string, TensorToWrite> = {};
    for (let i = 0; i < 5; i++) tensors[`layers.${i}.weight`] = { dtype: 'BF16', shape: [4, 8], data: ramp(32, i * 10) }; // < 256: exact in bf16
    tensors['norm.weight'] = { dtype: 'F32', shape: [8], data: ramp(8) };
    const ckptDir = join(dir, 'sharded');
    const shards = writeShardedCheckpoint(ckptDir, tensors, { maxShardBytes: 128 }); // two 64-byte bf16 tensors per shard
    expect(shards).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
    const index = JSON.parse(readFileSync(join(ckptDir, 'model.safetensors.index.json'), 'utf8'));
    expect(index.weight_map['layers.4.weight']).toBe('model-00003-of-00003.safetensors');
    expect(index.metadata.total_size).toBe(5 * 64 + 32);

    const ckpt = Checkpoint.open(ckptDir);
    expect(ckpt.keys().sort()).toEqual(Object.keys(tensors).sort());
    expect(Array.from(ckpt.get('layers.3.weight', [4, 8]).data.slice(0, 3))).toEqual([30, 31, 32]);
    expect(() => ckpt.get('layers.3.weight', [8, 4])).toThrow("tensor 'layers.3.weight' has shape [4,8] but the model expects [8,4]");
    expect(ckpt.unused().length).toBe(5);
    ckpt.close();
    // The index file itself works as the path too.
    const viaIndex = Checkpoint.open(join(ckptDir, 'model.safetensors.index.json'));
    expect(viaIndex.has('norm.weight')).toBe(true);
    viaIndex.close();
  });

  it('names the shard when the index and the shards disagree', () => {
    const bad = join(dir, 'bad-index');
    mkdirSync(bad);
    writeSafetensors(join(bad, 'a.safetensors'), { x: { dtype: 'F32', shape: [1], data: ramp(1) }, y: { dtype: 'F32', shape: [1], data: ramp(1) } });
    const writeIndex = (map: Record<string, string>) => writeFileSync(join(bad, 'model.safetensors.index.json'), JSON.stringify({ weight_map: map }));
    writeIndex({ x: 'a.safetensors', y: 'b.safetensors' });
    expect(() => Checkpoint.open(bad)).toThrow('shard file(s) missing: b.safetensors');
    writeIndex({ x: 'a.safetensors', z: 'a.safetensors' });
    expect(() => Checkpoint.open(bad)).toThrow("index and shards disagree: 'z' is listed for a.safetensors but no shard holds it; 'y' is in a.safetensors but not in the index");
    writeFileSync(join(bad, 'model.safetensors.index.json'), '{"weight_map": ');
    expect(() => Checkpoint.open(bad)).toThrow(/model\.safetensors\.index\.json: not valid JSON/);
  });

  it('lists every missing, unexpected and mis-shaped tensor in one error', () => {
    const path = join(dir, 'small.safetensors');
    writeSafetensors(path, {
      'a.weight': { dtype: 'F32', shape: [2, 3], data: ramp(6) },
      'b.weight': { dtype: 'F32', shape: [3], data: ramp(3) },
      'extra.weight': { dtype: 'F32', shape: [1], data: ramp(1) },
    });
    const ckpt = Checkpoint.open(path);
    const expected = { 'a.weight': [3, 2], 'b.weight': [3], 'c.weight': [4], 'd.bias': [1] };
    expect(ckpt.compare(expected)).toEqual({
      missing: ['c.weight', 'd.bias'],
      unexpected: ['extra.weight'],
      misshaped: [{ name: 'a.weight', expected: [3, 2], got: [2, 3] }],
    });
    expect(() => ckpt.validate(expected)).toThrow(
      `checkpoint ${path} does not match the model:\n  2 missing: c.weight, d.bias\n  1 unexpected: extra.weight\n  1 mis-shaped: a.weight (expected [3,2], got [2,3])`,
    );
    expect(() => ckpt.validate({ 'a.weight': [2, 3], 'b.weight': [3] }, { allowUnexpected: true })).not.toThrow();
    ckpt.close();
  });

  it('applies the Linear [out, in] -> [in, out] transform once at load', () => {
    const path = join(dir, 'linear.safetensors');
    writeSafetensors(path, { 'q.weight': { dtype: 'BF16', shape: [3, 2], data: ramp(6) }, 'c.weight': { dtype: 'F32', shape: [2, 1, 3], data: ramp(6) } });
    const ckpt = Checkpoint.open(path);
    const leaks = leakCheck();
    const w = ckpt.tensor('q.weight', [3, 2], LINEAR_IN_OUT);
    expect(w.shape).toEqual([2, 3]);
    expect(Array.from(w.dataSync())).toEqual([0, 2, 4, 1, 3, 5]);
    const conv = ckpt.tensor('c.weight', [2, 1, 3], { transpose: [2, 1, 0] }); // Conv1d [out, in, k] -> tfjs [k, in, out]
    expect(conv.shape).toEqual([3, 1, 2]);
    expect(Array.from(conv.dataSync())).toEqual([0, 3, 1, 4, 2, 5]);
    expect(() => ckpt.tensor('q.weight', undefined, { transpose: [0, 0] })).toThrow("tensor 'q.weight' of rank 2 cannot be transposed by [0,0]");
    tf.dispose([w, conv]);
    leaks.check('Checkpoint.tensor');
    ckpt.close();
    const big = ramp(130 * 70);
    const t = transpose2d(big, 130, 70);
    expect([t[0], t[1], t[130], t[130 * 70 - 1]]).toEqual([0, 70, 1, 130 * 70 - 1]);
  });
});

describe('qwen3OmniExpectedTensors', () => {
  it('accounts for every one of the 387 tensors of the tiny fixture checkpoint', () => {
    const config = JSON.parse(readFileSync(fixturePath('config.json'), 'utf8'));
    const expected = qwen3OmniExpectedTensors(config);
    expect(expected.size).toBe(387);
    const ckpt = Checkpoint.open(fixtureDir());
    ckpt.validate(expected); // throws listing any missing / unexpected / mis-shaped key
    expect(ckpt.compare(expected)).toEqual({ missing: [], unexpected: [], misshaped: [] });
    const leaks = leakCheck();
    const weights = ckpt.loadAll(expected, { layout: (name, shape) => (shape.length === 2 && name.endsWith('_proj.weight') ? LINEAR_IN_OUT : undefined) });
    expect(weights.size).toBe(387);
    expect(weights.get('thinker.model.layers.0.self_attn.q_proj.weight')!.shape).toEqual([32, 64]); // [out, in] -> [in, out]
    expect(weights.get('thinker.lm_head.weight')!.shape).toEqual([256, 32]); // untouched
    expect(ckpt.unused()).toEqual([]);
    tf.dispose([...weights.values()]);
    leaks.check('loadAll');
    const thinker = qwen3OmniExpectedTensors(config, { thinkerOnly: true });
    expect([...thinker.keys()].every((k) => k.startsWith('thinker.'))).toBe(true);
    expect(ckpt.keys().filter((k) => k.startsWith('thinker.')).length).toBe(thinker.size);
    ckpt.close();
  });

  it('matches the released checkpoint tensor count (28,010) and shapes from spec §4.3/4.4', () => {
    const text = { hidden_size: 2048, num_hidden_layers: 48, num_attention_heads: 32, num_key_value_heads: 4, head_dim: 128, intermediate_size: 768, vocab_size: 152064, num_experts: 128, moe_intermediate_size: 768 };
    const release: Qwen3OmniConfigLike = {
      thinker_config: {
        text_config: text,
        audio_config: { d_model: 1280, encoder_layers: 32, encoder_ffn_dim: 5120, downsample_hidden_size: 480, num_mel_bins: 128, output_dim: 2048 },
        vision_config: { hidden_size: 1152, depth: 27, intermediate_size: 4304, patch_size: 16, temporal_patch_size: 2, spatial_merge_size: 2, num_position_embeddings: 2304, out_hidden_size: 2048, deepstack_visual_indexes: [8, 16, 24] },
      },
      talker_config: {
        thinker_hidden_size: 2048,
        num_code_groups: 16,
        text_config: { hidden_size: 1024, num_hidden_layers: 20, num_attention_heads: 16, num_key_value_heads: 2, head_dim: 128, intermediate_size: 2048, vocab_size: 3072, num_experts: 128, moe_intermediate_size: 384, shared_expert_intermediate_size: 768 },
        code_predictor_config: { hidden_size: 1024, num_hidden_layers: 5, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128, intermediate_size: 3072, vocab_size: 2048 },
      },
      code2wav_config: { hidden_size: 1024, num_hidden_layers: 8, num_attention_heads: 16, num_key_value_heads: 16, intermediate_size: 3072, codebook_size: 2048, num_quantizers: 16, upsampling_ratios: [2, 2], upsample_rates: [8, 5, 4, 3], decoder_dim: 1536 },
    };
    const e = qwen3OmniExpectedTensors(release);
    const count = (prefix: string) => [...e.keys()].filter((k) => k.startsWith(prefix)).length;
    expect(count('thinker.model.') + count('thinker.lm_head')).toBe(18_867);
    expect(count('thinker.audio_tower.')).toBe(525);
    expect(count('thinker.visual.')).toBe(351);
    expect(count('talker.') - count('talker.code_predictor.')).toBe(7_951);
    expect(count('talker.code_predictor.')).toBe(86);
    expect(count('code2wav.')).toBe(230);
    expect(e.size).toBe(28_010);
    expect(e.get('thinker.audio_tower.conv_out.weight')).toEqual([1280, 7680]);
    expect(e.get('thinker.visual.patch_embed.proj.weight')).toEqual([1152, 3, 2, 16, 16]);
    expect(e.get('talker.code_predictor.model.layers.4.self_attn.k_proj.weight')).toEqual([1024, 1024]);
    expect(e.get('code2wav.code_embedding.weight')).toEqual([32768, 1024]);
    expect(e.get('code2wav.decoder.4.block.1.conv.weight')).toEqual([192, 96, 6]);
    expect(e.get('code2wav.decoder.6.conv.weight')).toEqual([1, 96, 7]);
  });
});
