import * as tf from '@tensorflow/tfjs-core';
import { controlPacket, tensorPacket, type Packet, type TensorHandle, type TensorPacket } from '@omniflow/core';
import { from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { fuseChain, tensorFuser, type KernelNode } from './fusion.js';
import { activationKernel, biasAddKernel, fusableOpOf, matMulKernel, scaleKernel } from './kernels.js';
import { leakCheck } from './ownership.js';
import { OMNIFLOW_MATMUL, SIMD_MATMUL_MAX_ROWS } from './simd/mat-mul-small.js';

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
  it('gives the unfused results, merging linear + bias + relu into one fused op', async () => {
    const leaks = leakCheck();
    const op = tensorFuser()(chain)!;
    // 'gain' is a plain function kernel, not a described scale: it stays a step of its own.
    expect(op.description).toBe('gain -> [proj+bias+act: linear(bias, relu)] -> squash');
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
      expect(op.steps.map((s) => s.op)).toEqual([`linear(${act})`]);
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

describe.each(['wasm', 'cpu'] as const)('folding constant gains into the fused linear op (%s)', (backend) => {
  beforeAll(async () => {
    await initBackend({ backend });
  });
  afterAll(async () => {
    await initBackend({ backend: 'wasm' });
  });

  /** gain ×0.5 → proj → gain ×3 → bias → relu → tanh, with its own weights on this backend. */
  function gainChain() {
    const w = tf.tensor2d(Float32Array.from({ length: 16 * 8 }, (_, i) => Math.sin(i * 0.7) * 0.5), [16, 8]);
    const b = tf.tensor1d(Float32Array.from({ length: 8 }, (_, i) => (i - 4) * 0.1));
    const nodes: KernelNode[] = [
      { id: 'pre', type: 'gain', kernel: scaleKernel(0.5) },
      { id: 'proj', type: 'linear', kernel: matMulKernel(w) },
      { id: 'post', type: 'gain', kernel: scaleKernel(3) },
      { id: 'bias', type: 'bias', kernel: biasAddKernel(b) },
      { id: 'act', type: 'relu', kernel: activationKernel('relu') },
      { id: 'squash', type: 'tanh', kernel: (x: TensorHandle) => tf.tanh(x as tf.Tensor) as unknown as TensorHandle },
    ];
    return { nodes, dispose: () => tf.dispose([w, b]) };
  }

  it('runs gain → matMul → gain → bias → relu as one step with alpha = 1.5, within float rounding of node by node', async () => {
    expect(tf.getBackend()).toBe(backend);
    const leaks = leakCheck();
    const { nodes, dispose } = gainChain();
    const op = fuseChain(nodes);
    expect(op.description).toBe('[pre+proj+post+bias+act: linear(alpha 1.5, bias, relu)] -> squash');
    // One row (a 20 ms chunk as [1, 16]), several rows, and a leading batch axis.
    for (const shape of [[1, 16], [20, 16], [2, 3, 16]]) {
      const size = shape.reduce((a, b) => a * b, 1);
      const values = Float32Array.from({ length: size }, (_, i) => Math.cos(i * 0.3) * 2);
      const want = tf.tidy(() => {
        let x = tf.tensor(values, shape) as unknown as TensorHandle;
        for (const n of nodes) x = n.kernel(x);
        return Array.from((x as tf.Tensor).dataSync());
      });
      const emitted: Packet[] = await lastValueFrom(from<Packet[]>([tensorPacket({ name: 'h', tensor: tf.tensor(values, shape) })]).pipe(op, toArray()));
      const out = emitted[0] as TensorPacket;
      expect(out.tensor.shape).toEqual([...shape.slice(0, -1), 8]);
      const got = (out.tensor as tf.Tensor).dataSync();
      let worst = 0;
      want.forEach((v, i) => (worst = Math.max(worst, Math.abs(got[i] - v))));
      expect(worst).toBeLessThan(1e-6);
      expect(want.filter((v) => v > 0).length).toBeGreaterThan(size / 16 / 4); // relu left enough positive outputs to compare
      out.tensor.dispose();
    }
    dispose();
    leaks.check(`gain-folded fused stage on ${backend}`);
  });

  it('runs the merged step as one SIMD kernel call on wasm for a few rows, and as exact tfjs ops otherwise', async () => {
    const leaks = leakCheck();
    const { nodes, dispose } = gainChain();
    const [step] = fuseChain(nodes).steps;
    const kernelsFor = async (shape: number[]) => {
      const x = tf.ones(shape);
      const info = await tf.profile(() => step.run(x));
      (info.result as tf.Tensor).dispose();
      x.dispose();
      return info.kernels.map((k) => k.name);
    };
    if (backend === 'wasm') {
      expect(await kernelsFor([1, 16])).toEqual([OMNIFLOW_MATMUL]); // gain, matMul, gain, bias and relu in one call
      expect(await kernelsFor([SIMD_MATMUL_MAX_ROWS, 16])).toEqual([OMNIFLOW_MATMUL]);
      expect(await kernelsFor([SIMD_MATMUL_MAX_ROWS + 1, 16])).toEqual(['Multiply', 'Reshape', 'Reshape', '_FusedMatMul', 'Reshape']); // many rows: XNNPACK's GEMM
    } else {
      expect(await kernelsFor([1, 16])).toEqual(['Multiply', 'Reshape', 'Reshape', '_FusedMatMul', 'Reshape']);
    }
    dispose();
    leaks.check(`kernel path on ${backend}`);
  });

  it('folds only gains that touch a matMul, and multiplies several of them', () => {
    const { nodes, dispose } = gainChain();
    const [pre, proj, post, , act, squash] = nodes;
    const twice: KernelNode = { id: 'twice', type: 'gain', kernel: scaleKernel(2) };
    expect(fuseChain([pre, squash, proj, act]).steps.map((s) => s.op)).toEqual(['kernel', 'kernel', 'linear(relu)']);
    expect(fuseChain([twice, pre, proj, post]).steps.map((s) => [s.nodes.join('+'), s.op])).toEqual([['twice+pre+proj+post', 'linear(alpha 3)']]);
    expect(fuseChain([proj, act, pre]).steps.map((s) => s.op)).toEqual(['linear(relu)', 'kernel']); // a gain after the activation does not commute
    expect(fuseChain([pre, proj, post], { fuseOps: false }).steps.map((s) => s.op)).toEqual(['kernel', 'kernel', 'kernel']);
    dispose();
  });
});

describe('scaleKernel', () => {
  it('multiplies by its factor and says what it is', () => {
    const leaks = leakCheck();
    const k = scaleKernel(-2.5);
    expect(fusableOpOf(k)).toEqual({ op: 'scale', factor: -2.5 });
    const x = tf.tensor1d([1, -2, 4]);
    const y = k(x as unknown as TensorHandle) as unknown as tf.Tensor;
    expect(Array.from(y.dataSync())).toEqual([-2.5, 5, -10]);
    tf.dispose([x, y]);
    leaks.check('scaleKernel');
  });

  it('rejects a factor that is not a finite number', () => {
    expect(() => scaleKernel(Number.NaN)).toThrow('scaleKernel: factor must be a finite number, got NaN');
  });
});
