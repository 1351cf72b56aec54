/**
 * Metrics of a running session: per node (packets in/out, processing latency, custom counters), per edge
 * (packets in/out, queue depth, drops by reason) and per turn (time to first output of each packet kind).
 * `formatReport` prints them as a table.
 */
import type { Micros, PacketKind } from './packets.js';
import type { DropReason } from './queue.js';

const BUCKETS = 40;

/**
 * A log2-bucketed histogram of microsecond values (bucket b holds values in [2^(b-1), 2^b)), cheap
 * enough to record on the per-packet path.
 *
 * ```ts
 * const h = new Histogram(); h.record(120); h.record(900);
 * h.percentile(0.5); // ≈ 128 (upper edge of the median's bucket)
 * ```
 */
export class Histogram {
  readonly buckets = new Float64Array(BUCKETS);
  count = 0;
  sum = 0;
  min = Infinity;
  max = 0;

  record(micros: number): void {
    const v = micros > 0 ? micros : 0;
    const b = v < 1 ? 0 : Math.min(BUCKETS - 1, 32 - Math.clz32(v));
    this.buckets[b]++;
    this.count++;
    this.sum += v;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
  }

  /** Upper edge of the bucket holding quantile `q` (0..1), clamped to the observed max. */
  percentile(q: number): number {
    if (this.count === 0) return 0;
    const rank = Math.ceil(q * this.count);
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.buckets[b];
      if (seen >= rank) return Math.min(this.max, b === 0 ? 1 : 2 ** b);
    }
    return this.max;
  }

  get mean(): number {
    return this.count === 0 ? 0 : this.sum / this.count;
  }

  toJSON(): HistogramSummary {
    return {
      count: this.count,
      meanMicros: +this.mean.toFixed(2),
      p50Micros: +this.percentile(0.5).toFixed(2),
      p90Micros: +this.percentile(0.9).toFixed(2),
      p99Micros: +this.percentile(0.99).toFixed(2),
      maxMicros: +this.max.toFixed(2),
    };
  }
}

export interface HistogramSummary {
  count: number;
  meanMicros: number;
  p50Micros: number;
  p90Micros: number;
  p99Micros: number;
  maxMicros: number;
}

export interface NodeMetricsSnapshot {
  id: string;
  type: string;
  packetsIn: number;
  packetsOut: number;
  /** Time from a packet's delivery to the node until its first output (or until it returned). */
  latency: HistogramSummary;
  counters: Record<string, number>;
  histograms: Record<string, HistogramSummary>;
}

export interface EdgeMetricsSnapshot {
  id: string;
  from: string;
  to: string;
  capacity: string;
  policy: string;
  packetsIn: number;
  packetsOut: number;
  depth: number;
  maxDepth: number;
  drops: Record<DropReason, number>;
}

export interface TurnMetricsSnapshot {
  turn: number;
  /** Media-clock time the turn began. */
  startedAt: Micros;
  /** Media-clock time from the turn's start to the first packet of each kind reaching a sink or graph output. */
  timeToFirstOutput: Partial<Record<PacketKind, Micros>>;
  endedBy?: 'interrupt' | 'end';
}

export interface MetricsSnapshot {
  session: string;
  mode: string;
  elapsedMicros: Micros;
  nodes: NodeMetricsSnapshot[];
  edges: EdgeMetricsSnapshot[];
  turns: TurnMetricsSnapshot[];
}

const pad = (s: string | number, n: number) => String(s).padEnd(n);
const lpad = (s: string | number, n: number) => String(s).padStart(n);
const us = (v: number) => (v >= 10_000 ? `${(v / 1000).toFixed(1)}ms` : `${Math.round(v)}µs`);

/**
 * A printable report of a metrics snapshot.
 *
 * ```ts
 * console.log(formatReport(session.metrics()));
 * ```
 */
export function formatReport(m: MetricsSnapshot): string {
  const lines: string[] = [];
  lines.push(`session ${m.session} (${m.mode}), ${(m.elapsedMicros / 1e6).toFixed(3)} s`);
  const w = Math.max(8, ...m.nodes.map((n) => n.id.length + n.type.length + 3));
  lines.push(`${pad('node', w)} ${lpad('in', 9)} ${lpad('out', 9)} ${lpad('p50', 8)} ${lpad('p99', 8)} ${lpad('max', 8)}`);
  for (const n of m.nodes) {
    lines.push(
      `${pad(`${n.id} [${n.type}]`, w)} ${lpad(n.packetsIn, 9)} ${lpad(n.packetsOut, 9)} ${lpad(us(n.latency.p50Micros), 8)} ${lpad(us(n.latency.p99Micros), 8)} ${lpad(us(n.latency.maxMicros), 8)}`,
    );
    for (const [k, v] of Object.entries(n.counters)) lines.push(`${pad('', w)}   ${k}: ${v}`);
    for (const [k, h] of Object.entries(n.histograms)) lines.push(`${pad('', w)}   ${k}: n=${h.count} mean=${h.meanMicros} p99=${h.p99Micros}`);
  }
  const e = Math.max(8, ...m.edges.map((x) => x.id.length));
  lines.push('');
  lines.push(`${pad('edge', e)} ${pad('queue', 18)} ${lpad('in', 9)} ${lpad('out', 9)} ${lpad('depth', 6)} ${lpad('max', 6)}  drops`);
  for (const x of m.edges) {
    const drops = Object.entries(x.drops).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ') || '0';
    lines.push(`${pad(x.id, e)} ${pad(`${x.capacity} ${x.policy}`, 18)} ${lpad(x.packetsIn, 9)} ${lpad(x.packetsOut, 9)} ${lpad(x.depth, 6)} ${lpad(x.maxDepth, 6)}  ${drops}`);
  }
  if (m.turns.length > 0) {
    lines.push('');
    lines.push('turn  started   time to first output');
    for (const t of m.turns) {
      const ttfo = Object.entries(t.timeToFirstOutput).map(([k, v]) => `${k} ${us(v!)}`).join(', ') || '-';
      lines.push(`${pad(t.turn, 5)} ${pad(us(t.startedAt), 9)} ${ttfo}${t.endedBy ? `  (${t.endedBy})` : ''}`);
    }
  }
  return lines.join('\n');
}
