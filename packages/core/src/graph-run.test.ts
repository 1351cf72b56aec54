import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { delay, map, merge, takeWhile, timer } from 'rxjs';
import { defineNode } from './node.js';
import { graph } from './graph.js';
import { ports } from './ports.js';
import { tokensPacket, type TextPacket, type TokensPacket } from './packets.js';
import { runGraphVirtual } from './testing/virtual-time.js';
import { passThrough, textSource } from './test-nodes.js';

describe('running graphs', () => {
  it('runs a loop closed by a declared back-edge until the loop node completes itself', () => {
    // Like the talker: each step feeds its result back as the next step's input.
    const step = defineNode({
      type: 'step',
      inputs: { start: ports.tokens(), previous: ports.tokens() },
      outputs: { next: ports.tokens() },
      params: z.object({ last: z.number().int() }),
      operator: ({ last }) => ({ start, previous }) =>
        merge(start, previous).pipe(
          map((p: TokensPacket) => tokensPacket({ ...p, ids: Int32Array.of(p.ids[0] + 1), pts: p.pts + 1000 })),
          takeWhile((p) => p.ids[0] < last, true),
        ),
    });
    const slowCopy = defineNode({
      type: 'slowCopy',
      inputs: { in: ports.tokens() },
      outputs: { out: ports.tokens(), feedback: ports.tokens() },
      operator: () => (in$) => {
        const later$ = in$.pipe(delay(5));
        return { out: later$, feedback: later$ };
      },
    });
    const seed = defineNode({ type: 'seed', outputs: { tokens: ports.tokens() }, operator: () => timer(0).pipe(map(() => tokensPacket({ ids: Int32Array.of(0) }))) });
    const g = graph('loop')
      .add('seed', seed)
      .add('step', step, { last: 5 })
      .add('copy', slowCopy)
      .connect('seed.tokens', 'step.start')
      .connect('step.next', 'copy.in')
      .connect('copy.feedback', 'step.previous', { backEdge: true })
      .output('out', 'copy.out');
    const r = runGraphVirtual(g);
    expect(r.error).toBeUndefined();
    expect(r.outputs.out.map((a) => [a.at, a.packet.kind === 'tokens' ? a.packet.ids[0] : -1])).toEqual([
      [5_000, 1],
      [10_000, 2],
      [15_000, 3],
      [20_000, 4],
      [25_000, 5],
    ]);
    expect(r.endedAt).toBe(25_000);
  });

  it('runs subgraphs inlined, with their nodes named by path', () => {
    const shout = defineNode({ type: 'shout', inputs: { text: ports.text() }, outputs: { text: ports.text() }, operator: () => map((p: TextPacket) => ({ ...p, text: `${p.text}!` })) });
    const inner = graph('twice').add('a', shout).add('b', shout).connect('a.text', 'b.text').input('in', 'a.text').output('out', 'b.text');
    const g = graph('outer').add('src', textSource, { n: 2 }).add('x2', inner).add('tail', passThrough).connect('src.text', 'x2.in').connect('x2.out', 'tail.in').output('out', 'tail.out');
    expect(g.plan().stages.map((s) => s.id)).toEqual(['src', 'x2/a', 'x2/b', 'tail']);
    const r = runGraphVirtual(g);
    expect(r.outputs.out.map((a) => (a.packet as TextPacket).text)).toEqual(['t0!!', 't1!!']);
  });

  it('waits for an async open before delivering, pausing the source meanwhile', async () => {
    const log: string[] = [];
    const slowToOpen = defineNode({
      type: 'slowToOpen',
      inputs: { text: ports.text() },
      outputs: { text: ports.text() },
      open: async () => {
        await new Promise((r) => setTimeout(r, 20));
        log.push('opened');
        return 'ready';
      },
      operator: (_p, _ctx, state) => map((p: TextPacket) => {
        log.push(`${state}:${p.text}`);
        return p;
      }),
      close: () => void log.push('closed'),
    });
    const g = graph('async-open').add('src', textSource, { n: 40 }).add('n', slowToOpen).connect('src.text', 'n.text', { capacity: 4 }).output('out', 'n.text');
    const session = g.session();
    const texts: string[] = [];
    session.output('out').subscribe((p) => texts.push((p as TextPacket).text));
    await session.start();
    expect(log[0]).toBe('opened');
    expect(log.at(-1)).toBe('closed');
    expect(texts).toHaveLength(40);
    expect(session.metrics().edges.find((e) => e.id === 'src.text->n.text')!.maxDepth).toBe(4);
  });

  it('feeds exported inputs from a pausable Observable', async () => {
    const g = graph('fed').add('p', passThrough).input('in', 'p.in').output('out', 'p.out');
    const session = g.session();
    const got: string[] = [];
    session.output('out').subscribe((p) => got.push((p as TextPacket).text));
    const done = session.start();
    session.feed('in', textSource({ n: 3 }));
    await done;
    expect(got).toEqual(['t0', 't1', 't2']);
    expect(() => session.input('nope')).toThrow("session default: graph 'fed' has no input 'nope' (inputs: in)");
  });
});
