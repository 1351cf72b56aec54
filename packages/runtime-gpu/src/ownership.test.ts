import * as tf from '@tensorflow/tfjs-core';
import { tensorPacket, textPacket, type Packet } from '@omniflow/core';
import { from, lastValueFrom, toArray } from 'rxjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { disposePackets, expectNoLeaks, forwardTensor, leakCheck, mapTensor, splitTensorPacket } from './ownership.js';

beforeAll(async () => {
  await initBackend();
});

describe('leak checks', () => {
  it('reports the tensors and bytes a run left behind', async () => {
    const leaks = leakCheck();
    const kept = tf.zeros([4, 4]);
    expect(leaks.delta()).toEqual({ numTensors: 1, numBytes: 64 });
    expect(() => leaks.check('zeros')).toThrow('tensor leak in zeros: 1 tensors and 64 bytes more than before');
    await expect(expectNoLeaks(() => tf.ones([2]), 'ones')).rejects.toThrow('tensor leak in ones: 1 tensors and 8 bytes');
    kept.dispose();
    const sum = await expectNoLeaks(() => tf.tidy(() => tf.sum(tf.tensor1d([1, 2, 3])).dataSync()[0]));
    expect(sum).toBe(6);
  });
});

describe('tensor packet ownership', () => {
  it('forwards, splits and maps with exactly one owner per tensor', async () => {
    const start = tf.memory().numTensors;
    const p = tensorPacket({ session: 's', turn: 2, pts: 40_000, name: 'pcm', tensor: tf.tensor1d([1, 2, 3, 4]) });
    const doubled = forwardTensor(p, tf.mul(p.tensor as tf.Tensor, 2), 'pcm2');
    expect(p.tensor.isDisposed).toBe(true);
    expect([doubled.session, doubled.turn, doubled.pts, doubled.name]).toEqual(['s', 2, 40_000, 'pcm2']);
    const [a, b] = splitTensorPacket(doubled, [1, 3]);
    expect(doubled.tensor.isDisposed).toBe(true);
    expect(Array.from(a.tensor.dataSync())).toEqual([2]);
    expect(Array.from(b.tensor.dataSync())).toEqual([4, 6, 8]);
    expect(() => splitTensorPacket(b, 2)).toThrow('splitTensorPacket(pcm2): sizes 2 do not split axis 0 of length 3');

    const text = textPacket({ text: 'hi' });
    const out = await lastValueFrom(from<Packet[]>([a, text, b]).pipe(mapTensor((x) => tf.add(tf.square(x), 1)), toArray()));
    expect(out[1]).toBe(text);
    expect(Array.from((out[2] as typeof b).tensor.dataSync())).toEqual([17, 37, 65]);
    expect(a.tensor.isDisposed && b.tensor.isDisposed).toBe(true);
    disposePackets(out);
    expect(tf.memory().numTensors).toBe(start);
  });
});
