import * as tf from '@tensorflow/tfjs-core';
import { tensorPacket, type Packet, type TensorPacket } from '@omniflow/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { tensorFuser } from './fusion.js';
import { leakCheck } from './ownership.js';
import { audioChunks, kernelChainGraph } from './testing/kernel-chain.js';

let chain: ReturnType<typeof kernelChainGraph>;

/** Runs the graph over `n` chunks and returns the outputs as plain arrays (tensors disposed). */
async function runGraph(n: number, options: { fuse?: boolean }): Promise<number[][]> {
  const session = chain.graph.session({ fuser: tensorFuser(), ...options });
  const out: number[][] = [];
  session.output('y').subscribe((p: Packet) => {
    const t = (p as TensorPacket).tensor as tf.Tensor;
    out.push(Array.from(t.dataSync()));
    t.dispose();
  });
  const input = session.input('x');
  const done = session.start();
  audioChunks(n).forEach((t, i) => input.push(tensorPacket({ name: 'pcm', pts: i * 20_000, tensor: t })));
  input.complete();
  await done;
  return out;
}

describe.each(['wasm', 'cpu'] as const)('tensorFuser in a compiled graph (%s)', (backend) => {
  beforeAll(async () => {
    await initBackend({ backend });
    chain = kernelChainGraph(16);
  });
  afterAll(async () => {
    chain.dispose();
    await initBackend({ backend: 'wasm' });
  });

  it('plans the four kernel nodes as one stage, and turns off per graph or per node', () => {
    const plan = chain.graph.plan({ fuser: tensorFuser() });
    expect(plan.stages.map((s) => s.id)).toEqual(['gain+proj+bias+relu']);
    expect(plan.text()).toContain('fused [gain:gain -> proj:proj -> bias:bias -> relu:relu]');
    expect(chain.graph.plan({ fuser: tensorFuser(), fuse: false }).stages.map((s) => s.id)).toEqual(['gain', 'proj', 'bias', 'relu']);
  });

  it('folds the gain into the fused linear op, and the plan says so', () => {
    const plan = chain.graph.plan({ fuser: tensorFuser() });
    expect(plan.stages[0].fusedOps).toBe('[gain+proj+bias+relu: linear(alpha 0.5, bias, relu)]');
    expect(plan.text()).toContain('fused [gain:gain -> proj:proj -> bias:bias -> relu:relu] runs [gain+proj+bias+relu: linear(alpha 0.5, bias, relu)]');
    expect(chain.graph.plan({ fuser: tensorFuser({ fuseOps: false }) }).stages[0].fusedOps).toBe('gain -> proj -> bias -> relu');
  });

  it('gives the same outputs fused and unfused, with no tensor left behind', async () => {
    const leaks = leakCheck();
    const fused = await runGraph(5, {});
    const unfused = await runGraph(5, { fuse: false });
    expect(fused.length).toBe(5);
    expect(unfused.length).toBe(5);
    let worst = 0;
    fused.forEach((row, i) => row.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - unfused[i][j])))));
    expect(worst).toBeLessThan(1e-6);
    expect(fused.flat().filter((v) => v > 0).length).toBeGreaterThan(10);
    leaks.check(`graph runs on ${backend}`);
  });
});
