import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir, initBackend, type HostTensor } from '@omniflow/runtime-gpu';
import { runParity } from './run-parity.js';
import { tensorPrefixes, type ParityRunner } from './types.js';

// A runner that hands back the expected tensors themselves, one nudged past its atol, one as a wrong-shape tfjs
// tensor, one left out: exercises the comparison, the ownership of returned tfjs tensors and the missing report.
const echo: ParityRunner = {
  kind: 'echo',
  matches: (_name, spec) => tensorPrefixes(spec).has('moe'),
  async run(ctx) {
    const out: Record<string, HostTensor | tf.Tensor> = {};
    for (const [name, t] of Object.entries(ctx.caseSpec.tensors)) if (t.role !== 'input') out[name] = ctx.tensor(name);
    const w = ctx.tensor('moe.routing_weights');
    const nudged = Float32Array.from(w.data, (v, i) => (i === 3 ? v + 2 * ctx.caseSpec.tensors['moe.routing_weights']!.atol : v));
    out['moe.routing_weights'] = { dtype: 'float32', shape: w.shape, data: nudged };
    out['moe.router_logits'] = tf.tensor(ctx.tensor('moe.router_logits').data as Float32Array, [1, ...ctx.tensor('moe.router_logits').shape]);
    delete out['talker_moe.output'];
    return out;
  },
};

describe('runParity', () => {
  beforeAll(async () => {
    await initBackend();
  });

  it('compares, reports missing and wrong-shape tensors, and disposes returned tfjs tensors', async () => {
    const before = tf.memory().numTensors;
    const report = await runParity(fixtureDir(), { runners: [echo], filter: (n) => n.startsWith('6_') || n.startsWith('8_') });
    expect(tf.memory().numTensors).toBe(before);
    const by = new Map(report.tensors.map((t) => [t.tensor, t]));
    expect(by.get('moe.output')).toMatchObject({ ok: true, maxAbsDiff: 0 });
    expect(by.get('moe.selected_experts')).toMatchObject({ ok: true, atol: 0 });
    expect(by.get('moe.routing_weights')!.ok).toBe(false);
    expect(by.get('moe.routing_weights')!.maxAbsDiff).toBeCloseTo(2e-4, 6);
    expect(by.get('moe.router_logits')).toMatchObject({ ok: false, error: 'shape [1,7,4] but expected [7,4]' });
    expect(by.get('talker_moe.output')).toMatchObject({ ok: false, role: 'output', error: 'not produced' });
    expect(by.get('code2wav.wav')).toMatchObject({ ok: false, error: 'case not run: no runner' });
    expect(report.notRun).toEqual(['8_code2wav']);
    expect(report.cases.find((c) => c.case === '6_moe_blocks')).toMatchObject({ ran: true, runners: ['echo'], leakedTensors: 0 });
    expect(report.passed + report.failed).toBe(report.tensors.length);
    expect(report.failedOutputs).toBeGreaterThanOrEqual(3);
  });
});
