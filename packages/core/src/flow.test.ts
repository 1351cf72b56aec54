import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { interval, map, merge, take, timer } from 'rxjs';
import { defineNode } from './node.js';
import { graph } from './graph.js';
import { ports } from './ports.js';
import { textPacket, type Packet, type TextPacket } from './packets.js';
import { fromReadable } from './sources.js';
import { runGraphVirtual } from './testing/virtual-time.js';
import { passThrough, slowStep, textSource } from './test-nodes.js';
import type { OverflowPolicy } from './queue.js';
import { NodeFailedError } from './session.js';

/** A live source that never pauses: one packet per virtual millisecond. */
const ticker = defineNode({
  type: 'ticker',
  live: true,
  outputs: { text: ports.text() },
  params: z.object({ n: z.number().int().positive() }),
  operator: ({ n }, ctx) => interval(1, ctx.scheduler).pipe(take(n), map((i) => textPacket({ text: `t${i}`, pts: i * 1000 }))),
});

const N = 200;
const index = (p: Packet) => Number((p as TextPacket).text.slice(1));

/** A fast source into a consumer 10x slower, through one queue of 4 packets with `policy`. */
function fastIntoSlow(policy: OverflowPolicy, mode: 'realtime' | 'batch' = 'realtime') {
  const g = graph(`fast-${policy}`)
    .add('src', ticker, { n: N })
    .add('slow', slowStep, { ms: 10 })
    .connect('src.text', 'slow.in', { capacity: 4, policy })
    .output('out', 'slow.out');
  const r = runGraphVirtual(g, { mode });
  const edge = r.session.metrics().edges.find((e) => e.id === 'src.text->slow.in')!;
  return { r, edge, got: r.outputs.out.map((a) => index(a.packet)) };
}

describe('flow control: a fast source into a 10x slower consumer', () => {
  it('block with a pausable source: every packet, in order, queue never above capacity', () => {
    const g = graph('pausable')
      .add('src', textSource, { n: N, pausable: true })
      .add('slow', slowStep, { ms: 10 })
      .connect('src.text', 'slow.in', { capacity: 4, policy: 'block' })
      .output('out', 'slow.out');
    const r = runGraphVirtual(g, { mode: 'batch' });
    expect(r.outputs.out.map((a) => index(a.packet))).toEqual(Array.from({ length: N }, (_, i) => i));
    const edge = r.session.metrics().edges.find((e) => e.id === 'src.text->slow.in')!;
    expect(edge.maxDepth).toBe(4);
    expect(edge.drops).toEqual({ overflow: 0, fenced: 0, late: 0, stopped: 0 });
    expect(r.endedAt).toBe(N * 10_000); // the consumer's pace: 10 ms per packet
  });

  it('block with a source that cannot pause is still lossless and ordered (the queue overshoots)', () => {
    const { got, edge } = fastIntoSlow('block');
    expect(got).toEqual(Array.from({ length: N }, (_, i) => i));
    expect(edge.maxDepth).toBeGreaterThan(4);
  });

  it('drop-oldest keeps the newest packets; delivered + dropped = sent', () => {
    const { got, edge } = fastIntoSlow('drop-oldest');
    expect(got.length + edge.drops.overflow).toBe(N);
    expect(edge.drops.overflow).toBeGreaterThan(N / 2);
    expect(got).toEqual([...got].sort((a, b) => a - b));
    expect(got.at(-1)).toBe(N - 1);
    expect(edge.maxDepth).toBe(4);
  });

  it('drop-newest keeps the oldest packets; delivered + dropped = sent', () => {
    const { got, edge } = fastIntoSlow('drop-newest');
    expect(got.length + edge.drops.overflow).toBe(N);
    expect(got.slice(0, 5)).toEqual([0, 1, 2, 3, 4]);
    expect(got.at(-1)).toBeLessThan(N - 1);
    expect(edge.maxDepth).toBe(4);
  });

  it('latest holds one packet: the most recent', () => {
    const { got, edge } = fastIntoSlow('latest');
    expect(got.length + edge.drops.overflow).toBe(N);
    expect(edge.maxDepth).toBe(1);
    expect(got.slice(0, 3)).toEqual([0, 10, 20]); // one every 10 ms: whatever is newest when the consumer is free
    expect(got.at(-1)).toBe(N - 1);
  });

  it('error fails the session naming the edge', () => {
    const { r } = fastIntoSlow('error');
    expect(r.error).toBeInstanceOf(NodeFailedError);
    expect(String((r.error as Error).message)).toBe("node 'src' (ticker) failed: edge src.text->slow.in: queue full (capacity 4, policy 'error')");
  });

  it('batch mode makes every policy lossless', () => {
    const { got, edge } = fastIntoSlow('drop-oldest', 'batch');
    expect(got).toEqual(Array.from({ length: N }, (_, i) => i));
    expect(edge.policy).toBe('block');
  });

  it('real-time mode paces a non-live source by pts', () => {
    const g = graph('paced').add('src', textSource, { n: 5, stepMicros: 40_000 }).add('p', passThrough).connect('src.text', 'p.in').output('out', 'p.out');
    const r = runGraphVirtual(g, { mode: 'realtime' });
    expect(r.outputs.out.map((a) => a.at)).toEqual([0, 40_000, 80_000, 120_000, 160_000]);
    const batch = runGraphVirtual(g, { mode: 'batch' });
    expect(batch.outputs.out.map((a) => a.at)).toEqual([0, 0, 0, 0, 0]);
  });

  it('drops packets older than the edge latency budget in real time', () => {
    const g = graph('budget')
      .add('src', ticker, { n: 50 })
      .add('slow', slowStep, { ms: 5 })
      .connect('src.text', 'slow.in', { capacity: 100, policy: 'block', budget: '12ms' })
      .output('out', 'slow.out');
    const r = runGraphVirtual(g, { mode: 'realtime' });
    const edge = r.session.metrics().edges.find((e) => e.id === 'src.text->slow.in')!;
    expect(edge.drops.late).toBeGreaterThan(0);
    expect(r.outputs.out.length + edge.drops.late).toBe(50);
    for (const a of r.outputs.out) expect(a.at - 5_000 - a.packet.pts).toBeLessThanOrEqual(12_000);
  });
});

describe('pausable sources', () => {
  it('pauses a Node Readable while the queue is full', async () => {
    let produced = 0;
    const total = 60;
    const stream = new Readable({
      objectMode: true,
      highWaterMark: 2,
      read() {
        this.push(produced < total ? textPacket({ text: `r${produced++}` }) : null);
      },
    });
    const readableSource = defineNode({ type: 'readableSource', outputs: { text: ports.text() }, operator: () => fromReadable<TextPacket>(stream) });
    let maxAhead = 0;
    let consumed = 0;
    const slowReal = defineNode({
      type: 'slowReal',
      inputs: { text: ports.text() },
      operator: (_p, ctx) => (in$) =>
        in$.pipe(
          ctx.mapAsync(() => {
            consumed++;
            maxAhead = Math.max(maxAhead, produced - consumed);
            return timer(1);
          }),
        ),
    });
    const g = graph('readable').add('src', readableSource).add('sink', slowReal).connect('src.text', 'sink.text', { capacity: 4 });
    const session = await g.run();
    expect(consumed).toBe(total);
    // queue (4) + the stream's own buffer (2) + the chunk being handed over, never the whole stream
    expect(maxAhead).toBeLessThanOrEqual(8);
    expect(session.metrics().edges[0].maxDepth).toBeLessThanOrEqual(5);
  });
});

describe('fan-out and fan-in', () => {
  const merge2 = defineNode({
    type: 'merge2',
    inputs: { a: ports.text(), b: ports.text() },
    outputs: { out: ports.text() },
    operator: () => ({ a, b }) => merge(a, b),
  });
  const upper = defineNode({ type: 'upper', inputs: { text: ports.text() }, outputs: { text: ports.text() }, operator: () => map((p: TextPacket) => ({ ...p, text: p.text.toUpperCase() })) });
  const failing = defineNode({
    type: 'failing',
    inputs: { text: ports.text() },
    outputs: { text: ports.text() },
    params: z.object({ at: z.number() }),
    operator: ({ at }) =>
      map((p: TextPacket) => {
        if (p.text === `t${at}`) throw new Error(`cannot handle ${p.text}`);
        return p;
      }),
  });

  it('delivers every packet to every branch and completes after all branches complete', async () => {
    const g = graph('diamond')
      .add('src', textSource, { n: 5 })
      .add('up', upper)
      .add('same', passThrough)
      .add('join', merge2)
      .connect('src.text', 'up.text')
      .connect('src.text', 'same.in')
      .connect('up.text', 'join.a')
      .connect('same.out', 'join.b')
      .output('out', 'join.out');
    const r = runGraphVirtual(g);
    expect(r.outputs.out.map((a) => (a.packet as TextPacket).text).sort()).toEqual(['T0', 'T1', 'T2', 'T3', 'T4', 't0', 't1', 't2', 't3', 't4']);
    expect(r.endedAt).toBeDefined();
    expect(r.error).toBeUndefined();
  });

  it('fails the whole graph when one branch errors, closing every node', async () => {
    const closed: string[] = [];
    const tracked = (type: string) =>
      defineNode({ type, inputs: { in: ports.any() }, outputs: { out: ports.any() }, operator: (_p, ctx) => { ctx.onDispose(() => closed.push(type)); return (in$) => in$; } });
    const g = graph('failing')
      .add('src', textSource, { n: 5 })
      .add('bad', failing, { at: 2 })
      .add('ok', tracked('okBranch'))
      .add('after', tracked('afterBad'))
      .add('sinkA', slowStep, { ms: 1 })
      .add('sinkB', slowStep, { ms: 1 })
      .connect('src.text', 'bad.text')
      .connect('src.text', 'ok.in')
      .connect('bad.text', 'after.in')
      .connect('after.out', 'sinkA.in')
      .connect('ok.out', 'sinkB.in');
    const session = g.session();
    await expect(session.start()).rejects.toThrow("node 'bad' (failing) failed: cannot handle t2");
    expect(closed.sort()).toEqual(['afterBad', 'okBranch']);
  });
});
