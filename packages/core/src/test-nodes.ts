/**
 * Small nodes shared by the core tests (not exported from the package): generated packets, a slow sink
 * in virtual time, pass-through and tensor kernels.
 */
import { z } from 'zod';
import { from, map, timer } from 'rxjs';
import { defineNode } from './node.js';
import { ports } from './ports.js';
import { audioPacket, tensorPacket, textPacket, type AudioPacket, type Packet, type TensorPacket } from './packets.js';
import { fromAsyncIterable } from './sources.js';
import type { TensorTracker } from './testing/tracked-tensor.js';

export const textSource = defineNode({
  type: 'textSource',
  outputs: { text: ports.text() },
  params: z.object({ n: z.number().int().positive(), pausable: z.boolean().default(true), stepMicros: z.number().default(1000) }),
  operator: ({ n, pausable, stepMicros }) => {
    const items = Array.from({ length: n }, (_, i) => textPacket({ text: `t${i}`, pts: i * stepMicros }));
    return pausable ? fromAsyncIterable(items) : from(items);
  },
});

export const toneSource = defineNode({
  type: 'toneSource',
  outputs: { audio: ports.audio({ sampleRate: 16_000, channels: 1 }) },
  params: z.object({ chunks: z.number().int().positive(), chunkMs: z.number().positive().default(20) }),
  operator: ({ chunks, chunkMs }) =>
    fromAsyncIterable(
      (function* () {
        const n = (16_000 * chunkMs) / 1000;
        for (let c = 0; c < chunks; c++) {
          const samples = new Float32Array(n);
          for (let i = 0; i < n; i++) samples[i] = Math.sin((2 * Math.PI * 440 * (c * n + i)) / 16_000);
          yield audioPacket({ samples, sampleRate: 16_000, channels: 1, pts: c * chunkMs * 1000 });
        }
      })(),
    ),
});

export const passThrough = defineNode({
  type: 'passThrough',
  inputs: { in: ports.any() },
  outputs: { out: ports.any() },
  operator: () => (in$) => in$,
});

/** Takes `ms` of virtual time per packet (RxJS timer), holding its input meanwhile. */
export const slowSink = defineNode({
  type: 'slowSink',
  inputs: { in: ports.any() },
  params: z.object({ ms: z.number().positive() }),
  operator: ({ ms }, ctx) => (in$) => in$.pipe(ctx.mapAsync(() => timer(ms))),
});

/** Like slowSink but forwards what it got. */
export const slowStep = defineNode({
  type: 'slowStep',
  inputs: { in: ports.any() },
  outputs: { out: ports.any() },
  params: z.object({ ms: z.number().positive() }),
  operator: ({ ms }, ctx) => (in$) => in$.pipe(ctx.mapAsync((p: Packet) => timer(ms).pipe(map(() => p)))),
});

export const resampleTo24k = defineNode({
  type: 'resampleTo24k',
  inputs: { audio: ports.audio({ sampleRate: 16_000 }) },
  outputs: { audio: ports.audio({ sampleRate: 24_000 }) },
  operator: () => map((p: AudioPacket) => p),
});

export const speaker24k = defineNode({
  type: 'speaker24k',
  inputs: { audio: ports.audio({ sampleRate: 24_000 }) },
  operator: () => (in$) => in$,
});

/** Tensor source: one tracked tensor per packet. */
export function tensorSourceFor(tracker: TensorTracker) {
  return defineNode({
    type: 'tensorSource',
    outputs: { x: ports.tensor() },
    params: z.object({ n: z.number().int().positive() }),
    operator: ({ n }) => fromAsyncIterable((function* () {
      for (let i = 0; i < n; i++) yield tensorPacket({ name: 'x', tensor: tracker.tensor([1, i + 1]), pts: i * 10_000 });
    })()),
  });
}

/** Tensor kernel node: output tensor of the same shape plus one trailing dim; input disposed. */
export function scaleFor(tracker: TensorTracker, type = 'scale') {
  return defineNode({
    type,
    inputs: { x: ports.tensor() },
    outputs: { y: ports.tensor() },
    params: z.object({ factor: z.number().default(2) }),
    kernel: () => (x) => tracker.tensor([...x.shape]),
  });
}

export const isTensor = (p: Packet): p is TensorPacket => p.kind === 'tensor';
