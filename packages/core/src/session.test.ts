import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { asyncScheduler, from, map, NEVER, timer } from 'rxjs';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { defineNode } from './node.js';
import { graph } from './graph.js';
import { ports } from './ports.js';
import { disposePacket, tensorPacket, textPacket, type Packet, type TensorPacket } from './packets.js';
import { runGraphVirtual, type Scripted } from './testing/virtual-time.js';
import { TensorTracker } from './testing/tracked-tensor.js';
import { passThrough, slowStep, textSource } from './test-nodes.js';

describe('turns and interruption (virtual time)', () => {
  /** Work that takes 10 ms per packet and records which turns' signals it saw aborted. */
  const aborted: number[] = [];
  const step = defineNode({
    type: 'step',
    inputs: { in: ports.any() },
    outputs: { out: ports.any() },
    params: z.object({ ms: z.number() }),
    operator: ({ ms }, ctx) => (in$) =>
      in$.pipe(
        ctx.mapAsync((p: Packet, signal) => {
          signal.addEventListener('abort', () => aborted.push(p.turn));
          return timer(ms).pipe(map(() => p));
        }),
      ),
  });

  it('fences the old turn: nothing stale arrives after interrupt() and every stale tensor is released', () => {
    aborted.length = 0;
    const tracker = new TensorTracker();
    const g = graph('barge-in').add('work', step, { ms: 10 }).add('tail', passThrough).connect('work.out', 'tail.in', { capacity: 2 }).input('in', 'work.in').output('out', 'tail.out');
    // A tensor every 5 ms from 0 to 95 ms; the worker needs 10 ms each, so a backlog builds up.
    const inputs: Scripted[] = Array.from({ length: 20 }, (_, i) => [i * 5_000, tensorPacket({ name: 'x', tensor: tracker.tensor([i]), pts: i * 5_000 })] as const);
    // One packet of turn 0 that must survive the interrupt (e.g. an accounting marker).
    inputs.push([31_000, textPacket({ text: 'keep me', pts: 31_000, uninterruptible: true })]);
    inputs.push([200_000, 'complete']);
    const r = runGraphVirtual(g, { inputs: { in: inputs }, interrupts: [32_000], mode: 'realtime' });

    const arrivals = r.outputs.out.map((a) => ({ at: a.at, turn: a.packet.turn, what: a.packet.kind === 'tensor' ? a.packet.tensor.shape[0] : (a.packet as { text: string }).text }));
    // Before the interrupt: the first packets of turn 0, at the worker's pace.
    expect(arrivals.filter((a) => a.at <= 32_000)).toEqual([
      { at: 10_000, turn: 0, what: 0 },
      { at: 20_000, turn: 0, what: 1 },
      { at: 30_000, turn: 0, what: 2 },
    ]);
    // After it: no packet of turn 0 except the uninterruptible one.
    const after = arrivals.filter((a) => a.at > 32_000);
    expect(after.filter((a) => a.turn === 0)).toEqual([{ at: 42_000, turn: 0, what: 'keep me' }]);
    expect(after.filter((a) => a.turn === 1).map((a) => a.what)).toEqual([7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    // The in-flight call of turn 0 saw its signal abort.
    expect(aborted).toEqual([0]);
    // Every tensor of turn 0 that was not delivered has been disposed; delivered ones are ours to dispose.
    const delivered = r.outputs.out.filter((a) => a.packet.kind === 'tensor').length;
    expect(tracker.live).toBe(delivered);
    for (const a of r.outputs.out) disposePacket(a.packet);
    expect(tracker.live).toBe(0);
    const interrupt = r.events.find((e) => e.type === 'interrupt');
    expect(interrupt).toMatchObject({ type: 'interrupt', at: 32_000, turn: 1 });
    expect(r.session.metrics().edges.find((e) => e.id === 'input:in.out->work.in')!.drops.fenced).toBe((interrupt as { fenced: number }).fenced);
    expect((interrupt as { fenced: number }).fenced).toBe(3); // inputs 4, 5, 6 were waiting (3 was in flight)
  });

  it('aborts a call over a node-built value (not a packet) when its turn is interrupted', () => {
    // A node that gathers a turn into its own object and answers it asynchronously, as speech nodes do.
    const signals: AbortSignal[] = [];
    const answer = defineNode({
      type: 'answer',
      inputs: { in: ports.any() },
      outputs: { out: ports.any() },
      operator: (_p, ctx) => (in$) =>
        in$.pipe(
          map((p: Packet) => ({ question: p.kind === 'text' ? p.text : '', turn: p.turn })),
          ctx.mapAsync((job, signal) => {
            signals.push(signal);
            return timer(50_000).pipe(map(() => textPacket({ text: `answer to ${job.question}`, turn: job.turn })));
          }),
        ),
    });
    const g = graph('own-object').add('answer', answer).input('in', 'answer.in').output('out', 'answer.out');
    const r = runGraphVirtual(g, { mode: 'realtime', inputs: { in: [[0, textPacket({ text: 'q' })], [100_000, 'complete']] }, interrupts: [10_000] });
    expect(signals).toHaveLength(1);
    expect(signals[0].aborted).toBe(true);
    expect(r.outputs.out).toEqual([]);
  });

  it('records time to first output per kind and per turn', () => {
    const g = graph('ttfo').add('work', slowStep, { ms: 7 }).input('in', 'work.in').output('out', 'work.out');
    const r = runGraphVirtual(g, {
      mode: 'realtime',
      inputs: { in: [[0, textPacket({ text: 'a' })], [50_000, textPacket({ text: 'b' })], [80_000, 'complete']] },
      interrupts: [40_000],
    });
    expect(r.session.metrics().turns).toEqual([
      { turn: 0, startedAt: 0, timeToFirstOutput: { text: 7_000 }, endedBy: 'interrupt' },
      { turn: 1, startedAt: 40_000, timeToFirstOutput: { text: 17_000 }, endedBy: 'end' },
    ]);
    expect(r.events.filter((e) => e.type === 'first-output').map((e) => (e as { latency: number }).latency)).toEqual([7_000, 17_000]);
  });
});

describe('observability', () => {
  it('counts packets per node and edge and prints a report', async () => {
    const g = graph('counts').add('src', textSource, { n: 10 }).add('a', passThrough).add('b', slowStep, { ms: 1 }).connect('src.text', 'a.in').connect('a.out', 'b.in', { capacity: 3 }).output('out', 'b.out');
    const r = runGraphVirtual(g, { latencySampleEvery: 1 });
    const m = r.session.metrics();
    expect(m.nodes.map((n) => [n.id, n.packetsIn, n.packetsOut])).toEqual([
      ['src', 0, 10],
      ['a', 10, 10],
      ['b', 10, 10],
      ['output:out', 10, 0],
    ]);
    expect(m.edges.find((e) => e.id === 'a.out->b.in')).toMatchObject({ packetsIn: 10, packetsOut: 10, depth: 0, maxDepth: 3, capacity: '3', policy: 'block' });
    expect(m.nodes[1].latency.count).toBe(10);
    const report = r.session.report();
    expect(report).toContain('session default (batch)');
    expect(report).toMatch(/a\.out->b\.in\s+3 block\s+10\s+10\s+0\s+3\s+0/);
  });

  it('streams events: lifecycle, drops, turns and first outputs', () => {
    const g = graph('events').add('src', textSource, { n: 3 }).add('a', passThrough).connect('src.text', 'a.in', { capacity: 1, policy: 'drop-newest' }).output('out', 'a.out');
    const r = runGraphVirtual(g, { mode: 'batch' });
    const lagging = graph('lagging').add('src', textSource, { n: 10 }).add('slow', slowStep, { ms: 10 }).connect('src.text', 'slow.in', { capacity: 1, policy: 'drop-newest' }).output('out', 'slow.out');
    const lag = runGraphVirtual(lagging, { mode: 'realtime' });
    const drops = lag.events.filter((e) => e.type === 'drop');
    expect(drops.length).toBe(lag.session.metrics().edges.find((e) => e.id === 'src.text->slow.in')!.drops.overflow);
    expect(drops.length).toBe(10 - lag.outputs.out.length);
    expect(drops[0]).toMatchObject({ type: 'drop', at: 2_000, edge: 'src.text->slow.in', reason: 'overflow', kind: 'text', turn: 0 });
    expect(r.events.map((e) => (e.type === 'node-open' || e.type === 'node-close' ? `${e.type} ${e.node}` : e.type))).toEqual([
      'session-start',
      'turn-start',
      'node-open output:out',
      'node-open a',
      'node-open src',
      'first-output',
      // Completion runs downstream first: each node closes once its outputs' consumers took the end.
      'node-close output:out',
      'node-close a',
      'node-close src',
      'session-end',
    ]);
  });

  it('exports OpenTelemetry spans for the session, its turns and its nodes', async () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const g = graph('traced').add('a', passThrough).input('in', 'a.in').output('out', 'a.out');
    const session = g.session({ tracer: provider.getTracer('omniflow'), id: 'call-7' });
    session.output('out').subscribe();
    const done = session.start();
    session.input('in').push(textPacket({ text: 'a' }));
    session.interrupt('barge-in');
    session.input('in').push(textPacket({ text: 'b' }));
    session.input('in').complete();
    await done;
    const spans = exporter.getFinishedSpans();
    const byName = (n: string) => spans.filter((s) => s.name === n);
    expect(byName('omniflow.session')).toHaveLength(1);
    const root = byName('omniflow.session')[0];
    expect(root.attributes).toMatchObject({ 'omniflow.session': 'call-7', 'omniflow.graph': 'traced', 'omniflow.turns': 2 });
    expect(root.events.map((e) => [e.name, e.attributes?.['omniflow.reason']])).toEqual([['interrupt', 'barge-in']]);
    expect(byName('omniflow.turn').map((s) => s.attributes['omniflow.turn.ended_by'])).toEqual(['interrupt', 'end']);
    expect(byName('omniflow.node').map((s) => s.attributes['omniflow.node']).sort()).toEqual(['a', 'input:in', 'output:out']);
    const parentId = (s: (typeof spans)[number]) => (s as unknown as { parentSpanContext?: { spanId: string } }).parentSpanContext?.spanId;
    for (const s of [...byName('omniflow.turn'), ...byName('omniflow.node')]) expect(parentId(s)).toBe(root.spanContext().spanId);
    expect(byName('omniflow.node').find((s) => s.attributes['omniflow.node'] === 'a')!.attributes['omniflow.packets_out']).toBe(2);
  });
});

describe('tensor ownership across fan-out', () => {
  it('does not dispose a fanned-out tensor when one branch drops it while another still holds it', () => {
    const tracker = new TensorTracker();
    const src = defineNode({
      type: 'threeTensors',
      live: true,
      outputs: { x: ports.tensor() },
      operator: () => from([0, 1, 2].map((i) => tensorPacket({ name: 'x', tensor: tracker.tensor([i]) }))),
    });
    const holdForever = defineNode({ type: 'holdForever', inputs: { in: ports.any() }, operator: (_p, ctx) => (in$) => in$.pipe(ctx.mapAsync(() => NEVER)) });
    const g = graph('fan')
      .add('src', src)
      .add('keep', passThrough)
      .add('busy', holdForever)
      .connect('src.x', 'keep.in')
      .connect('src.x', 'busy.in', { capacity: 1, policy: 'drop-newest' })
      .output('out', 'keep.out');
    let liveWhileRunning = -1;
    const r = runGraphVirtual(g, { mode: 'realtime', until: 10_000, setup: () => asyncScheduler.schedule(() => (liveWhileRunning = tracker.live), 5) });
    expect(r.outputs.out).toHaveLength(3);
    expect(r.session.metrics().edges.find((e) => e.id === 'src.x->busy.in')!.drops.overflow).toBe(1);
    // Tensor 2 was dropped by the busy branch but is still owned by the output: all three alive.
    expect(liveWhileRunning).toBe(3);
    // Stopping the busy branch released its share of tensor 0 without disposing what the output holds.
    expect(r.outputs.out.map((a) => (a.packet as TensorPacket).tensor.isDisposed)).toEqual([false, false, false]);
    for (const a of r.outputs.out) disposePacket(a.packet);
    expect(tracker.live).toBe(0);
  });
});
