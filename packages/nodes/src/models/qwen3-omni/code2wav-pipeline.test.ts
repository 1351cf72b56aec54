import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, SafetensorsFile, fixtureDir, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { Code2Wav } from './code2wav.js';
import { Code2WavPipeline, Code2WavStream } from './code2wav-stream.js';

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
    pipe = await Code2WavPipeline.start({ checkpoint: fixtureDir() }, { split: 1, groups: 4 });
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

  it('names a wrong code count', () => {
    expect(() => pipe.push(new Int32Array(5), 1)).toThrow(/expected 4 x 1 codes, got 5/);
  });
});
