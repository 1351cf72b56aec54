/**
 * `npm run demo`: a dataflow graph over generated audio, no model and no files needed.
 *
 *   tone (440 Hz sine + noise, 16 kHz) → gain (−6 dB) ─┬→ level (RMS per 100 ms) ─┬→ console
 *                                                      └→ pitch (zero crossings)  ─┘
 *
 * It prints the execution plan (text and Mermaid), runs the graph in batch mode (as fast as possible,
 * lossless), then once more in real-time mode with a barge-in interrupt half-way, and prints the metrics
 * report of each run. Copy it as a starting point for your own nodes.
 */
import { z } from 'zod';
import { bufferCount, filter, map, merge, Observable, tap } from 'rxjs';
import { audioPacket, defineNode, fromAsyncIterable, graph, ports, textPacket, type AudioPacket, type TextPacket } from '@omniflow/core';

const SAMPLE_RATE = 16_000;

/** Source: a sine tone plus white noise, generated chunk by chunk (pausable: pulled only when there is room). */
const tone = defineNode({
  type: 'tone',
  outputs: { audio: ports.audio({ sampleRate: SAMPLE_RATE, channels: 1 }) },
  params: z.object({
    frequency: z.number().positive().default(440),
    noise: z.number().min(0).max(1).default(0.05),
    seconds: z.number().positive().default(3),
    chunkMs: z.number().positive().default(20),
  }),
  operator: ({ frequency, noise, seconds, chunkMs }) =>
    fromAsyncIterable(
      (function* () {
        const n = Math.round((SAMPLE_RATE * chunkMs) / 1000);
        let seed = 12345;
        const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1; // deterministic noise
        for (let c = 0; c < Math.round((seconds * 1000) / chunkMs); c++) {
          const samples = new Float32Array(n);
          for (let i = 0; i < n; i++) samples[i] = 0.5 * Math.sin((2 * Math.PI * frequency * (c * n + i)) / SAMPLE_RATE) + noise * random();
          yield audioPacket({ samples, sampleRate: SAMPLE_RATE, channels: 1, pts: c * chunkMs * 1000 });
        }
      })(),
    ),
});

/** Scales samples by a gain in dB. */
const gain = defineNode({
  type: 'gain',
  inputs: { audio: ports.audio() },
  outputs: { audio: ports.audio() },
  params: z.object({ db: z.number().max(24).default(0) }),
  operator: ({ db }) => {
    const k = 10 ** (db / 20);
    return map((p: AudioPacket) => ({ ...p, samples: p.samples.map((s) => s * k) }));
  },
});

/** RMS level in dBFS over windows of `windowMs`. */
const level = defineNode({
  type: 'level',
  inputs: { audio: ports.audio() },
  outputs: { text: ports.text() },
  params: z.object({ windowMs: z.number().positive().default(100) }),
  operator: ({ windowMs }, ctx) => (audio$) =>
    audio$.pipe(
      bufferCount(Math.max(1, Math.round((windowMs * 1000) / 20_000))),
      map((chunks) => {
        let sum = 0, n = 0;
        for (const c of chunks)
          for (const s of c.samples) {
            sum += s * s;
            n++;
          }
        const db = 10 * Math.log10(sum / n + 1e-12);
        ctx.metrics.count('windows');
        const first = chunks[0];
        return textPacket({ text: `level ${db.toFixed(1)} dBFS`, session: first.session, turn: first.turn, pts: first.pts });
      }),
    ),
});

/** Pitch estimate from zero crossings, one per `windowMs`. */
const pitch = defineNode({
  type: 'pitch',
  inputs: { audio: ports.audio() },
  outputs: { text: ports.text() },
  params: z.object({ windowMs: z.number().positive().default(500) }),
  operator: ({ windowMs }) => (audio$) =>
    audio$.pipe(
      bufferCount(Math.max(1, Math.round((windowMs * 1000) / 20_000))),
      map((chunks) => {
        let crossings = 0, n = 0, prev = 0;
        for (const c of chunks)
          for (const s of c.samples) {
            // Hysteresis keeps noise around zero from counting as crossings.
            if ((prev <= 0 && s > 0.05) || (prev >= 0 && s < -0.05)) {
              crossings++;
              prev = s;
            }
            n++;
          }
        const hz = (crossings / 2) * (SAMPLE_RATE / n);
        const first = chunks[0];
        return textPacket({ text: `pitch ≈${hz.toFixed(0)} Hz`, session: first.session, turn: first.turn, pts: first.pts });
      }),
    ),
});

/** Sink: prints the first lines it receives of each kind and counts the rest. */
const consoleSink = defineNode({
  type: 'console',
  inputs: { level: ports.text(), pitch: ports.text() },
  params: z.object({ show: z.number().int().nonnegative().default(3) }),
  operator: ({ show }) => ({ level, pitch }) => {
    const shown = new Map<string, number>();
    const print = (p: TextPacket) => {
      const key = `${p.turn} ${p.text.split(' ')[0]}`;
      const n = (shown.get(key) ?? 0) + 1;
      shown.set(key, n);
      if (n <= show) console.log(`  [turn ${p.turn}] ${(p.pts / 1000).toFixed(0).padStart(5)} ms  ${p.text}`);
    };
    return merge(level, pitch).pipe(tap(print), filter(() => false)) as Observable<never>;
  },
});

const demo = graph('demo')
  .add('tone', tone, { frequency: 440, seconds: 3 })
  .add('gain', gain, { db: -6 })
  .add('level', level, { windowMs: 100 })
  .add('pitch', pitch, { windowMs: 500 })
  .add('console', consoleSink, { show: 3 })
  .connect('tone.audio', 'gain.audio', { capacity: '200ms', policy: 'block' })
  .connect('gain.audio', 'level.audio', { capacity: '200ms', policy: 'drop-oldest' })
  .connect('gain.audio', 'pitch.audio', { capacity: '200ms', policy: 'drop-oldest' })
  .connect('level.text', 'console.level', { capacity: 8, policy: 'latest' })
  .connect('pitch.text', 'console.pitch', { capacity: 8 });

console.log('== plan (batch) ==');
console.log(demo.plan({ mode: 'batch' }).text());
console.log('\n== plan as Mermaid ==');
console.log(demo.plan({ mode: 'realtime' }).mermaid());

console.log('\n== batch run: 3 s of audio as fast as possible ==');
const batch = await demo.run({ mode: 'batch', latencySampleEvery: 1 });
console.log(batch.report());

console.log('\n== real-time run: 1 s of audio paced by its timestamps, barge-in at 500 ms ==');
const realtime = graph('demo-realtime')
  .add('tone', tone, { frequency: 440, seconds: 1 })
  .add('gain', gain, { db: -6 })
  .add('level', level, { windowMs: 100 })
  .add('pitch', pitch, { windowMs: 200 })
  .add('console', consoleSink, { show: 2 })
  .connect('tone.audio', 'gain.audio', { capacity: '200ms' })
  .connect('gain.audio', 'level.audio', { capacity: '200ms', policy: 'drop-oldest' })
  .connect('gain.audio', 'pitch.audio', { capacity: '200ms', policy: 'drop-oldest' })
  .connect('level.text', 'console.level', { capacity: 8, policy: 'latest' })
  .connect('pitch.text', 'console.pitch', { capacity: 8 })
  .session({ mode: 'realtime', id: 'live-1', latencySampleEvery: 1 });
const timer = setTimeout(() => realtime.interrupt('user started talking'), 500);
await realtime.start();
clearTimeout(timer);
console.log(realtime.report());
