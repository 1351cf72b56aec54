import * as tf from '@tensorflow/tfjs-core';
import { controlPacket, tensorPacket, type Packet, type TensorPacket } from '@omniflow/core';
import { from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { leakCheck } from './ownership.js';
import { affineWeights } from './testing/affine-stage.js';
import { WorkerStage } from './worker-stage.js';

const moduleUrl = new URL('./testing/affine-stage.ts', import.meta.url);
let stage: WorkerStage;
beforeAll(async () => {
  await initBackend();
  stage = await WorkerStage.start({ module: moduleUrl, setup: { inF: 8, outF: 4 } });
});
afterAll(() => stage.close());

const input = (rows: number, seed: number) => Float32Array.from({ length: rows * 8 }, (_, i) => Math.sin(seed + i));

describe('WorkerStage', () => {
  it('runs a stage on its own wasm backend and agrees with the main thread', async () => {
    expect(stage.backend.name).toBe('wasm');
    const x = input(3, 1);
    const want = tf.tidy(() => {
      const { w, b } = affineWeights(8, 4);
      return Array.from(tf.relu(tf.add(tf.matMul(tf.tensor2d(x, [3, 8]), tf.tensor2d(w, [8, 4])), tf.tensor1d(b))).dataSync());
    });
    const { out } = await stage.run({ x: { dtype: 'float32', shape: [3, 8], data: x.slice() } });
    expect(out.shape).toEqual([3, 4]);
    const got = Array.from(out.data);
    expect(got.some((v) => v > 0)).toBe(true);
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i], 6));
  });

  it('answers concurrent calls in order and transfers the inputs', async () => {
    const xs = [1, 2, 3, 4].map((s) => input(s, s));
    const runs = xs.map((x, i) => stage.run({ x: { dtype: 'float32', shape: [i + 1, 8], data: x } }));
    expect(xs[0].byteLength).toBe(0); // transferred, not copied
    const outs = await Promise.all(runs);
    expect(outs.map((o) => o.out.shape[0])).toEqual([1, 2, 3, 4]);
  });

  it('runs as an RxJS stage over tensor packets, in order, owning the tensors', async () => {
    const leaks = leakCheck();
    const packets: Packet[] = [
      tensorPacket({ session: 's', pts: 0, name: 'h', tensor: tf.tensor2d(input(1, 5), [1, 8]) }),
      controlPacket({ session: 's', pts: 1, signal: 'flush' }),
      tensorPacket({ session: 's', pts: 2, name: 'h', tensor: tf.tensor2d(input(2, 6), [2, 8]) }),
    ];
    const out = await lastValueFrom(from(packets).pipe(stage.operator(), toArray()));
    expect(out.map((p) => [p.kind, p.pts])).toEqual([['tensor', 0], ['control', 1], ['tensor', 2]]);
    expect((out[2] as TensorPacket).tensor.shape).toEqual([2, 4]);
    expect(packets.every((p) => p.kind !== 'tensor' || p.tensor.isDisposed)).toBe(true);
    out.forEach((p) => p.kind === 'tensor' && p.tensor.dispose());
    leaks.check('worker operator');
  });

  it('reports stage errors and bad modules by name', async () => {
    await expect(stage.run({ x: { dtype: 'float32', shape: [8], data: new Float32Array(8) } })).rejects.toThrow("input 'x' must be [rows, 8], got [8]");
    await expect(WorkerStage.start({ module: moduleUrl, export: 'nope' })).rejects.toThrow("has no exported function 'nope' (exports: affineWeights, setup, stage)");
  });
});
