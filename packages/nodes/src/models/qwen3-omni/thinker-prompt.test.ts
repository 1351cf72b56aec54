import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixtureDir, fixturePath } from '@omniflow/runtime-gpu';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { loadQwen3Omni, type Qwen3OmniModel } from './load.js';
import { prepareThinkerPrompt, type ThinkerMessage } from './thinker-prompt.js';

const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
const host = (name: string) => cases.read(name);
const tensor2d = (name: string, rows?: [number, number]) => {
  const t = host(name);
  const shape = rows ?? ([t.shape.at(-2)!, t.shape.at(-1)!] as [number, number]);
  return tf.tensor2d(t.data as Float32Array, shape);
};
const grid = (name: string) => [...host(name).data] as [number, number, number];
const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

let model: Qwen3OmniModel;
beforeAll(async () => {
  model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker'] });
});
afterAll(() => {
  model.dispose();
  cases.close();
});

describe('prepareThinkerPrompt', () => {
  it('builds the prefill of case 5 (ids, spliced embeddings, DeepStack, 3-D positions) from the encoder outputs', () => {
    const before = tf.memory().numTensors;
    const audio = tensor2d('audio_enc.last_hidden_state');
    const image = tensor2d('vision.image.embeds');
    const imageDs = [tensor2d('vision.image.deepstack.0'), tensor2d('vision.image.deepstack.1')];
    const video = tensor2d('vision.video.embeds');
    const videoDs = [tensor2d('vision.video.deepstack.0'), tensor2d('vision.video.deepstack.1')];
    const messages: ThinkerMessage[] = [
      { role: 'system', content: 'qV-' },
      {
        role: 'user',
        content: [
          { type: 'audio', embeds: audio, frames: host('audio_enc.feature_lens').data[0] },
          { type: 'image', embeds: image, deepstack: imageDs, gridThw: grid('vision.image_grid_thw') },
          { type: 'text', text: 'J' },
          { type: 'video', embeds: video, deepstack: videoDs, gridThw: grid('vision.video_grid_thw'), secondPerGrid: host('rope.video_second_per_grid').data[0] },
          { type: 'text', text: 'ro' },
        ],
      },
    ];
    const p = prepareThinkerPrompt(model, messages);
    expect(p.prompt.ids).toEqual([...host('thinker.input_ids').data]);
    expect(maxAbsDiff(p.inputsEmbeds.dataSync(), host('thinker.inputs_embeds').data)).toBeLessThanOrEqual(1e-6);
    const pos = host('thinker.position_ids').data;
    expect(maxAbsDiff([...p.positions[0], ...p.positions[1], ...p.positions[2]], pos)).toBe(0);
    expect(p.ropeDelta).toBe(host('rope.rope_deltas').data[0]);
    const mask = host('thinker.visual_pos_masks').data;
    expect(p.deepstack!.positions).toEqual([...mask].flatMap((v, i) => (v ? [i] : [])));
    const ds = host('thinker.deepstack_visual_embeds').data;
    expect(maxAbsDiff([...p.deepstack!.features[0].dataSync(), ...p.deepstack!.features[1].dataSync()], ds)).toBeLessThanOrEqual(1e-6);
    p.dispose();
    for (const t of [audio, image, video, ...imageDs, ...videoDs]) t.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names the media item whose rows disagree with its placeholders', () => {
    const audio = tf.zeros([19, 32]) as tf.Tensor2D;
    const before = tf.memory().numTensors;
    expect(() => prepareThinkerPrompt(model, [{ role: 'user', content: [{ type: 'audio', embeds: audio, frames: 150 }] }]))
      .toThrow(/audio #1 has 19 embedding rows but 150 mel frames make 20 audio tokens/);
    expect(tf.memory().numTensors).toBe(before);
    audio.dispose();
  });
});
