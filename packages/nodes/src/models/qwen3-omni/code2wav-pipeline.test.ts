import { from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codesPacket, controlPacket } from '@omniflow/core';
import { Checkpoint, SafetensorsFile, fixtureDir, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { Code2Wav } from './code2wav.js';
import { Code2WavPipeline, Code2WavStream } from './code2wav-stream.js';
import { code2wav } from './code2wav.node.js';

describe('Code2WavPipeline (two worker threads)', () => {
  let c2w: Code2Wav;
  let pipe: Code2WavPipeline;
  let codes: Int32Array;
  const frames = 12;

  beforeAll(async () => {
    await initBackend();
    const ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    c2w = Code2Wav.load(ckpt, readQwen3OmniConfig(fixtureDir()).config.code2wav_config!);
    ckpt.close();
    const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    codes = cases.read('code2wav.codes').data as Int32Array;
    cases.close();
    pipe = await Code2WavPipeline.start({ checkpoint: fixtureDir() }, { split: 3, groups: 4 });
  }, 60_000);

  afterAll(async () => {
    c2w.dispose();
    await pipe.close();
  });

  const frame = (f: number) => Int32Array.from({ length: 4 }, (_, g) => codes[g * frames + f]);

  it('pipelined pushes (all in flight at once) equal the offline decode, and the tail equals the stream tail', async () => {
    const pieces = await Promise.all(Array.from({ length: frames }, (_, f) => pipe.push(frame(f), 1)));
    expect(pieces.map((p) => p.length)).toEqual([15, ...new Array(frames - 1).fill(24)]);
    const streamed = Float32Array.from(pieces.flatMap((p) => [...p]));
    const offline = c2w.decode(codes, frames);
    expect(Math.max(...streamed.map((x, i) => Math.abs(x - offline[i])))).toBeLessThan(1e-5);
    const tail = await pipe.flush();
    const local = new Code2WavStream(c2w);
    local.push(codes, frames);
    const localTail = local.flush();
    expect(tail.length).toBe(c2w.lookaheadSamples);
    expect(Math.max(...tail.map((x, i) => Math.abs(x - localTail[i])))).toBeLessThan(1e-5);
    // A second stream after reset starts from scratch.
    await pipe.reset();
    const again = await pipe.push(frame(0), 1);
    expect(Math.max(...again.map((x, i) => Math.abs(x - offline[i])))).toBeLessThan(1e-5);
  });

  it('with int8 weights (decoder convs too) equals the one-thread int8 stream exactly, tail included', async () => {
    const ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    const options = { weights: 'int8' as const };
    const local = Code2Wav.load(ckpt, readQwen3OmniConfig(fixtureDir()).config.code2wav_config!, 'code2wav', options);
    ckpt.close();
    const stream = new Code2WavStream(local);
    const want = Array.from({ length: frames }, (_, f) => [...stream.push(frame(f), 1)]);
    const wantTail = [...stream.flush()];
    local.dispose();
    const int8 = await Code2WavPipeline.start({ checkpoint: fixtureDir() }, { ...options, split: 5, groups: 4 });
    try {
      const got = await Promise.all(Array.from({ length: frames }, (_, f) => int8.push(frame(f), 1)));
      expect(got.map((p) => [...p])).toEqual(want);
      expect([...(await int8.flush())]).toEqual(wantTail);
    } finally {
      await int8.close();
    }
  }, 60_000);

  it('names a wrong code count', () => {
    expect(() => pipe.push(new Int32Array(5), 1)).toThrow(/expected 4 x 1 codes, got 5/);
  });
});

describe('code2wav node with weights: int8 (loads the folder itself)', () => {
  it('emits what an int8 Code2WavStream returns frame by frame, tail included', async () => {
    const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    const codes = cases.read('code2wav.codes').data as Int32Array;
    cases.close();
    const frames = 12;
    const frame = (f: number) => Int32Array.from({ length: 4 }, (_, g) => codes[g * frames + f]);
    const packets = [
      ...Array.from({ length: frames }, (_, f) => codesPacket({ pts: 0, codes: frame(f), groups: 4, frames: 1 })),
      controlPacket({ pts: 0, signal: 'turn-end' }),
    ];
    const got = await lastValueFrom(from(packets).pipe(code2wav({ model: fixtureDir(), weights: 'int8' }), toArray()));
    const ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    const local = Code2Wav.load(ckpt, readQwen3OmniConfig(fixtureDir()).config.code2wav_config!, 'code2wav', { weights: 'int8' });
    ckpt.close();
    const stream = new Code2WavStream(local);
    const want = [...Array.from({ length: frames }, (_, f) => [...stream.push(frame(f), 1)]), [...stream.flush()]];
    local.dispose();
    expect(got.map((a) => [...a.samples])).toEqual(want);
  });
});

describe('code2wav node with workers: true', () => {
  it('emits the same audio as the single-thread node, in order, tail included (bf16 weights, default cut)', async () => {
    const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    const codes = cases.read('code2wav.codes').data as Int32Array;
    cases.close();
    const frames = 12;
    const packets = [
      ...Array.from({ length: frames }, (_, f) => codesPacket({ pts: 0, codes: Int32Array.from({ length: 4 }, (_, g) => codes[g * frames + f]), groups: 4, frames: 1, voices: { start: f, end: f + 1, text: 'x' } })),
      controlPacket({ pts: 0, signal: 'turn-end' }),
    ];
    const ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    const local = Code2Wav.load(ckpt, readQwen3OmniConfig(fixtureDir()).config.code2wav_config!, 'code2wav', { weights: 'bf16' });
    ckpt.close();
    const expected = await lastValueFrom(from(packets).pipe(code2wav({ model: local }), toArray()));
    local.dispose();
    const got = await lastValueFrom(from(packets).pipe(code2wav({ model: fixtureDir(), workers: true, weights: 'bf16' }), toArray()));
    expect(got.map((a) => a.samples.length)).toEqual(expected.map((a) => a.samples.length));
    expect(got.map((a) => a.pts)).toEqual(expected.map((a) => a.pts));
    expect(got.map((a) => a.voices)).toEqual(expected.map((a) => a.voices));
    const worst = Math.max(...got.flatMap((a, i) => [...a.samples].map((x, j) => Math.abs(x - expected[i].samples[j]))));
    expect(worst).toBeLessThan(1e-5);
  }, 60_000);
});
