import * as tf from '@tensorflow/tfjs-core';
import { concat, firstValueFrom, from, lastValueFrom, of, take, tap, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { graph, tensorPacket, textPacket, type TensorPacket, type TextPacket, type TokensPacket } from '@omniflow/core';
import { SafetensorsFile, fixtureDir, fixturePath } from '@omniflow/runtime-gpu';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { loadQwen3Omni, type Qwen3OmniModel } from './load.js';
import { framesForAudioTokens, thinker } from './thinker.js';
import { talker } from './talker.node.js';
import { ThinkerConversation, thinkerReply } from './thinker-turn.js';
import { audioOutputLength } from './audio-encoder.js';

const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
const host = (name: string) => cases.read(name);
const t2d = (name: string) => {
  const h = host(name);
  return tf.tensor2d(h.data as Float32Array, [h.shape.at(-2)!, h.shape.at(-1)!]);
};

/** Case 5's user turn as packets: audio, image, 'J', video, 'ro' (the encoders' outputs come from cases 2 and 3). */
function case5Packets(): Array<TensorPacket | TextPacket> {
  const vision = (kind: 'image' | 'video', extra: Record<string, tf.Tensor> = {}) =>
    tensorPacket({
      name: `${kind}_embeds`,
      tensor: t2d(`vision.${kind}.embeds`),
      extras: {
        'deepstack.0': t2d(`vision.${kind}.deepstack.0`),
        'deepstack.1': t2d(`vision.${kind}.deepstack.1`),
        grid_thw: tf.tensor1d(host(`vision.${kind}_grid_thw`).data as Int32Array, 'int32'),
        ...extra,
      },
    });
  return [
    tensorPacket({ name: 'audio_embeds', tensor: t2d('audio_enc.last_hidden_state') }),
    vision('image'),
    textPacket({ text: 'J' }),
    vision('video', { second_per_grid: tf.tensor1d([host('rope.video_second_per_grid').data[0]]) }),
    textPacket({ text: 'ro', final: true }),
  ];
}

let model: Qwen3OmniModel;
beforeAll(async () => {
  model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'talker'] });
});
afterAll(() => {
  model.dispose();
  cases.close();
});

describe('thinker node', () => {
  it('answers case 5 with the reference greedy ids and streams their text', async () => {
    const before = tf.memory().numTensors;
    const out = thinker({ model, system: 'qV-', maxNewTokens: 5 })(from(case5Packets()));
    const [tokens, text] = await Promise.all([lastValueFrom(out.tokens.pipe(toArray())), lastValueFrom(out.text.pipe(toArray()))]);
    const ids = tokens.flatMap((p) => [...p.ids]);
    expect(ids).toEqual([...host('thinker.generated_ids').data]);
    expect(text.map((p) => p.text).join('')).toBe(model.tokenizer.decode(ids));
    expect(text.at(-1)!.final).toBe(true);
    expect(text.slice(0, -1).every((p) => !p.final && p.role === 'assistant')).toBe(true);
    // The node disposed the media packets it was given, and everything of the turn.
    expect(tf.memory().numTensors).toBe(before);
  });

  it("emits the talker's input rows: hidden_states[accept_hidden_layer] and the embeddings, per step", async () => {
    const before = tf.memory().numTensors;
    const out = thinker({ model, system: 'qV-', maxNewTokens: 2, talkerHidden: true })(from(case5Packets()));
    const all = await lastValueFrom(out.hidden.pipe(toArray()));
    expect(all.at(-1)).toMatchObject({ kind: 'control', signal: 'turn-end' });
    const hidden = all.filter((p) => p.kind === 'tensor') as unknown as TensorPacket<tf.Tensor>[];
    expect(hidden.map((p) => p.tensor.shape)).toEqual([[59, 32], [1, 32]]);
    // One token id per row: the prompt, then the token fed at the decode step.
    expect([...hidden[0].extras!.ids.dataSync()]).toEqual([...host('thinker.input_ids').data]);
    expect([...hidden[1].extras!.ids.dataSync()]).toEqual([host('thinker.generated_ids').data[0]]);
    const layer = model.config.talker_config!.accept_hidden_layer;
    const ref = host('thinker.hidden_states').data.subarray(layer * 59 * 32, (layer + 1) * 59 * 32);
    const got = hidden[0].tensor.dataSync();
    let diff = 0;
    for (let i = 0; i < ref.length; i++) diff = Math.max(diff, Math.abs(got[i] - ref[i]));
    expect(diff).toBeLessThan(1e-4);
    const embeds = hidden[0].extras!.embeds.dataSync();
    const refEmbeds = host('thinker.inputs_embeds').data;
    let ediff = 0;
    for (let i = 0; i < refEmbeds.length; i++) ediff = Math.max(ediff, Math.abs(embeds[i] - refEmbeds[i]));
    expect(ediff).toBeLessThan(1e-6);
    for (const p of hidden) {
      p.tensor.dispose();
      for (const e of Object.values(p.extras ?? {})) e.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it("drives the talker node: thinker → talker reproduces case 7's codec frames", async () => {
    const sent: tf.Tensor[] = [];
    const rows = thinker({ model, system: 'qV-', maxNewTokens: 5, talkerHidden: true })(from(case5Packets())).hidden.pipe(
      tap((p) => {
        if (p.kind === 'tensor') sent.push(p.tensor as unknown as tf.Tensor, ...(Object.values(p.extras ?? {}) as unknown as tf.Tensor[]));
      }),
    );
    const out = await lastValueFrom(rows.pipe(talker({ model, greedy: true, maxFrames: 6 }), toArray()));
    const frames = out.filter((p) => p.kind === 'codes');
    expect(frames).toHaveLength(6); // the reference stops after 3; the first 3 must be its frames
    // Reference codes are [1, groups, frames]; each packet holds one frame's groups.
    const ref = host('talker.codes').data;
    const G = frames[0].groups;
    for (let f = 0; f < 3; f++) expect([...frames[f].codes]).toEqual(Array.from({ length: G }, (_, g) => ref[g * 3 + f]));
    // Every row the thinker handed over was consumed and freed by the talker.
    expect(sent.length).toBe(5 * 3); // 5 steps: hidden, embeds, ids
    expect(sent.filter((t) => !t.isDisposed)).toEqual([]);
  });

  it('stops generating between steps when the consumer unsubscribes, and frees the turn', async () => {
    const before = tf.memory().numTensors;
    const out = thinker({ model, maxNewTokens: 500 })(concat(of(textPacket({ text: 'ab', final: true }))));
    const first = await lastValueFrom(out.tokens.pipe(take(3), toArray()));
    expect(first).toHaveLength(3);
    await new Promise((r) => setTimeout(r, 20)); // let the aborted loop unwind
    expect(tf.memory().numTensors).toBe(before);
  });

  it('in a graph session, an interrupt aborts the turn between decode steps and the next turn is answered', async () => {
    const before = tf.memory().numTensors;
    const g = graph('assistant').add('think', thinker, { model, maxNewTokens: 40 }).input('in', 'think.input').output('tokens', 'think.tokens').output('text', 'think.text');
    const session = g.session({ mode: 'batch' });
    const tokens: TokensPacket[] = [];
    let interruptedAt = -1;
    const turn1Done = new Promise<void>((resolve) => {
      session.output('text').subscribe((p) => {
        if (p.turn === 1 && p.kind === 'text' && p.final) resolve();
      });
    });
    session.output('tokens').subscribe((p) => {
      tokens.push(p as TokensPacket);
      if (p.turn === 0 && tokens.length === 3) {
        interruptedAt = tokens.length;
        session.interrupt('barge-in');
        session.input('in').push(textPacket({ text: 'ok', final: true }));
      }
    });
    const done = session.start();
    session.input('in').push(textPacket({ text: 'go', final: true }));
    await turn1Done;
    // Turn 0 stopped right at the interrupt (well before its 40 tokens); turn 1 ran to its own end.
    expect(interruptedAt).toBe(3);
    expect(tokens.filter((p) => p.turn === 0)).toHaveLength(3);
    expect(tokens.filter((p) => p.turn === 1).length).toBeGreaterThan(0);
    session.input('in').complete();
    await done;
    expect(tf.memory().numTensors).toBe(before);
  });

  it("keeps a session's conversation across turns (history), or answers each turn alone", async () => {
    const twoTurns = () => from([textPacket({ text: 'The cat sat.', final: true }), textPacket({ text: 'Why?', final: true })]);
    const answers = async (history: boolean) => {
      const tokens = await lastValueFrom(thinker({ model, maxNewTokens: 4, history })(twoTurns()).tokens.pipe(toArray()));
      return tokens.flatMap((p) => [...p.ids]);
    };
    const chat = new ThinkerConversation(model);
    const first = await thinkerReply(model, [{ role: 'user', content: 'The cat sat.' }], { maxNewTokens: 4, conversation: chat });
    const second = await thinkerReply(model, [{ role: 'user', content: 'Why?' }], { maxNewTokens: 4, conversation: chat });
    chat.dispose();
    const alone = await thinkerReply(model, [{ role: 'user', content: 'Why?' }], { maxNewTokens: 4 });
    expect(second.tokens).not.toEqual(alone.tokens); // the history really changes the answer here
    const before = tf.memory().numTensors;
    expect(await answers(true)).toEqual([...first.tokens, ...second.tokens]);
    expect(await answers(false)).toEqual([...first.tokens, ...alone.tokens]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names a tensor packet it does not understand', async () => {
    const bad = tensorPacket({ name: 'pixel_values', tensor: tf.zeros([4, 32]) });
    const out = thinker({ model })(of(bad, textPacket({ text: '?', final: true })));
    await expect(firstValueFrom(out.text)).rejects.toThrow(/tensor packet 'pixel_values' is not one of audio_embeds, image_embeds, video_embeds/);
    expect(bad.tensor.isDisposed).toBe(true);
  });

  it('rejects params it cannot use, naming the node and the param', () => {
    expect(() => thinker({ model: 42 as never })).toThrow(/thinker: bad params: model/);
    expect(() => thinker({ model, maxNewTokens: 0 })).toThrow(/thinker: bad params: maxNewTokens/);
  });
});

describe('framesForAudioTokens', () => {
  it('inverts the audio encoder length formula', () => {
    for (const n of [1, 2, 12, 13, 14, 20, 26, 390]) expect(audioOutputLength(framesForAudioTokens(n))).toBe(n);
  });
});
