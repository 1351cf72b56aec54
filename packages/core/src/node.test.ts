import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { firstValueFrom, from, lastValueFrom, map, merge, Subject, throwError, toArray } from 'rxjs';
import { defineNode, NodeParamsError } from './node.js';
import { ports } from './ports.js';
import { audioPacket, tensorPacket, textPacket, type AudioPacket, type TextPacket } from './packets.js';
import { TensorTracker } from './testing/tracked-tensor.js';

const gain = defineNode({
  type: 'gain',
  inputs: { audio: ports.audio() },
  outputs: { audio: ports.audio() },
  params: z.object({ db: z.number().max(24).default(0) }),
  operator: ({ db }) => map((p: AudioPacket) => ({ ...p, samples: p.samples.map((s) => s * 10 ** (db / 20)) })),
});

const chunk = (values: number[], pts = 0) => audioPacket({ samples: new Float32Array(values), sampleRate: 16_000, channels: 1, pts });

describe('defineNode', () => {
  it('is a plain RxJS operator with no graph', async () => {
    const out = await lastValueFrom(from([chunk([0.5, -0.25])]).pipe(gain({ db: 20 * Math.log10(2) })));
    expect(Array.from(out.samples)).toEqual([1, -0.5].map((x) => expect.closeTo(x, 6)));
  });

  it('applies zod defaults and names node type and param path in errors', () => {
    expect(() => gain({ db: 30 })).toThrow(NodeParamsError);
    expect(() => gain({ db: 30 })).toThrow(/^gain: bad params: db: Too big: expected number to be <=24/);
    expect(() => gain({ db: 'loud' as unknown as number })).toThrow(/gain: bad params: db: Invalid input: expected number, received string/);
    expect(gain.parseParams({})).toEqual({ db: 0 });
  });

  it('gives sources an Observable and sinks a completion Observable', async () => {
    const count = defineNode({
      type: 'count',
      outputs: { text: ports.text() },
      params: z.object({ n: z.number().int() }),
      operator: ({ n }) => from(Array.from({ length: n }, (_, i) => textPacket({ text: String(i), pts: i }))),
    });
    const seen: string[] = [];
    const collect = defineNode({
      type: 'collect',
      inputs: { text: ports.text() },
      operator: () => (in$) => in$.pipe(map((p: TextPacket) => seen.push(p.text))),
    });
    await lastValueFrom(count({ n: 3 }).pipe(collect()), { defaultValue: undefined });
    expect(seen).toEqual(['0', '1', '2']);
  });

  it('takes and returns records of streams when it has several ports', async () => {
    const split = defineNode({
      type: 'split',
      inputs: { left: ports.text(), right: ports.text() },
      outputs: { both: ports.text(), count: ports.text() },
      operator: () => (inputs) => {
        const both = merge(inputs.left, inputs.right);
        return { both, count: both.pipe(toArray(), map((xs) => textPacket({ text: String(xs.length) }))) };
      },
    });
    const outs = split()({ left: from([textPacket({ text: 'a' })]), right: from([textPacket({ text: 'b' }), textPacket({ text: 'c' })]) });
    expect((await lastValueFrom(outs.both.pipe(toArray()))).map((p) => p.text)).toEqual(['a', 'b', 'c']);
    expect((await firstValueFrom(outs.count)).text).toBe('3');
  });

  it('opens before the first packet and closes once on complete, error and unsubscribe', async () => {
    const log: string[] = [];
    const withResource = defineNode({
      type: 'withResource',
      inputs: { text: ports.text() },
      outputs: { text: ports.text() },
      open: async () => {
        log.push('open');
        return { prefix: '>' };
      },
      operator: (_p, ctx, res) => {
        ctx.onDispose(() => log.push('dispose'));
        return map((p: TextPacket) => ({ ...p, text: res.prefix + p.text }));
      },
      close: (res) => {
        log.push(`close ${res.prefix}`);
      },
    });
    const out = await lastValueFrom(from([textPacket({ text: 'x' })]).pipe(withResource(), toArray()));
    expect(out.map((p) => p.text)).toEqual(['>x']);
    expect(log).toEqual(['open', 'dispose', 'close >']);

    log.length = 0;
    await expect(lastValueFrom(throwError(() => new Error('boom')).pipe(withResource()))).rejects.toThrow('boom');
    expect(log).toEqual(['open', 'dispose', 'close >']);

    log.length = 0;
    const input = new Subject<TextPacket>();
    const sub = input.pipe(withResource()).subscribe();
    await Promise.resolve();
    await Promise.resolve();
    sub.unsubscribe();
    expect(log).toEqual(['open', 'dispose', 'close >']);
  });

  it('derives an operator from a kernel, disposing the input tensor', async () => {
    const tracker = new TensorTracker();
    const double = defineNode({
      type: 'double',
      inputs: { x: ports.tensor() },
      outputs: { y: ports.tensor() },
      kernel: () => (x) => tracker.tensor([...x.shape, 2]),
    });
    const out = await lastValueFrom(from([tensorPacket({ name: 'x', tensor: tracker.tensor([3]) })]).pipe(double()));
    expect(out.tensor.shape).toEqual([3, 2]);
    expect(tracker.live).toBe(1); // only the output is alive
  });

  it('rejects a kernel on non-tensor ports', () => {
    expect(() => defineNode({ type: 'bad', inputs: { a: ports.audio() }, outputs: { b: ports.tensor() }, kernel: () => (x) => x })).toThrow(
      /needs exactly one tensor input port and one tensor output port/,
    );
  });
});
