/**
 * Core benchmarks.
 *
 * 1. Per-packet per-hop overhead of a pass-through graph in batch mode with `block` edges, next to a
 *    plain RxJS `map` chain measured in the same run. Per hop = (time with 10 pass-through nodes − time
 *    with none) / 10, so source and sink costs cancel out; both sides use `map((p) => p)` per node.
 *    Measured with the default latency sampling (one packet in 16 timed) and with every packet timed.
 * 2. RSS growth while a source that never pauses pushes 1,000,000 audio packets (1280 B each) into a
 *    sink 100x slower, under `latest` and `drop-oldest`; and under `block` with a pausable source
 *    (lossless: every packet, in order). RSS growth is peak RSS during the run minus RSS after a GC
 *    before it, measured after one short warm-up flood.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { map, Observable, range } from 'rxjs';
import { z } from 'zod';
import { audioPacket, defineNode, fromAsyncIterable, graph, ports, type AudioPacket, type OverflowPolicy, type Packet } from '@omniflow/core';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const HOP_PACKETS = 300_000;
const HOPS = 10;
const FLOOD_PACKETS = 1_000_000;

const one = audioPacket({ samples: new Float32Array(320), sampleRate: 16_000, channels: 1 });

const source = defineNode({
  type: 'benchSource',
  outputs: { out: ports.any() },
  params: z.object({ n: z.number().int() }),
  // The same packet object n times: the graph is measured, not allocation.
  operator: ({ n }) => fromAsyncIterable((function* () { for (let i = 0; i < n; i++) yield one as Packet; })()),
});
const pass = defineNode({ type: 'pass', inputs: { in: ports.any() }, outputs: { out: ports.any() }, operator: () => map((p: Packet) => p) });
let sunk = 0;
const countSink = defineNode({ type: 'countSink', inputs: { in: ports.any() }, operator: () => (in$) => new Observable<never>((s) => in$.subscribe({ next: () => void sunk++, complete: () => s.complete() })) });

async function graphMs(hops: number, latencySampleEvery: number): Promise<number> {
  let g = graph(`pass-${hops}`).add('src', source, { n: HOP_PACKETS }) as any;
  let prev = 'src.out';
  for (let i = 0; i < hops; i++) {
    g = g.add(`p${i}`, pass).connect(prev, `p${i}.in`, { policy: 'block' });
    prev = `p${i}.out`;
  }
  g = g.add('sink', countSink).connect(prev, 'sink.in', { policy: 'block' });
  sunk = 0;
  const t0 = performance.now();
  await g.run({ mode: 'batch', latencySampleEvery });
  const ms = performance.now() - t0;
  if (sunk !== HOP_PACKETS) throw new Error(`graph lost packets: ${sunk}/${HOP_PACKETS}`);
  return ms;
}

function rxjsMs(hops: number): number {
  let n = 0;
  let o: Observable<Packet> = range(0, HOP_PACKETS).pipe(map(() => one as Packet));
  for (let i = 0; i < hops; i++) o = o.pipe(map((p: Packet) => p));
  const t0 = performance.now();
  o.subscribe(() => n++);
  const ms = performance.now() - t0;
  if (n !== HOP_PACKETS) throw new Error('rxjs lost packets');
  return ms;
}

async function median(fn: () => number | Promise<number>, runs = 3): Promise<number> {
  await fn();
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) xs.push(await fn());
  xs.sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)];
}

async function perHop() {
  const ns = (ms: number) => +((ms * 1e6) / HOP_PACKETS / HOPS).toFixed(1);
  const rx10 = await median(() => rxjsMs(HOPS)), rx0 = await median(() => rxjsMs(0));
  const g10 = await median(() => graphMs(HOPS, 16)), g0 = await median(() => graphMs(0, 16));
  const f10 = await median(() => graphMs(HOPS, 1)), f0 = await median(() => graphMs(0, 1));
  return {
    packets: HOP_PACKETS,
    hops: HOPS,
    rxjsMapChainNsPerHop: ns(rx10 - rx0),
    graphNsPerHop: ns(g10 - g0),
    graphNsPerHopTimingEveryPacket: ns(f10 - f0),
    goalNsPerHop: 1000,
    raw: { rxjs10Ms: +rx10.toFixed(1), rxjs0Ms: +rx0.toFixed(1), graph10Ms: +g10.toFixed(1), graph0Ms: +g0.toFixed(1), graph10EveryPacketMs: +f10.toFixed(1), graph0EveryPacketMs: +f0.toFixed(1) },
  };
}

/** A chunk of fresh audio (1280 B of samples) per packet, as a microphone would make. */
const freshChunk = (i: number): AudioPacket => audioPacket({ samples: new Float32Array(320), sampleRate: 16_000, channels: 1, pts: i * 20_000 });

/** Never pauses: 100 fresh packets per event-loop turn until `n` are out. */
const floodSource = defineNode({
  type: 'floodSource',
  live: true,
  outputs: { audio: ports.audio() },
  params: z.object({ n: z.number().int() }),
  operator: ({ n }) =>
    new Observable<AudioPacket>((s) => {
      let i = 0;
      let stopped = false;
      const burst = () => {
        if (stopped) return;
        for (let k = 0; k < 100 && i < n; k++) s.next(freshChunk(i++));
        if (i < n) setImmediate(burst);
        else s.complete();
      };
      setImmediate(burst);
      return () => void (stopped = true);
    }),
});

/** Pausable: pulls a fresh packet only when the queue has room. */
const pausableSource = defineNode({
  type: 'pausableSource',
  outputs: { audio: ports.audio() },
  params: z.object({ n: z.number().int() }),
  operator: ({ n }) => fromAsyncIterable((function* () { for (let i = 0; i < n; i++) yield freshChunk(i); })()),
});

let received = 0;
let lastPts = -1;
let ordered = true;
let peakRss = 0;
/** One packet per event-loop turn: 100x slower than the flood's 100 per turn. */
const slowSink = defineNode({
  type: 'slowSink',
  inputs: { audio: ports.audio() },
  operator: (_p, ctx) => (in$) =>
    in$.pipe(
      ctx.mapAsync((p: AudioPacket) => {
        received++;
        if (p.pts <= lastPts) ordered = false;
        lastPts = p.pts;
        if ((received & 1023) === 0) peakRss = Math.max(peakRss, process.memoryUsage.rss());
        return new Promise<void>((r) => setImmediate(r));
      }),
    ),
});

async function flood(policy: OverflowPolicy, pausable: boolean, packets = FLOOD_PACKETS) {
  received = 0;
  lastPts = -1;
  ordered = true;
  gc();
  const base = process.memoryUsage.rss();
  peakRss = base;
  const g = graph(`flood-${policy}`)
    .add('src', pausable ? pausableSource : floodSource, { n: packets })
    .add('sink', slowSink)
    .connect('src.audio', 'sink.audio', { capacity: 64, policy });
  const t0 = performance.now();
  // Lossy policies only apply in real-time mode (batch makes every queue lossless); the never-pausing
  // source is `live`, so it is not paced. The pausable source runs in batch mode: as fast as the sink.
  const session = await g.run({ mode: pausable ? 'batch' : 'realtime' });
  const seconds = (performance.now() - t0) / 1000;
  peakRss = Math.max(peakRss, process.memoryUsage.rss());
  const edge = session.metrics().edges[0];
  gc();
  const retained = process.memoryUsage.rss() - base;
  return {
    policy,
    source: pausable ? 'pausable' : 'never pauses',
    mode: pausable ? 'batch' : 'realtime',
    sent: packets,
    received,
    dropped: edge.drops.overflow,
    receivedPlusDropped: received + edge.drops.overflow,
    inOrder: ordered,
    maxQueueDepth: edge.maxDepth,
    rssGrowthMB: +((peakRss - base) / 2 ** 20).toFixed(1),
    /** RSS after a GC at the end minus before: what the run kept, as opposed to garbage not yet collected. */
    rssRetainedMB: +(retained / 2 ** 20).toFixed(1),
    seconds: +seconds.toFixed(2),
  };
}

export async function run(): Promise<object> {
  const hop = await perHop();
  console.error('core bench: per-hop done', JSON.stringify(hop));
  // One short untimed flood first, so the heap's one-time growth under this allocation rate (new-space
  // sizing, JIT code) is not charged to the first policy measured.
  await flood('latest', false, 100_000);
  const memory = [];
  for (const [policy, pausable] of [['latest', false], ['drop-oldest', false], ['block', true]] as const) {
    memory.push(await flood(policy, pausable));
    console.error('core bench:', JSON.stringify(memory.at(-1)));
  }
  return { perHop: hop, memory, memoryGoalMB: 32 };
}
