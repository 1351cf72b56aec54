import * as tf from '@tensorflow/tfjs-core';
import { controlPacket, defineNode, Gate, graph, ports, tensorPacket, type Packet, type TensorPacket } from '@omniflow/core';
import { lastValueFrom, merge, Observable, toArray, VirtualTimeScheduler } from 'rxjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';
import { BatchScheduler, batchedTensors, tensorBatchScheduler, tensorBatchStage } from './batching.js';
import { leakCheck } from './ownership.js';

beforeAll(async () => {
  await initBackend();
});

/** A session's packets arriving over time: tensor [2] = [sessionIndex, seq], then a turn-end. */
function session(name: string, index: number, n: number, gapMs: number): Observable<Packet> {
  return new Observable<Packet>((sub) => {
    let seq = 0;
    const tick = () => {
      if (seq < n) {
        sub.next(tensorPacket({ session: name, pts: seq * 20_000, name: 'x', tensor: tf.tensor1d([index, seq]) }));
        seq++;
        setTimeout(tick, gapMs);
      } else {
        sub.next(controlPacket({ session: name, pts: seq * 20_000, signal: 'turn-end' }));
        sub.complete();
      }
    };
    tick();
  });
}

describe('tensorBatchStage', () => {
  it('batches across sessions and keeps every session in order', async () => {
    const leaks = leakCheck();
    const sizes: number[] = [];
    const stage = tensorBatchStage({
      maxBatch: 4,
      maxWaitMs: 3,
      run: (x) => {
        sizes.push(x.shape[0]);
        return tf.add(tf.mul(x, 10), 1);
      },
    });
    const out = await lastValueFrom(merge(session('a', 0, 6, 1), session('b', 1, 6, 2), session('c', 2, 4, 0)).pipe(stage, toArray()));
    for (const [name, index, n] of [['a', 0, 6], ['b', 1, 6], ['c', 2, 4]] as const) {
      const mine = out.filter((p) => p.session === name);
      expect(mine.map((p) => p.kind)).toEqual([...Array(n).fill('tensor'), 'control']); // turn-end stays last
      const values = mine.filter((p): p is TensorPacket => p.kind === 'tensor').map((p) => Array.from((p.tensor as tf.Tensor).dataSync()));
      expect(values).toEqual(Array.from({ length: n }, (_, seq) => [index * 10 + 1, seq * 10 + 1]));
      expect(mine.filter((p) => p.kind === 'tensor').map((p) => p.pts)).toEqual(Array.from({ length: n }, (_, s) => s * 20_000));
      mine.forEach((p) => p.kind === 'tensor' && p.tensor.dispose());
    }
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(16);
    expect(Math.max(...sizes)).toBeGreaterThan(1); // it really batched
    expect(Math.max(...sizes)).toBeLessThanOrEqual(4);
    leaks.check('tensorBatchStage');
  });

  it('fails the stage with the batch named when shapes differ', async () => {
    const leaks = leakCheck();
    const p1 = tensorPacket({ session: 'a', name: 'x', tensor: tf.zeros([2]) });
    const p2 = tensorPacket({ session: 'b', name: 'x', tensor: tf.zeros([3]) });
    const src = new Observable<Packet>((s) => {
      s.next(p1);
      s.next(p2);
      s.complete();
    });
    await expect(lastValueFrom(src.pipe(tensorBatchStage({ maxBatch: 2, maxWaitMs: 1, name: 'proj', run: (x) => x })))).rejects.toThrow(
      "BatchScheduler 'proj': batch of 2 (sessions a, b) failed: tensors in one batch must share a shape: [2] vs [3]",
    );
    await new Promise((r) => setTimeout(r, 5));
    leaks.check('failed batch');
  });
});

describe('BatchScheduler', () => {
  it('waits at most maxWaitMs for a fuller batch (virtual time)', async () => {
    const clock = new VirtualTimeScheduler();
    const runs: Array<{ at: number; items: number[] }> = [];
    const sched = new BatchScheduler<number, number>({ maxBatch: 3, maxWaitMs: 10, scheduler: clock, run: (xs) => (runs.push({ at: clock.now(), items: xs }), xs) });
    const done = [sched.submit('a', 1), sched.submit('b', 2)];
    clock.flush(); // the 10 ms timer fires with two items waiting
    expect(runs).toEqual([{ at: 10, items: [1, 2] }]);
    expect(await Promise.all(done)).toEqual([1, 2]);
    const full = [sched.submit('a', 3), sched.submit('b', 4), sched.submit('c', 5)];
    expect(runs[1]).toEqual({ at: 10, items: [3, 4, 5] }); // a full batch does not wait
    await Promise.all(full);
  });

  it('serves interactive sessions before batch jobs and never reorders a session', async () => {
    let release!: () => void;
    const batches: string[][] = [];
    const sched = new BatchScheduler<string, string>({
      maxBatch: 3,
      maxWaitMs: 0,
      run: async (xs) => {
        batches.push(xs);
        if (batches.length === 1) await new Promise<void>((r) => (release = r));
        return xs.map((x) => x.toUpperCase());
      },
    });
    const results: string[] = [];
    const track = (p: Promise<string>) => p.then((v) => results.push(v));
    const first = track(sched.submit('job', 'j0', 'batch'));
    await new Promise((r) => setTimeout(r, 1)); // j0's batch is now running and blocked
    const rest = [
      track(sched.submit('job', 'j1', 'batch')),
      track(sched.submit('job', 'j2', 'batch')),
      track(sched.submit('job', 'j3', 'batch')),
      track(sched.submit('alice', 'a1')),
      track(sched.submit('alice', 'a2')),
      track(sched.submit('bob', 'b1')),
    ];
    release();
    await Promise.all([first, ...rest]);
    // Interactive sessions fill the next batch round-robin; the job's items follow in their own order.
    expect(batches).toEqual([['j0'], ['a1', 'b1', 'a2'], ['j1', 'j2', 'j3']]);
    expect(results.filter((r) => r.startsWith('J'))).toEqual(['J0', 'J1', 'J2', 'J3']);
    expect(results.filter((r) => r.startsWith('A'))).toEqual(['A1', 'A2']);
    expect(sched.stats).toEqual({ batches: 3, items: 7, largestBatch: 3, waitingForDemand: 0 });
  });

  it('runs only while downstream has room (core flow control demand)', async () => {
    const gate = new Gate();
    gate.close();
    const ran: number[][] = [];
    const sched = new BatchScheduler<number, number>({ maxBatch: 2, maxWaitMs: 0, demand: gate, run: (xs) => (ran.push(xs), xs) });
    const results = [sched.submit('a', 1), sched.submit('a', 2), sched.submit('a', 3)];
    await new Promise((r) => setTimeout(r, 5));
    expect(ran).toEqual([]);
    expect(sched.pending).toBe(3);
    gate.open();
    expect(await Promise.all(results)).toEqual([1, 2, 3]);
    expect(ran).toEqual([[1, 2], [3]]);
    expect(sched.stats.waitingForDemand).toBe(1);
    sched.close();
    await expect(sched.submit('a', 4)).rejects.toThrow('BatchScheduler is closed');
  });
});

describe('a batch scheduler shared by graph sessions', () => {
  it('batches two sessions of one graph and keeps each in order', async () => {
    const leaks = leakCheck();
    const shared = tensorBatchScheduler({ maxBatch: 2, maxWaitMs: 20, run: (x) => tf.mul(x, 3) });
    const step = defineNode({
      type: 'sharedStep',
      inputs: { x: ports.tensor() },
      outputs: { y: ports.tensor() },
      operator: (_params, ctx) => batchedTensors(shared, ctx),
    });
    const g = graph('shared').add('step', step).input('x', 'step.x').output('y', 'step.y');
    const runOne = async (id: string, base: number) => {
      const session = g.session({ id });
      const got: number[] = [];
      session.output('y').subscribe((p: Packet) => {
        const t = (p as TensorPacket).tensor as tf.Tensor;
        got.push(t.dataSync()[0]);
        t.dispose();
      });
      const input = session.input('x');
      const done = session.start();
      for (let i = 0; i < 4; i++) input.push(tensorPacket({ name: 'h', pts: i, tensor: tf.tensor1d([base + i]) }));
      input.complete();
      await done;
      return got;
    };
    const [a, b] = await Promise.all([runOne('alice', 10), runOne('bob', 20)]);
    expect(a).toEqual([30, 33, 36, 39]);
    expect(b).toEqual([60, 63, 66, 69]);
    expect(shared.stats.largestBatch).toBe(2); // alice's and bob's steps ran together
    expect(shared.stats.items).toBe(8);
    leaks.check('shared scheduler');
  });

  it('withdraws a waiting item when its turn is aborted', async () => {
    const ran: number[][] = [];
    const sched = new BatchScheduler<number, number>({ maxBatch: 4, maxWaitMs: 10, run: (xs) => (ran.push(xs), xs) });
    const turn = new AbortController();
    const stale = sched.submit('alice', 1, 'interactive', turn.signal);
    const kept = sched.submit('bob', 2);
    turn.abort();
    await expect(stale).rejects.toThrow('aborted while waiting');
    expect(await kept).toBe(2);
    expect(ran).toEqual([[2]]);
  });
});
