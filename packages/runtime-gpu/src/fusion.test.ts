import * as tf from '@tensorflow/tfjs-core';
import { controlPacket, tensorPacket, type Packet, type TensorHandle, type TensorPacket } from '@omniflow/core';
import { from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { fuseChain, tensorFuser, type KernelNode } from './fusion.js';
import { activationKernel, biasAddKernel, matMulKernel } from './kernels.js';
import { leakCheck } from './ownership.js';

let weight: tf.Tensor2D, bias: tf.Tensor1D;
let chain: KernelNode[];
beforeAll(async () => {
  await initBackend();
  weight = tf.tensor2d(Float32Array.from({ length: 16 * 8 }, (_, i) => Math.sin(i * 0.7) * 0.5), [16, 8]);
  bias = tf.tensor1d(Float32Array.from({ length: 8 }, (_, i) => (i - 4) * 0.1));
  const gain = (x: TensorHandle) => tf.mul(x as tf.Tensor, 2) as unknown as TensorHandle;
  const tanh = (x: TensorHandle) => tf.tanh(x as tf.Tensor) as unknown as TensorHandle;
  chain = [
    { id: 'gain', type: 'gain', kernel: gain },
    { id: 'proj', type: 'linear', kernel: matMulKernel(weight) },
    { id: 'bias', type: 'bias', kernel: biasAddKernel(bias) },
    { id: 'act', type: 'relu', kernel: activationKernel('relu') },
    { id: 'squash', type: 'tanh', kernel: tanh },
  ];
});
afterAll(() => tf.dispose([weight, bias]));

/** 20 ms of 16 kHz audio as [20, 16] frames, one packet per chunk. */
const chunks = (n: number): Packet[] =>
  Array.from({ length: n }, (_, c) => tensorPacket({ session: 's', pts: c * 20_000, name: 'frames', tensor: tf.tensor2d(Float32Array.from({ length: 320 }, (_, i) => Math.sin((c * 320 + i) * 0.05)), [20, 16]) }));

/** What core does without a fuser: each kernel node on its own, disposing its input. */
function unfused(p: TensorPacket): number[] {
  let x = p.tensor;
  for (const node of chain) {
    const y = node.kernel(x);
    if (y !== x) x.dispose();
    x = y;
  }
  const out = Array.from((x as tf.Tensor).dataSync());
  x.dispose();
  return out;
}

describe('tensorFuser', () => {
  it('gives the unfused results, merging linear + bias + relu into one fused matMul', async () => {
    const leaks = leakCheck();
    const op = tensorFuser()(chain)!;
    expect(op.description).toBe('gain -> [proj+bias+act: fused.matMul(bias, relu)] -> squash');
    const want = chunks(3).map((p) => unfused(p as TensorPacket));
    const inputs = chunks(3);
    const emitted: Packet[] = await lastValueFrom(from(inputs).pipe(op, toArray()));
    const out = emitted as TensorPacket[];
    expect(inputs.every((p) => (p as TensorPacket).tensor.isDisposed)).toBe(true);
    expect(out.map((p) => [p.pts, p.name, p.tensor.shape])).toEqual([0, 20_000, 40_000].map((pts) => [pts, 'frames', [20, 8]]));
    let worst = 0, positive = 0;
    out.forEach((p, c) => {
      const got = (p.tensor as tf.Tensor).dataSync();
      got.forEach((v, i) => {
        worst = Math.max(worst, Math.abs(v - want[c][i]));
        if (v > 0) positive++;
      });
      p.tensor.dispose();
    });
    expect(worst).toBeLessThan(1e-6);
    expect(positive).toBeGreaterThan(0); // relu did not zero everything: the comparison means something
    leaks.check('fused stage');
  });

  it('is bit-identical to unfused when op merging is off, and passes control packets through in order', async () => {
    const leaks = leakCheck();
    const op = fuseChain(chain, { fuseOps: false });
    expect(op.steps.map((s) => s.op)).toEqual(['kernel', 'kernel', 'kernel', 'kernel', 'kernel']);
    const want = chunks(2).map((p) => unfused(p as TensorPacket));
    const [a, b] = chunks(2);
    const end = controlPacket({ signal: 'turn-end' });
    const out = await lastValueFrom(from([a, end, b]).pipe(op, toArray()));
    expect(out.map((p) => p.kind)).toEqual(['tensor', 'control', 'tensor']);
    expect(out[1]).toBe(end);
    expect(Array.from(((out[0] as TensorPacket).tensor as tf.Tensor).dataSync())).toEqual(want[0]);
    expect(Array.from(((out[2] as TensorPacket).tensor as tf.Tensor).dataSync())).toEqual(want[1]);
    out.forEach((p) => p.kind === 'tensor' && p.tensor.dispose());
    leaks.check('unmerged fused stage');
  });

  it('merges matMul + activation without a bias, and every fusable activation agrees', async () => {
    const leaks = leakCheck();
    for (const act of ['relu', 'relu6', 'sigmoid', 'elu', 'leakyrelu'] as const) {
      const nodes: KernelNode[] = [
        { id: 'proj', type: 'linear', kernel: matMulKernel(weight) },
        { id: 'act', type: act, kernel: activationKernel(act, 0.3) },
      ];
      const op = fuseChain(nodes);
      expect(op.steps.map((s) => s.op)).toEqual([`fused.matMul(${act})`]);
      const x = tf.tensor3d(Float32Array.from({ length: 2 * 3 * 16 }, (_, i) => Math.cos(i) * 3), [2, 3, 16]); // leading axes kept
      const want = tf.tidy(() => Array.from((nodes[1].kernel(nodes[0].kernel(x)) as tf.Tensor).dataSync()));
      const emitted: Packet[] = await lastValueFrom(from<Packet[]>([tensorPacket({ name: 'h', tensor: x })]).pipe(op, toArray()));
      const out = emitted[0] as TensorPacket;
      expect(out.tensor.shape).toEqual([2, 3, 8]);
      const got = (out.tensor as tf.Tensor).dataSync();
      want.forEach((v, i) => expect(Math.abs(got[i] - v)).toBeLessThan(1e-5));
      out.tensor.dispose();
    }
    leaks.check('fused activations');
  });

  it('declines chains shorter than minChain and names the failing node', async () => {
    expect(tensorFuser({ minChain: 6 })(chain)).toBeUndefined();
    const leaks = leakCheck();
    const bad = tensorPacket({ name: 'frames', tensor: tf.zeros([20, 12]) });
    await expect(lastValueFrom(from([bad as Packet]).pipe(fuseChain(chain)))).rejects.toThrow(
      "fused stage gain+proj+bias+act+squash: node 'proj' (linear) + 'bias' (bias) + 'act' (relu) failed on input [20,12]: matMul kernel: input's last axis is 12 but the weight expects 16",
    );
    leaks.check('failed fused stage');
  });
});
