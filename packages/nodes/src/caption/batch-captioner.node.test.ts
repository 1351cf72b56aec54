import { mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, from, merge, toArray } from 'rxjs';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audioPacket, type TextPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { writeFixtureTokenizer } from '../models/qwen3-omni/fixture-tokenizer/fixture-tokenizer.js';
import { batchCaptioner } from './batch-captioner.node.js';
import { Qwen3OmniCaptioner } from './qwen3-omni-captioner.js';

let model: Qwen3OmniCaptioner;
const gen = { maxNewTokens: 5, temperature: 0, topK: 0, topP: 1, seed: 0 };

beforeAll(async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'batch-captioner-')), 'qwen3-omni-tiny');
  mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors']) symlinkSync(join(fixtureDir(), f), join(dir, f));
  writeFixtureTokenizer(dir);
  model = await Qwen3OmniCaptioner.load(dir);
});
afterAll(() => model.dispose());

/** 3 s of a session's tone in 0.5 s packets. */
const tone = (session: string, hz: number) =>
  Array.from({ length: 6 }, (_, k) =>
    audioPacket({
      session,
      turn: 0,
      pts: k * 500_000,
      sampleRate: 16_000,
      channels: 1,
      samples: Float32Array.from({ length: 8000 }, (_, i) => 0.3 * Math.sin((2 * Math.PI * hz * (k * 8000 + i)) / 16_000)),
    }),
  );

describe('batchCaptioner node', () => {
  it('captions the segments of three sessions in shared batches, each as it would be alone', async () => {
    const sessions = { a: tone('a', 220), b: tone('b', 440), c: tone('c', 880) };
    const callsBefore = model.stats.calls;
    const before = tf.memory().numTensors;
    const out = (await firstValueFrom(
      merge(...Object.values(sessions).map((ps) => from(ps))).pipe(batchCaptioner({ model, segmentSeconds: 2, maxNewTokens: 5, maxBatch: 8 }), toArray()),
    )) as TextPacket[];
    expect(tf.memory().numTensors).toBe(before);
    // 3 s per session in 2 s segments: [0, 2) and the 1 s rest at the end of the input.
    expect(out.map((p) => `${p.session}@${p.pts}`).sort()).toEqual(['a@0', 'a@2000000', 'b@0', 'b@2000000', 'c@0', 'c@2000000']);
    expect(out.every((p) => p.final === true)).toBe(true);
    expect(model.stats.calls - callsBefore).toBeLessThanOrEqual(2);
    // The same text as captioning each segment alone.
    const pcmOf = (ps: ReturnType<typeof tone>, from: number, to: number) => {
      const all = new Float32Array(ps.length * 8000);
      ps.forEach((p, k) => all.set(p.samples, k * 8000));
      return all.slice(from * 16_000, to * 16_000);
    };
    for (const [name, ps] of Object.entries(sessions)) {
      const [first] = await model.caption([{ prompt: '', audio: pcmOf(ps, 0, 2) }], gen);
      const [rest] = await model.caption([{ prompt: '', audio: pcmOf(ps, 2, 3) }], gen);
      expect(out.find((p) => p.session === name && p.pts === 0)!.text).toBe(first);
      expect(out.find((p) => p.session === name && p.pts === 2_000_000)!.text).toBe(rest);
    }
  });

  it('refuses audio that is not 16 kHz mono, naming the port and what came', async () => {
    const bad = audioPacket({ session: 's', turn: 0, pts: 0, sampleRate: 44_100, channels: 2, samples: new Float32Array(882) });
    await expect(firstValueFrom(from([bad]).pipe(batchCaptioner({ model }), toArray()))).rejects.toThrow("input port 'audio' takes 16000 Hz mono, got 44100 Hz with 2 channel(s)");
  });
});
