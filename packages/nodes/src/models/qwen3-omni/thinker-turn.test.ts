import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixtureDir, fixturePath } from '@omniflow/runtime-gpu';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { generate } from './generate.js';
import { loadQwen3Omni, type Qwen3OmniModel } from './load.js';
import { getRopeIndex, ropeIndexConfigOf } from './rope-index.js';
import { prepareThinkerPrompt, type ThinkerMessage } from './thinker-prompt.js';
import { ThinkerConversation, runThinkerTurn, thinkerReply } from './thinker-turn.js';

const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
const host = (name: string) => cases.read(name);
const t2d = (name: string) => {
  const h = host(name);
  return tf.tensor2d(h.data as Float32Array, [h.shape.at(-2)!, h.shape.at(-1)!]);
};

let model: Qwen3OmniModel;
let media: tf.Tensor2D[];
let case5: ThinkerMessage[];
beforeAll(async () => {
  model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker'] });
  media = [t2d('audio_enc.last_hidden_state'), t2d('vision.image.embeds'), t2d('vision.image.deepstack.0'), t2d('vision.image.deepstack.1'), t2d('vision.video.embeds'), t2d('vision.video.deepstack.0'), t2d('vision.video.deepstack.1')];
  const [audio, image, i0, i1, video, v0, v1] = media;
  case5 = [
    { role: 'system', content: 'qV-' },
    {
      role: 'user',
      content: [
        { type: 'audio', embeds: audio, frames: 150 },
        { type: 'image', embeds: image, deepstack: [i0, i1], gridThw: [1, 4, 6] },
        { type: 'text', text: 'J' },
        { type: 'video', embeds: video, deepstack: [v0, v1], gridThw: [2, 4, 4], secondPerGrid: 1 },
        { type: 'text', text: 'ro' },
      ],
    },
  ];
});
afterAll(() => {
  for (const t of media) t.dispose();
  model.dispose();
  cases.close();
});

describe('runThinkerTurn', () => {
  it('generates the reference greedy ids of case 5 and stops at maxNewTokens', async () => {
    const r = await thinkerReply(model, case5, { maxNewTokens: 5 });
    expect(r.tokens).toEqual([...host('thinker.generated_ids').data]);
    expect(r.finishReason).toBe('length');
    expect(r.promptTokens).toBe(59);
    expect(r.text).toBe(model.tokenizer.decode(r.tokens));
  });

  it('aborts between steps through the signal and frees everything', async () => {
    const before = tf.memory().numTensors;
    const ac = new AbortController();
    const seen: number[] = [];
    const run = async () => {
      for await (const d of runThinkerTurn(model, [{ role: 'user', content: 'go' }], { maxNewTokens: 100, signal: ac.signal })) {
        seen.push(d.token);
        if (seen.length === 2) ac.abort(new Error('barge-in'));
      }
    };
    await expect(run()).rejects.toThrow(/barge-in/);
    expect(seen).toHaveLength(2);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('ThinkerConversation', () => {
  it('continues with the KV cache exactly as a full prompt of the whole conversation would', async () => {
    const before = tf.memory().numTensors;
    const chat = new ThinkerConversation(model);
    const first = await thinkerReply(model, case5, { maxNewTokens: 3, conversation: chat });
    const second = await thinkerReply(model, [{ role: 'user', content: 'ok' }], { maxNewTokens: 4, conversation: chat });

    // The same conversation as one prompt: turn 1, its answer closed by <|im_end|>\n, turn 2 — prefilled from scratch.
    const p1 = prepareThinkerPrompt(model, case5);
    const rest = [...first.tokens, model.tokenizer.specialTokens.imEnd, ...model.tokenizer.encode('\n'), ...model.tokenizer.encode('<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n')];
    const ids = [...p1.prompt.ids, ...rest];
    const restEmbeds = model.thinker.embed(rest);
    const embeds = tf.concat([p1.inputsEmbeds, restEmbeds], 0) as tf.Tensor2D;
    const rope = getRopeIndex(
      { inputIds: [ids], imageGridThw: p1.prompt.imageGridThw, videoGridThw: p1.prompt.videoGridThw, audioSeqlens: p1.prompt.audioFrames, secondPerGrids: p1.prompt.videoSecondPerGrid },
      ropeIndexConfigOf(model.config.thinker_config),
    );
    const S = ids.length;
    const positions = [0, 1, 2].map((r) => rope.positionIds.subarray(r * S, (r + 1) * S)) as [Float32Array, Float32Array, Float32Array];
    const full: number[] = [];
    for await (const s of generate(model.thinker, { inputIds: ids, inputsEmbeds: embeds, positions, ropeDelta: rope.ropeDeltas[0], deepstack: p1.deepstack, maxNewTokens: 4, stopTokens: model.tokenizer.stopTokenIds })) full.push(s.token);
    for (const t of [restEmbeds, embeds]) t.dispose();
    p1.dispose();

    expect(second.tokens).toEqual(full);
    expect(chat.length).toBe(ids.length + second.tokens.length - 1);
    chat.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('runs one turn at a time', async () => {
    const chat = new ThinkerConversation(model);
    const a = runThinkerTurn(model, [{ role: 'user', content: 'a' }], { maxNewTokens: 2, conversation: chat });
    await a.next();
    await expect(thinkerReply(model, [{ role: 'user', content: 'b' }], { conversation: chat })).rejects.toThrow(/a turn is already running/);
    await a.return(undefined as never);
    await thinkerReply(model, [{ role: 'user', content: 'b' }], { maxNewTokens: 1, conversation: chat });
    chat.dispose();
  });
});
