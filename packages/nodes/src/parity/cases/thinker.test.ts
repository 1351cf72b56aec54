import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir, initBackend } from '@omniflow/runtime-gpu';
import { runParity } from '../run-parity.js';
import { moeRunner } from './moe.js';
import { thinkerRunner } from './thinker.js';

beforeAll(async () => {
  await initBackend();
});

describe('thinker and MoE parity runners', () => {
  it('reproduce every tensor of cases 5 (thinker, via our encoders and rope index) and 6 (MoE blocks)', async () => {
    const before = tf.memory().numTensors;
    const report = await runParity(fixtureDir(), { runners: [thinkerRunner, moeRunner], filter: (n) => n.startsWith('5_') || n.startsWith('6_') });
    const bad = report.tensors.filter((t) => !t.ok);
    expect(bad).toEqual([]);
    expect(report.tensors.map((t) => t.tensor)).toContain('thinker.generated_ids');
    expect(report.tensors.length).toBe(21);
    expect(report.cases.every((c) => c.ran && !c.error && c.leakedTensors === 0)).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
  });
});
