import * as tf from '@tensorflow/tfjs-core';
import { from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audioPacket, controlPacket, type AudioPacket, type ControlPacket } from '@omniflow/core';
import { SafetensorsFile, fixtureDir, fixturePath } from '@omniflow/runtime-gpu';
import { captionAudio, captionText, captioner } from './captioner.js';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { loadQwen3Omni, type Qwen3OmniModel } from './load.js';

const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
// Case 1's clip: 1.5 s of two sines and noise at 16 kHz.
const pcm = cases.read('audio_fe.waveform').data as Float32Array;

/** The clip as 100 ms audio packets, pts in microseconds. */
function packets(samples: Float32Array, turn = 0): Array<AudioPacket | ControlPacket> {
  const out: Array<AudioPacket | ControlPacket> = [];
  for (let i = 0; i < samples.length; i += 1600) {
    out.push(audioPacket({ samples: samples.slice(i, i + 1600), sampleRate: 16_000, channels: 1, pts: (i / 16_000) * 1e6, turn }));
  }
  return out;
}

let model: Qwen3OmniModel;
beforeAll(async () => {
  model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower'] });
});
afterAll(() => {
  model.dispose();
  cases.close();
});

describe('captionAudio', () => {
  it('captions a clip deterministically (greedy) and frees every tensor', async () => {
    const before = tf.memory().numTensors;
    const deltas = [];
    for await (const d of captionAudio(model, pcm, { maxNewTokens: 8 })) deltas.push(d);
    expect(deltas).toHaveLength(8); // random weights never say <|im_end|> this early
    expect(deltas.at(-1)!.finishReason).toBe('length');
    expect(deltas.map((d) => d.text).join('')).toBe(model.tokenizer.decode(deltas.map((d) => d.token)));
    expect(await captionText(model, pcm, { maxNewTokens: 8 })).toBe(deltas.map((d) => d.text).join(''));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses a model without an audio encoder', async () => {
    const textOnly = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker'] });
    await expect(captionText(textOnly, pcm)).rejects.toThrow(/loaded without its audio encoder/);
    textOnly.dispose();
  });
});

describe('captioner node', () => {
  it('captions the streamed clip exactly as the one-shot function does', async () => {
    const before = tf.memory().numTensors;
    const out = await lastValueFrom(from(packets(pcm)).pipe(captioner({ model, maxNewTokens: 6 }), toArray()));
    expect(out.map((p) => p.text).join('')).toBe(await captionText(model, pcm, { maxNewTokens: 6 }));
    expect(out.at(-1)!.final).toBe(true);
    expect(out.every((p) => p.pts === 0)).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('captions fixed-length segments and each turn separately, stamped with their start', async () => {
    const input: Array<AudioPacket | ControlPacket> = [...packets(pcm), controlPacket({ signal: 'turn-end' }), ...packets(pcm.subarray(0, 8000), 1)];
    const out = await lastValueFrom(from(input).pipe(captioner({ model, segmentSeconds: 1, maxNewTokens: 3 }), toArray()));
    const finals = out.filter((p) => p.final);
    // Turn 0: [0, 1 s) and [1, 1.5 s); turn 1: [0, 0.5 s).
    expect(finals.map((p) => [p.turn, p.pts])).toEqual([[0, 0], [0, 1_000_000], [1, 0]]);
    const firstSecond = await captionText(model, pcm.subarray(0, 16_000), { maxNewTokens: 3 });
    expect(out.filter((p) => p.turn === 0 && p.pts === 0).map((p) => p.text).join('')).toBe(firstSecond);
  });

  it('names the port and the format when audio is not 16 kHz mono', async () => {
    const stereo = audioPacket({ samples: new Float32Array(882), sampleRate: 44_100, channels: 2 });
    await expect(lastValueFrom(from([stereo]).pipe(captioner({ model })))).rejects.toThrow(/port 'audio' needs 16 kHz mono, got 44100 Hz × 2 channels/);
  });
});
