import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixtureDir, fixturePath, initBackend, isInt8Weight, writeSafetensors, writeShardedCheckpoint, type TensorToWrite } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, writeFixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { loadQwen3Omni } from './load.js';

const tmp = mkdtempSync(join(tmpdir(), 'omniflow-load-'));
const weights = SafetensorsFile.open(fixturePath('model.safetensors'));
const allTensors = (dtype: 'F32' | 'BF16', keep: (k: string) => boolean = () => true): Record<string, TensorToWrite> =>
  Object.fromEntries(weights.keys().filter(keep).map((k) => {
    const t = weights.read(k);
    return [k, { dtype, shape: t.shape, data: t.data }];
  }));
const count = (prefix: string) => weights.keys().filter((k) => k.startsWith(prefix)).length;

beforeAll(async () => {
  await initBackend();
});
afterAll(() => {
  weights.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('loadQwen3Omni', () => {
  it('loads the fixture checkpoint, reports what it loaded, and frees every tensor on dispose', async () => {
    const before = tf.memory().numTensors;
    const model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer() });
    const r = model.report;
    expect(r.modules.map((m) => m.name).sort()).toEqual(['audio_tower', 'code2wav', 'talker', 'thinker', 'visual']);
    // Tensor counts per module follow spec 4.4's formulas at the fixture's sizes.
    const byName = Object.fromEntries(r.modules.map((m) => [m.name, m]));
    expect(byName.thinker.tensors).toBe(4 * (8 + 1 + 4 * 3) + 3);
    expect(byName.audio_tower.tensors).toBe(2 * 16 + 13);
    expect(byName.visual.tensors).toBe(3 * 12 + 3 + 6 + 2 * 6);
    expect(byName.code2wav.tensors).toBe(count('code2wav.'));
    // talker: 2 layers × (8 + 1 + 4 × 3 + 3 shared + 1 gate) + norm + codec_embedding + codec_head + 8 projection,
    // code predictor: 2 layers × 11 + norm + 3 embeddings + 3 heads (spec 4.4 at the fixture's sizes).
    expect(byName.talker.tensors).toBe(2 * 25 + 3 + 8 + (2 * 11 + 1 + 3 + 3));
    expect(byName.thinker.parameters).toBe(256 * 32 * 2 + 4 * (2 * 32 + 2 * 16 + (64 + 32 + 32) * 32 + 64 * 32 + 4 * 32 + 4 * 3 * 16 * 32) + 32);
    expect(r.bytes).toBe(r.parameters * 4);
    expect(r.storedBytes).toBe(r.parameters * 4); // the fixture is stored as F32
    // Every key is read by some module: nothing unused, nothing skipped.
    expect(r.skipped).toEqual([]);
    expect(r.unusedKeys).toEqual([]);
    expect(r.tensors).toBe(387);
    expect(r.parameters).toBe(255297);
    expect(r.configWarnings).toEqual([]);
    expect(model.describe()).toMatch(/thinker\s+87 tensors/);
    expect(model.tokenizer.specialTokens.audioPad).toBe(244);
    expect(tf.memory().numTensors).toBeGreaterThan(before);
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('loads a sharded bf16 copy (converted to float32 on load) with the tokenizer from the folder', async () => {
    const dir = join(tmp, 'sharded-bf16');
    const shards = writeShardedCheckpoint(dir, allTensors('BF16'), { maxShardBytes: 64 * 1024 });
    expect(shards.length).toBeGreaterThan(2);
    copyFileSync(fixturePath('config.json'), join(dir, 'config.json'));
    writeFixtureTokenizer(dir);
    const model = await loadQwen3Omni(dir);
    expect(model.report.tokenizer.source).toBe(dir);
    expect(model.report.storedBytes).toBe(model.report.parameters * 2);
    // bf16 keeps 8 mantissa bits: each embedding row matches the f32 original to 2^-8 relative.
    const f32 = weights.read('thinker.model.embed_tokens.weight').data as Float32Array;
    const got = model.thinker.embedTokens;
    let worst = 0;
    for (let i = 0; i < f32.length; i++) worst = Math.max(worst, Math.abs(got[i] - f32[i]) / Math.max(Math.abs(f32[i]), 1e-30));
    expect(worst).toBeGreaterThan(0);
    expect(worst).toBeLessThanOrEqual(2 ** -8);
    model.dispose();
  });

  it("weights: 'bf16' on a bf16-stored checkpoint: packed matrices, half the bytes, the same logits as float32 (the rounding is exact)", async () => {
    const dir = join(tmp, 'bf16-weights');
    mkdirSync(dir);
    writeSafetensors(join(dir, 'model.safetensors'), allTensors('BF16', (k) => !k.startsWith('code2wav.')));
    copyFileSync(fixturePath('config.json'), join(dir, 'config.json'));
    writeFixtureTokenizer(dir);
    const before = tf.memory();
    const f32 = await loadQwen3Omni(dir, { modules: ['thinker', 'talker'] });
    const f32Bytes = tf.memory().numBytes - before.numBytes;
    const b16 = await loadQwen3Omni(dir, { modules: ['thinker', 'talker'], weights: 'bf16' });
    const b16Bytes = tf.memory().numBytes - before.numBytes - f32Bytes;
    const q = b16.thinker.layers[0]!.self_attn.q_proj!.weight;
    expect([q.dtype, ...q.shape]).toEqual(['int32', 32, 32]); // [in 32, out 64 / 2]
    expect(b16.talker!.codePredictor).toBeDefined();
    // Matrices halve; norms, routers, the shared-expert gates and biases stay float32.
    expect(b16Bytes).toBeLessThan(0.6 * f32Bytes);
    const ids = [240, 97, 198, 12, 40, 77, 241, 198];
    const pos = Float32Array.from(ids, (_, i) => i);
    const logits = (m: typeof f32) => tf.tidy(() => {
      const x = m.thinker.embed(ids);
      const { logits: l, lastHiddenState } = m.thinker.forward(x, { positions: [pos, pos, pos], logits: 'all' });
      lastHiddenState.dispose();
      return l!.dataSync() as Float32Array;
    });
    const [a, b] = [logits(f32), logits(b16)];
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    // The stored weights are bf16 already, so packing loses nothing: only the summation order differs.
    expect(worst).toBeLessThan(1e-4);
    f32.dispose();
    b16.dispose();
    expect(tf.memory().numTensors).toBe(before.numTensors);
  });

  it("weights: 'int8': quantized thinker/talker/predictor/Code2Wav matrices (about a quarter of the bytes), logits near float32", async () => {
    const before = tf.memory();
    const f32 = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'talker'] });
    const f32Bytes = tf.memory().numBytes - before.numBytes;
    const q8 = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'talker'], weights: 'int8' });
    const q8Bytes = tf.memory().numBytes - before.numBytes - f32Bytes;
    expect(isInt8Weight(q8.thinker.layers[0]!.self_attn.q_proj!.weight)).toBe(true);
    expect(isInt8Weight(q8.talker!.talker.model.layers[0]!.self_attn.qkv_proj!.weight)).toBe(true);
    // At the fixture's tiny sizes the int8 padding (K to 16, 4 scales per 4 columns) and the float32 norms, routers and
    // host-side embeddings weigh more than at real size: 32% of float32 here.
    expect(q8Bytes).toBeLessThan(0.45 * f32Bytes);
    const ids = [240, 97, 198, 12, 40, 77, 241, 198];
    const pos = Float32Array.from(ids, (_, i) => i);
    const logits = (m: typeof f32) => tf.tidy(() => {
      const { logits: l, lastHiddenState } = m.thinker.forward(m.thinker.embed(ids), { positions: [pos, pos, pos], logits: 'all' });
      lastHiddenState.dispose();
      return l!.dataSync() as Float32Array;
    });
    const [a, b] = [logits(f32), logits(q8)];
    let worst = 0, scale = 0;
    for (let i = 0; i < a.length; i++) {
      worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
      scale = Math.max(scale, Math.abs(a[i]!));
    }
    // Each weight is off by up to 1/254 of its column's largest; through 4 layers the logits move by 1.7% of the largest.
    expect(worst).toBeGreaterThan(0);
    expect(worst).toBeLessThan(0.05 * scale);
    f32.dispose();
    q8.dispose();
    // Code2Wav too (thinker included: it always loads): 32% of the float32 load's device bytes at fixture size.
    const b0 = tf.memory().numBytes;
    const c32 = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['code2wav'] });
    const b1 = tf.memory().numBytes;
    const c8 = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['code2wav'], weights: 'int8' });
    expect(c8.code2wav).toBeDefined();
    expect(tf.memory().numBytes - b1).toBeLessThan(0.4 * (b1 - b0));
    c32.dispose();
    c8.dispose();
    expect(tf.memory().numTensors).toBe(before.numTensors);
  });

  it('loads a thinker-only (Captioner-style) checkpoint without a talker or code2wav', async () => {
    const dir = join(tmp, 'captioner');
    mkdirSync(dir);
    writeSafetensors(join(dir, 'model.safetensors'), allTensors('F32', (k) => k.startsWith('thinker.')));
    const config = JSON.parse(readFileSync(fixturePath('config.json'), 'utf8'));
    delete config.talker_config;
    delete config.code2wav_config;
    config.enable_audio_output = false;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const model = await loadQwen3Omni(dir, { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower'] });
    expect(model.report.modules.map((m) => m.name)).toEqual(['thinker', 'audio_tower']);
    expect(model.report.skipped).toEqual([{ name: 'visual', reason: 'not asked for' }]);
    expect(model.visionEncoder).toBeUndefined();
    expect(model.code2wav).toBeUndefined();
    expect(model.report.unusedKeys.length).toBe(count('thinker.visual.'));
    expect(model.report.configWarnings).toEqual([]);
    model.dispose();
  });

  it('fails once, naming every missing and mis-shaped tensor, before loading anything', async () => {
    const dir = join(tmp, 'broken');
    mkdirSync(dir);
    const tensors = allTensors('F32', (k) => k !== 'thinker.model.layers.2.mlp.experts.3.up_proj.weight');
    const shape = [...tensors['thinker.audio_tower.proj2.weight'].shape];
    tensors['thinker.audio_tower.proj2.weight'] = { dtype: 'F32', shape: [shape[0] + 1, shape[1]], data: new Float32Array((shape[0] + 1) * shape[1]) };
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    copyFileSync(fixturePath('config.json'), join(dir, 'config.json'));
    const before = tf.memory().numTensors;
    const err = await loadQwen3Omni(dir, { tokenizer: fixtureTokenizer() }).then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(/1 missing: thinker\.model\.layers\.2\.mlp\.experts\.3\.up_proj\.weight/);
    expect(err?.message).toMatch(/1 mis-shaped: thinker\.audio_tower\.proj2\.weight \(expected \[32,32\], got \[33,32\]\)/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('says what to pass when the folder has no tokenizer, and rejects a bad config with its field path', async () => {
    await expect(loadQwen3Omni(fixtureDir())).rejects.toThrow(/no tokenizer\.json.*fixtureTokenizer\(\)/);
    const dir = join(tmp, 'bad-config');
    mkdirSync(dir);
    const config = JSON.parse(readFileSync(fixturePath('config.json'), 'utf8'));
    config.thinker_config.text_config.num_experts = 'four';
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    await expect(loadQwen3Omni(dir, { tokenizer: fixtureTokenizer() })).rejects.toThrow(/thinker_config\.text_config\.num_experts/);
  });
});
