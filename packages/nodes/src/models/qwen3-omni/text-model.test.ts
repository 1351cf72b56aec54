import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, fixtureDir, fixturePath, initBackend, SafetensorsFile, writeSafetensors, type HostTensor, type TensorToWrite } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { TextModel } from './text-model.js';

const { config } = readQwen3OmniConfig(fixtureDir());
const text = config.thinker_config.text_config;
let ckpt: Checkpoint;
let model: TextModel;
let cases: SafetensorsFile;
const tmp: string[] = [];

beforeAll(async () => {
  await initBackend();
  ckpt = Checkpoint.open(fixtureDir());
  model = TextModel.load(ckpt, text);
  cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
});
afterAll(() => {
  model.dispose();
  ckpt.close();
  cases.close();
  for (const d of tmp) rmSync(d, { recursive: true, force: true });
});

const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
};

/** A copy of the fixture checkpoint with `edit` applied to its tensor table, in a temp folder. */
function editedCheckpoint(edit: (t: Record<string, TensorToWrite>) => void): Checkpoint {
  const dir = mkdtempSync(join(tmpdir(), 'omniflow-text-model-'));
  tmp.push(dir);
  const tensors: Record<string, TensorToWrite> = {};
  for (const k of ckpt.keys()) {
    const h = ckpt.get(k);
    tensors[k] = { dtype: h.dtype === 'float32' ? 'F32' : 'I32', shape: h.shape, data: h.data };
  }
  edit(tensors);
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  return Checkpoint.open(dir);
}

describe('TextModel', () => {
  it('reproduces the case-5 prefill from its inputs_embeds, positions and DeepStack features', () => {
    const get = (n: string): HostTensor => cases.read(`thinker.${n}`);
    const S = get('input_ids').shape[1]!;
    const pos = get('position_ids').data as Float32Array;
    const mask = get('visual_pos_masks').data;
    const visual = Array.from(mask).flatMap((m, p) => (m ? [p] : []));
    const ds = get('deepstack_visual_embeds');
    const before = tf.memory().numTensors;
    const x = tf.tensor2d(get('inputs_embeds').data as Float32Array, [S, text.hidden_size]);
    const features = Array.from({ length: ds.shape[0]! }, (_, i) => tf.tensor2d((ds.data as Float32Array).subarray(i * visual.length * text.hidden_size, (i + 1) * visual.length * text.hidden_size), [visual.length, text.hidden_size]));
    const L = text.num_hidden_layers;
    const out = model.forward(x, {
      positions: [pos.subarray(0, S), pos.subarray(S, 2 * S), pos.subarray(2 * S)],
      deepstack: { positions: visual, features },
      hiddenStates: [0, 1, 3, L],
      logits: 'all',
    });
    const hs = get('hidden_states').data;
    const row = (k: number) => hs.subarray(k * S * text.hidden_size, (k + 1) * S * text.hidden_size);
    expect(maxDiff(out.hiddenStates.get(0)!.dataSync(), row(0))).toBe(0);
    // hidden_states[1] is layer 0's output BEFORE its DeepStack addition; [3] feeds the talker (accept_hidden_layer 3).
    expect(maxDiff(out.hiddenStates.get(1)!.dataSync(), row(1))).toBeLessThan(7e-4);
    expect(maxDiff(out.hiddenStates.get(3)!.dataSync(), row(3))).toBeLessThan(7e-4);
    expect(maxDiff(out.hiddenStates.get(L)!.dataSync(), get('last_hidden_state').data)).toBeLessThan(4e-4);
    expect(maxDiff(out.logits!.dataSync(), get('logits').data)).toBeLessThan(5e-4);
    tf.dispose([x, ...features, out.logits!, out.lastHiddenState, ...out.hiddenStates.values()]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('splices multimodal rows over placeholders in sequence order and checks their count', () => {
    const before = tf.memory().numTensors;
    const rows = tf.tensor2d([[...Array(text.hidden_size).fill(7)], [...Array(text.hidden_size).fill(9)]]);
    const e = model.embed([5, 244, 6, 244], [{ tokenId: 244, rows, name: 'audio' }]);
    const got = e.arraySync();
    expect(got[1]!.every((v) => v === 7) && got[3]!.every((v) => v === 9)).toBe(true);
    expect(got[0]).toEqual(Array.from(model.embedTokens.subarray(5 * text.hidden_size, 6 * text.hidden_size)));
    expect(() => model.embed([244, 1], [{ tokenId: 244, rows, name: 'audio' }])).toThrow('TextModel.embed: audio has 2 rows but the ids hold 1 placeholder tokens (id 244)');
    expect(() => model.embed([text.vocab_size])).toThrow(`token id ${text.vocab_size} at position 0 is outside the vocabulary [0, ${text.vocab_size})`);
    tf.dispose([rows, e]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names a missing tensor and frees what it had loaded', () => {
    const broken = editedCheckpoint((t) => delete t['thinker.model.layers.2.mlp.experts.3.down_proj.weight']);
    const before = tf.memory().numTensors;
    expect(() => TextModel.load(broken, text)).toThrow(/missing tensor 'thinker\.model\.layers\.2\.mlp\.experts\.3\.down_proj\.weight'/);
    expect(tf.memory().numTensors).toBe(before);
    broken.close();
  });

  it('names a mis-shaped tensor with both shapes', () => {
    const broken = editedCheckpoint((t) => {
      const k = 'thinker.model.layers.1.self_attn.o_proj.weight'; // [hidden, heads·head_dim] stored transposed
      t[k] = { ...t[k]!, shape: [text.num_attention_heads * text.head_dim, text.hidden_size] };
    });
    const before = tf.memory().numTensors;
    const heads = text.num_attention_heads * text.head_dim;
    expect(() => TextModel.load(broken, text)).toThrow(
      `tensor 'thinker.model.layers.1.self_attn.o_proj.weight' has shape [${heads},${text.hidden_size}] but the model expects [${text.hidden_size},${heads}]`,
    );
    expect(tf.memory().numTensors).toBe(before);
    broken.close();
  });
});
