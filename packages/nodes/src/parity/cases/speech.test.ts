import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir, initBackend } from '@omniflow/runtime-gpu';
import { runParity } from '../run-parity.js';
import { code2WavRunner } from './code2wav.js';
import { talkerRunner } from './talker.js';

beforeAll(async () => {
  await initBackend();
});

describe('talker and Code2Wav parity runners', () => {
  it('reproduce every tensor of cases 7 (talker + code predictor, greedy) and 8 (Code2Wav, full and chunked)', async () => {
    const before = tf.memory().numTensors;
    const report = await runParity(fixtureDir(), { runners: [talkerRunner, code2WavRunner], filter: (n) => n.startsWith('7_') || n.startsWith('8_') });
    expect(report.tensors.filter((t) => !t.ok)).toEqual([]);
    const names = report.tensors.map((t) => t.tensor);
    for (const n of ['talker.codes', 'talker.code_predictor_logits', 'talker.step_logits', 'code2wav.wav', 'code2wav.wav_chunked']) expect(names).toContain(n);
    expect(report.tensors.length).toBe(21 + 6);
    expect(report.cases.every((c) => c.ran && !c.error && c.leakedTensors === 0)).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
  });
});
