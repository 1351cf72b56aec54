import * as tf from '@tensorflow/tfjs-core';
import { from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { graph, runGraphVirtual, tensorPacket, textPacket, type AudioPacket, type CodesPacket, type ControlPacket, type TensorPacket, type TextPacket } from '@omniflow/core';
import { Checkpoint, SafetensorsFile, initBackend } from '@omniflow/runtime-gpu';
import type { Qwen3OmniConfig } from './config.js';
import { TalkerGeneration } from './talker.js';
import { buildTalkerPrompt, talkerTokenIds } from './talker-input.js';
import { GREEDY } from './codec-head.js';
import { Code2Wav } from './code2wav.js';
import { talker, type TalkerParts } from './talker.node.js';
import { code2wav } from './code2wav.node.js';
import { codecHead } from './codec-head.node.js';
import { codePredictor } from './code-predictor.node.js';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { loadTalkerFixture, type TalkerFixture } from './testing.js';

/*
 * The talker and code2wav nodes on the fixture checkpoint, fed the thinker rows of case 7 the way the thinker node
 * produces them: the prompt's rows in one packet, then one row per generated token, then the final text.
 */
describe('talker and code2wav nodes', () => {
  let config: Qwen3OmniConfig;
  let ckpt: Checkpoint;
  let cases: SafetensorsFile;
  let parts: TalkerParts;
  let c2w: Code2Wav;
  let start: number;
  let fixture: TalkerFixture;
  const tokenizer = fixtureTokenizer();

  beforeAll(async () => {
    await initBackend();
    start = tf.memory().numTensors;
    fixture = loadTalkerFixture();
    ({ config, ckpt, cases, parts } = fixture);
    c2w = Code2Wav.load(ckpt, config.code2wav_config!);
  });

  afterAll(() => {
    fixture.dispose();
    c2w.dispose();
    expect(tf.memory().numTensors).toBe(start);
    fixture.close();
  });

  /** Case 7's thinker rows as thinker-node packets: prompt rows, then one per fed answer token, then final text. */
  function thinkerPackets(turn = 0): Array<TensorPacket | TextPacket> {
    const ids = cases.read('thinker.sequences').data as Int32Array;
    const e = cases.read('talker.thinker_embed'), h = cases.read('talker.thinker_hidden');
    const rows = e.shape[1], width = e.shape[2];
    const bounds = [0, 59, ...Array.from({ length: rows - 59 }, (_, i) => 60 + i)];
    const packets: Array<TensorPacket | TextPacket> = [];
    for (let i = 0; i + 1 < bounds.length; i++) {
      const [a, b] = [bounds[i], bounds[i + 1]];
      const slice = (t: Float32Array | Int32Array) => tf.tensor2d(t.subarray(a * width, b * width) as Float32Array, [b - a, width]);
      packets.push(tensorPacket({
        turn, pts: 0, name: 'thinker_hidden', tensor: slice(h.data),
        extras: { embeds: slice(e.data), ids: tf.tensor1d(ids.subarray(a, b), 'int32') },
      }));
    }
    packets.push(textPacket({ turn, pts: 0, text: '', role: 'assistant', final: true }));
    return packets;
  }

  const model = () => ({ talker: parts, config, tokenizer });

  it('streams the reference codes (greedy), tagged with the text they voice, then turn-end', async () => {
    const before = tf.memory().numTensors;
    const out = await lastValueFrom(from(thinkerPackets()).pipe(talker({ model: model(), greedy: true, maxFrames: 3 }), toArray()));
    const codes = out.filter((p): p is CodesPacket => p.kind === 'codes');
    expect(out.at(-1)).toMatchObject({ kind: 'control', signal: 'turn-end', pts: 3 * 80_000 });
    const ref = cases.read('talker.codes').data; // [1, 4, 3]
    expect(codes.map((p) => Array.from(p.codes))).toEqual([0, 1, 2].map((f) => [0, 1, 2, 3].map((g) => ref[g * 3 + f])));
    expect(codes.map((p) => p.pts)).toEqual([0, 80_000, 160_000]);
    // Frame f has read answer tokens 0..f: the voiced ranges tile the decoded answer text.
    const answer = tokenizer.decode(Array.from(cases.read('thinker.sequences').data.subarray(59, 62)));
    expect(codes.map((p) => p.voices!.text).join('')).toBe(answer);
    expect(codes.at(-1)!.voices!.end).toBe(answer.length);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('talker -> code2wav: sampled speech streams frame by frame, equal to the offline decode of its codes', async () => {
    const before = tf.memory().numTensors;
    // Sampling suppresses the control ids past the 32-code codebook, so every frame is decodable; seed 3 speaks 12+ frames.
    const out = await lastValueFrom(from(thinkerPackets()).pipe(talker({ model: model(), seed: 3, maxFrames: 12 }), toArray()));
    const codes = out.filter((p): p is CodesPacket => p.kind === 'codes');
    expect(codes.length).toBe(12);
    const audio = await lastValueFrom(from(out).pipe(code2wav({ model: c2w, tail: false }), toArray()));
    expect(audio.length).toBe(12); // one audio packet per frame, as it arrives
    const all = Float32Array.from(audio.flatMap((a) => [...a.samples]));
    const frames = codes.length;
    const flat = new Int32Array(4 * frames);
    codes.forEach((p, f) => p.codes.forEach((c, g) => (flat[g * frames + f] = c)));
    const offline = c2w.decode(flat, frames);
    expect(all.length).toBe(offline.length);
    expect(Math.max(...all.map((x, i) => Math.abs(x - offline[i])))).toBeLessThan(1e-5);
    expect(audio.slice(0, 3).map((a) => a.pts)).toEqual([0, (15 / 24_000) * 1e6, (39 / 24_000) * 1e6]); // sample-exact: 15, then 24 per frame
    expect(audio[0].voices).toEqual(codes[0].voices);
    const withTail = await lastValueFrom(from(out).pipe(code2wav({ model: c2w, chunkFrames: 5 }), toArray()));
    expect(withTail.map((a) => a.samples.length)).toEqual([24 * 5 - 9, 24 * 5, 24 * 2, 9]); // 5 + 5 + 2 frames, then the 9-sample tail
    expect(tf.memory().numTensors).toBe(before);
  });

  it('an interrupt mid-utterance stops audio within one codec frame (virtual time, real-time pacing)', () => {
    const before = tf.memory().numTensors;
    const run = (interrupts: number[]) => {
      const g = graph('speak-tail')
        .add('talker', talker, { model: model(), seed: 3, maxFrames: 12, leadFrames: 0 })
        .add('code2wav', code2wav, { model: c2w })
        .connect('talker.codes', 'code2wav.codes')
        .input('thinker', 'talker.thinker')
        .output('audio', 'code2wav.audio');
      return runGraphVirtual(g, { mode: 'realtime', inputs: { thinker: thinkerPackets().map((p) => [0, p] as const) }, interrupts, until: 2_000_000 });
    };
    const full = run([]);
    const fullAudio = full.outputs.audio.filter((a) => a.packet.turn === 0);
    expect(fullAudio.length).toBeGreaterThan(6); // paced: one frame per 80 ms of media time
    expect(fullAudio.slice(0, 6).map((a) => a.at)).toEqual([0, 80_000, 160_000, 240_000, 320_000, 400_000]);

    const cut = run([250_000]);
    const heard = cut.outputs.audio.filter((a) => a.packet.turn === 0);
    expect(heard.map((a) => a.at)).toEqual([0, 80_000, 160_000, 240_000]);
    expect(heard.every((a) => a.at <= 250_000 + 80_000)).toBe(true);
    // What was heard is exactly the uninterrupted run's beginning, and its voices tags say how far the text got.
    expect(heard.map((a) => (a.packet as AudioPacket).samples.length)).toEqual(fullAudio.slice(0, 4).map((a) => (a.packet as AudioPacket).samples.length));
    expect((heard.at(-1)!.packet as AudioPacket).voices).toBeDefined();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('speaks consecutive answers of one conversation in turn, each prompt holding every user turn so far', async () => {
    const before = tf.memory().numTensors;
    // Two answers in one epoch: the thinker's rows for the second follow the first's (here: the same rows again).
    const out = await lastValueFrom(from([...thinkerPackets(), ...thinkerPackets()]).pipe(talker({ model: model(), greedy: true, maxFrames: 3 }), toArray()));
    const ends = out.filter((p) => p.kind === 'control').length;
    expect(ends).toBe(2);
    const second = out.slice(out.findIndex((p) => p.kind === 'control') + 1).filter((p): p is CodesPacket => p.kind === 'codes');
    expect(second.length).toBe(3);
    // Reference: the talker prompt over the whole conversation (both user turns, the second answer).
    const ids = cases.read('thinker.sequences').data as Int32Array;
    const e = cases.read('talker.thinker_embed'), h = cases.read('talker.thinker_hidden');
    const twice = (d: Float32Array) => { const x = new Float32Array(2 * d.length); x.set(d); x.set(d, d.length); return tf.tensor2d(x, [2 * 63, 32]); };
    const [E, H] = [twice(e.data as Float32Array), twice(h.data as Float32Array)];
    const allIds = Int32Array.from([...ids.subarray(0, 63), ...ids.subarray(0, 63)]);
    const prompt = buildTalkerPrompt(parts.talker, talkerTokenIds(config), { ids: allIds, thinkerEmbeds: E, thinkerHidden: H });
    expect(prompt.userIndices.length).toBe(2 * 48);
    const gen = new TalkerGeneration(parts.talker, parts.codecHead, parts.codePredictor, prompt, { sampling: GREEDY, predictorSampling: GREEDY, maxFrames: 3 });
    const ref: number[][] = [];
    for (let f = gen.next(); f; f = gen.next()) ref.push(Array.from(f.codes));
    gen.dispose();
    prompt.dispose();
    tf.dispose([E, H]);
    expect(second.map((p) => Array.from(p.codes))).toEqual(ref);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('codecHead and codePredictor nodes complete frame 0 from the talker prefill row', async () => {
    const before = tf.memory().numTensors;
    const last = cases.read('talker.prefill_last_hidden'); // [1, 57, 24]; its last row produced frame 0
    const row = () => tf.tensor2d(last.data.subarray(56 * 24, 57 * 24) as Float32Array, [1, 24]);
    const [code0] = await lastValueFrom(from([tensorPacket({ name: 'talker_hidden', tensor: row() })]).pipe(codecHead({ model: model(), greedy: true }), toArray()));
    const ref = cases.read('talker.codes').data; // [1, 4, 3]
    expect(Array.from(code0.ids)).toEqual([ref[0]]);
    const frame = tensorPacket({ name: 'talker_hidden', tensor: row(), extras: { code0: tf.tensor1d(code0.ids, 'int32') as unknown as tf.Tensor2D } });
    const [codes] = await lastValueFrom(from([frame]).pipe(codePredictor({ model: model(), greedy: true }), toArray()));
    expect(Array.from(codes.codes)).toEqual([ref[0], ref[3], ref[6], ref[9]]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names what is wrong with its input', async () => {
    const bad = tensorPacket({ name: 'audio_embeds', tensor: tf.zeros([2, 32]) });
    await expect(lastValueFrom(from([bad]).pipe(talker({ model: model() })))).rejects.toThrow(
      /port 'thinker' takes 'thinker_hidden' tensor packets with extras 'embeds' and 'ids', got 'audio_embeds'/,
    );
    const wrong = { kind: 'codes', session: 'default', turn: 0, pts: 0, codes: new Int32Array(8), groups: 8, frames: 1 } as CodesPacket;
    await expect(lastValueFrom(from([wrong as CodesPacket | ControlPacket]).pipe(code2wav({ model: c2w })))).rejects.toThrow(/8 code groups but this Code2Wav decodes 4/);
  });
});
