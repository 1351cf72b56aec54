import { DURATIONS, NOISE_COLOURS, PITCHES, sceneCaption, type DurationWords, type SceneEvent, type SceneSegment } from './captions.js';

/*
 * Deterministic audio scenes for training and evaluating captioners: one to four events (tones at named pitches,
 * chirps, coloured noise, click and beep trains, silence) in sequence, sometimes one over another, with varied
 * durations and levels over light background noise. Scene `index` of `seed` is a pure function of the two numbers,
 * so a data set is (seed, first index, count) and needs no storage; a training run resumes at an index.
 */

export const SCENE_SAMPLE_RATE = 16_000;

/** Seconds each duration phrase stands for, as [min, max]; the gaps between them keep the words unambiguous. */
const DURATION_RANGES: Record<DurationWords, readonly [number, number]> = {
  'half a second': [0.4, 0.6],
  'one second': [0.85, 1.15],
  'two seconds': [1.7, 2.3],
};

const PITCH_HZ: Record<(typeof PITCHES)[number], number> = { A3: 220, A4: 440, A5: 880 };
const BEEP_HZ = { low: 600, high: 1800 } as const;

/** Longest scene the generator makes (seconds); longer draws are redrawn. */
export const MAX_SCENE_SECONDS = 7;

/** Where one event sits in the scene. */
export interface PlacedEvent {
  readonly event: SceneEvent;
  readonly start: number;
  readonly end: number;
}

/** A generated scene: 16 kHz mono samples and the caption that describes them. */
export interface Scene {
  readonly seed: number;
  readonly index: number;
  readonly pcm: Float32Array;
  readonly sampleRate: number;
  readonly caption: string;
  readonly segments: readonly SceneSegment[];
  /** Every event with its start and end in seconds, in caption order. */
  readonly events: readonly PlacedEvent[];
}

/**
 * A small seedable generator (mulberry32 over a splitmix-style mixed seed): the same (seed, stream) always gives the
 * same numbers, on every platform.
 *
 * ```ts
 * const rng = new SceneRandom(7, 0);
 * rng.next(); // a number in [0, 1), the same every time
 * ```
 */
export class SceneRandom {
  private state: number;

  constructor(seed: number, stream: number) {
    let h = Math.imul((seed | 0) ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((stream | 0) + 0x632be5ab, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
    h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
    this.state = (h ^ (h >>> 16)) >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  int(lo: number, hiInclusive: number): number {
    return lo + Math.floor(this.next() * (hiInclusive - lo + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }

  /** Standard normal (Box–Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
}

/**
 * Scene `index` of the data set `seed`.
 *
 * ```ts
 * const s = generateScene(1, 0);
 * s.caption; // e.g. 'a low beep repeated three times then white noise for about one second'
 * s.pcm.length / s.sampleRate; // seconds, at most 7
 * ```
 */
export function generateScene(seed: number, index: number): Scene {
  if (!Number.isInteger(seed) || !Number.isInteger(index) || index < 0) throw new Error(`generateScene: seed ${seed} and index ${index} must be integers, index ≥ 0`);
  const rng = new SceneRandom(seed, index);
  for (;;) {
    const segments = drawSegments(rng);
    const plan = placeSegments(segments, rng);
    if (plan.seconds <= MAX_SCENE_SECONDS) {
      const pcm = renderScene(plan, rng);
      return { seed, index, pcm, sampleRate: SCENE_SAMPLE_RATE, caption: sceneCaption(segments), segments, events: plan.events.map(({ event, start, end }) => ({ event, start, end })) };
    }
  }
}

/** One to four events, grouped into segments; about a third of the scenes with two or more events have an overlap. */
function drawSegments(rng: SceneRandom): SceneSegment[] {
  const events = rng.int(1, 4);
  const segments: SceneSegment[] = [];
  let left = events;
  while (left > 0) {
    const previous = segments[segments.length - 1];
    const afterSilence = previous?.length === 1 && previous[0].kind === 'silence';
    if (left >= 2 && rng.next() < 0.3) {
      const bed: SceneEvent = rng.next() < 0.5
        ? { kind: 'noise', colour: rng.pick(NOISE_COLOURS), duration: rng.pick(['one second', 'two seconds'] as const) }
        : { kind: 'tone', pitch: rng.pick(PITCHES), duration: rng.pick(['one second', 'two seconds'] as const) };
      if (previous?.some((e) => e.kind === bed.kind)) continue; // redraw: no two events of one kind in a row
      segments.push([bed, drawForeground(rng)]);
      left -= 2;
      continue;
    }
    // A silence never starts or ends the scene next to another silence, and the scene is never silence alone.
    const silenceAllowed = events > 1 && !afterSilence;
    // Two events of one kind in a row would blur into one (a click train, a short gap, another click train).
    let event = drawEvent(rng, silenceAllowed);
    while (previous?.some((e) => e.kind === event.kind)) event = drawEvent(rng, silenceAllowed);
    segments.push([event]);
    left -= 1;
  }
  return segments;
}

function drawEvent(rng: SceneRandom, silenceAllowed: boolean): SceneEvent {
  const kinds = silenceAllowed ? (['tone', 'chirp', 'noise', 'clicks', 'beeps', 'silence'] as const) : (['tone', 'chirp', 'noise', 'clicks', 'beeps'] as const);
  const kind = rng.pick(kinds);
  switch (kind) {
    case 'tone':
      return { kind, pitch: rng.pick(PITCHES), duration: rng.pick(DURATIONS) };
    case 'noise':
      return { kind, colour: rng.pick(NOISE_COLOURS), duration: rng.pick(DURATIONS) };
    case 'silence':
      return { kind, duration: rng.pick(DURATIONS) };
    default:
      return drawForeground(rng, kind);
  }
}

/** Short events that can sound over a bed. */
function drawForeground(rng: SceneRandom, kind: 'chirp' | 'clicks' | 'beeps' = rng.pick(['chirp', 'clicks', 'beeps'] as const)): SceneEvent {
  if (kind === 'chirp') return { kind, direction: rng.next() < 0.5 ? 'rising' : 'falling' };
  if (kind === 'clicks') return { kind, count: rng.int(2, 5) };
  return { kind, pitch: rng.next() < 0.5 ? 'low' : 'high', count: rng.int(2, 5) };
}

interface PlannedEvent extends PlacedEvent {
  /** Event-specific timing: trains' period, chirp sweep. */
  readonly period?: number;
  readonly level: number;
}

/**
 * A bed under a click train is at most this fraction of the clicks' level (−12 dB). A click carries about 1 ms of
 * energy, a 25 ms mel frame of a bed 25 ms: under a bed as loud as itself a click changes its frame's log-mel by well
 * under a decibel, so no log-mel model can count it and a caption naming it would be a wrong label.
 */
const CLICK_BED_RATIO = 0.25;

/** Start and end of every event: segments in order with short gaps; a foreground starts a little after its bed. */
function placeSegments(segments: readonly SceneSegment[], rng: SceneRandom): { events: PlannedEvent[]; seconds: number } {
  const events: PlannedEvent[] = [];
  let t = rng.uniform(0.1, 0.25);
  segments.forEach((seg, i) => {
    if (i > 0) t += rng.uniform(0.05, 0.15);
    const first = timed(seg[0], t, rng);
    if (seg.length === 1) {
      events.push(first);
      t = first.end;
      return;
    }
    let over = timed(seg[1], first.start + rng.uniform(0.15, 0.3), rng);
    // The foreground must end inside its bed: shorten the train's period or stretch the bed to its longest words.
    let bed = first;
    if (over.end > bed.end - 0.1) {
      const range = DURATION_RANGES[(bed.event as { duration: DurationWords }).duration];
      const end = Math.min(bed.start + range[1], over.end + 0.15);
      bed = { ...bed, end };
      if (over.end > bed.end - 0.1) over = squeeze(over, bed.end - 0.1);
    }
    // Clicks must stand out of their bed's log-mel frames (CLICK_BED_RATIO).
    if (over.event.kind === 'clicks') bed = { ...bed, level: Math.min(bed.level, over.level * CLICK_BED_RATIO) };
    events.push(bed, over);
    t = bed.end;
  });
  return { events, seconds: t + rng.uniform(0.1, 0.25) };
}

function timed(event: SceneEvent, start: number, rng: SceneRandom): PlannedEvent {
  const level = rng.uniform(0.1, 0.5);
  switch (event.kind) {
    case 'tone':
    case 'noise':
    case 'silence': {
      const [lo, hi] = DURATION_RANGES[event.duration];
      return { event, start, end: start + rng.uniform(lo, hi), level };
    }
    case 'chirp':
      return { event, start, end: start + rng.uniform(0.5, 0.9), level };
    case 'clicks':
    case 'beeps': {
      // 2.5–6 repeats per second for clicks, 2.5–4 for beeps (a beep lasts 100 ms and needs room after it).
      const period = 1 / (event.kind === 'clicks' ? rng.uniform(2.5, 6) : rng.uniform(2.5, 4));
      const pulse = event.kind === 'clicks' ? 0.01 : 0.1;
      return { event, start, end: start + (event.count - 1) * period + pulse, level, period };
    }
  }
}

/** A train that would overrun its bed gets a shorter period (never under 1/6 s for clicks, 1/4 s for beeps). */
function squeeze(e: PlannedEvent, end: number): PlannedEvent {
  if (e.event.kind !== 'clicks' && e.event.kind !== 'beeps') return { ...e, start: Math.max(e.start, end - (e.end - e.start)), end: Math.min(e.end, end) };
  const pulse = e.event.kind === 'clicks' ? 0.01 : 0.1;
  const minPeriod = e.event.kind === 'clicks' ? 1 / 6 : 1 / 4;
  const period = Math.max(minPeriod, (end - e.start - pulse) / (e.event.count - 1));
  const dur = (e.event.count - 1) * period + pulse;
  return { ...e, period, start: Math.min(e.start, end - dur), end: Math.min(e.start, end - dur) + dur };
}

function renderScene(plan: { events: PlannedEvent[]; seconds: number }, rng: SceneRandom): Float32Array {
  const sr = SCENE_SAMPLE_RATE;
  const out = new Float32Array(Math.round(plan.seconds * sr));
  const background = rng.uniform(0.002, 0.006);
  for (let i = 0; i < out.length; i++) out[i] = background * rng.normal();
  for (const e of plan.events) addEvent(out, e, rng);
  // A loud overlap could clip; scale the whole scene down instead (the caption does not name levels).
  let peak = 0;
  for (const v of out) peak = Math.max(peak, Math.abs(v));
  if (peak > 0.95) for (let i = 0; i < out.length; i++) out[i]! *= 0.95 / peak;
  return out;
}

/** Adds one event into `out`, with 5 ms fades on continuous sounds. */
function addEvent(out: Float32Array, e: PlannedEvent, rng: SceneRandom): void {
  const sr = SCENE_SAMPLE_RATE;
  const s0 = Math.round(e.start * sr), s1 = Math.min(out.length, Math.round(e.end * sr));
  const n = s1 - s0;
  const fade = (i: number) => Math.min(1, i / (0.005 * sr), (n - 1 - i) / (0.005 * sr));
  const ev = e.event;
  switch (ev.kind) {
    case 'silence':
      return;
    case 'tone': {
      const w = (2 * Math.PI * PITCH_HZ[ev.pitch]) / sr;
      const phase = rng.uniform(0, 2 * Math.PI);
      for (let i = 0; i < n; i++) out[s0 + i]! += e.level * fade(i) * Math.sin(phase + w * i);
      return;
    }
    case 'chirp': {
      // Exponential sweep between 300 Hz and 3 kHz: equal time per octave, a straight line on the mel scale.
      const [f0, f1] = ev.direction === 'rising' ? [300, 3000] : [3000, 300];
      const k = Math.log(f1 / f0) / n;
      let phase = 0;
      for (let i = 0; i < n; i++) {
        phase += (2 * Math.PI * f0 * Math.exp(k * i)) / sr;
        out[s0 + i]! += e.level * fade(i) * Math.sin(phase);
      }
      return;
    }
    case 'noise': {
      const noise = colouredNoise(ev.colour, n, rng);
      for (let i = 0; i < n; i++) out[s0 + i]! += e.level * fade(i) * noise[i]!;
      return;
    }
    case 'clicks':
    case 'beeps': {
      const pulse = Math.round((ev.kind === 'clicks' ? 0.01 : 0.1) * sr);
      const w = ev.kind === 'beeps' ? (2 * Math.PI * BEEP_HZ[ev.pitch]) / sr : 0;
      for (let c = 0; c < ev.count; c++) {
        const p0 = s0 + Math.round(c * e.period! * sr);
        for (let i = 0; i < pulse && p0 + i < out.length; i++) {
          // A click is a decaying noise burst; a beep a tone with 5 ms fades.
          const v = ev.kind === 'clicks'
            ? Math.exp(-i / (0.0015 * sr)) * (rng.next() * 2 - 1)
            : Math.min(1, i / (0.005 * sr), (pulse - 1 - i) / (0.005 * sr)) * Math.sin(w * i);
          out[p0 + i]! += e.level * (ev.kind === 'clicks' ? 2 : 1) * v;
        }
      }
      return;
    }
  }
}

/** Unit-RMS white, pink (Paul Kellet's filter, −3 dB/octave) or brown (leaky integral, −6 dB/octave) noise. */
function colouredNoise(colour: (typeof NOISE_COLOURS)[number], n: number, rng: SceneRandom): Float32Array {
  const x = new Float32Array(n);
  if (colour === 'white') for (let i = 0; i < n; i++) x[i] = rng.normal();
  else if (colour === 'pink') {
    let b0 = 0, b1 = 0, b2 = 0, b3 = 0, b4 = 0, b5 = 0, b6 = 0;
    for (let i = 0; i < n; i++) {
      const w = rng.normal();
      b0 = 0.99886 * b0 + w * 0.0555179;
      b1 = 0.99332 * b1 + w * 0.0750759;
      b2 = 0.969 * b2 + w * 0.153852;
      b3 = 0.8665 * b3 + w * 0.3104856;
      b4 = 0.55 * b4 + w * 0.5329522;
      b5 = -0.7616 * b5 - w * 0.016898;
      x[i] = b0 + b1 + b2 + b3 + b4 + b5 + b6 + w * 0.5362;
      b6 = w * 0.115926;
    }
  } else {
    let y = 0;
    for (let i = 0; i < n; i++) x[i] = y = 0.995 * y + rng.normal() * 0.1;
  }
  let sum = 0;
  for (const v of x) sum += v * v;
  const scale = 1 / Math.sqrt(sum / Math.max(1, n) || 1);
  for (let i = 0; i < n; i++) x[i]! *= scale * 0.5;
  return x;
}
