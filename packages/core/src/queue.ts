/**
 * Bounded queues: every graph edge is one. A queue has a capacity — in packets, bytes of payload or
 * microseconds of media — and a policy for when it is full:
 *
 * - `block`: accept, but report full so the producer stops (lossless, in order). A producer that cannot
 *   stop synchronously (one input making several outputs) may overshoot by what it already emitted.
 * - `drop-oldest`: discard the oldest queued packets to make room (live audio: keep the freshest).
 * - `drop-newest`: discard the arriving packet.
 * - `latest`: keep only the newest packet (video frames: show the latest one).
 * - `error`: fail the graph with {@link EdgeOverflowError}.
 *
 * Dropped packets are disposed (they may own tensors) and counted per reason.
 */
import { disposePacket, packetBytes, packetDuration, type Packet } from './packets.js';

export type OverflowPolicy = 'block' | 'drop-oldest' | 'drop-newest' | 'latest' | 'error';
export const OVERFLOW_POLICIES: readonly OverflowPolicy[] = ['block', 'drop-oldest', 'drop-newest', 'latest', 'error'];

export type CapacityUnit = 'packets' | 'bytes' | 'micros';
export interface Capacity {
  readonly amount: number;
  readonly unit: CapacityUnit;
}
/** `16`, `'16'`, `'16 packets'`, `'400ms'`, `'2s'`, `'64kB'`, `'1MB'`, or a {@link Capacity}. */
export type CapacityInput = number | string | Capacity;

/** Why a queue discarded a packet. */
export type DropReason = 'overflow' | 'fenced' | 'late' | 'stopped';

const UNITS: Record<string, [number, CapacityUnit]> = {
  '': [1, 'packets'],
  packet: [1, 'packets'],
  packets: [1, 'packets'],
  b: [1, 'bytes'],
  kb: [1024, 'bytes'],
  mb: [1024 ** 2, 'bytes'],
  gb: [1024 ** 3, 'bytes'],
  us: [1, 'micros'],
  µs: [1, 'micros'],
  ms: [1000, 'micros'],
  s: [1_000_000, 'micros'],
};

/**
 * Parses a capacity.
 *
 * ```ts
 * parseCapacity('400ms'); // { amount: 400_000, unit: 'micros' }
 * parseCapacity('64kB');  // { amount: 65_536, unit: 'bytes' }
 * parseCapacity(8);       // { amount: 8, unit: 'packets' }
 * ```
 */
export function parseCapacity(c: CapacityInput): Capacity {
  if (typeof c === 'object') return parseCapacity(`${c.amount}${c.unit === 'micros' ? 'us' : c.unit === 'bytes' ? 'b' : ''}`);
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zµ]*)\s*$/i.exec(String(c));
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || !unit) throw new Error(`capacity: expected a number of packets or a size like '400ms', '2s', '64kB', got ${JSON.stringify(c)}`);
  const amount = Math.round(Number(m[1]) * unit[0]);
  if (!(amount >= 1)) throw new Error(`capacity: must be at least 1 ${unit[1]}, got ${JSON.stringify(c)}`);
  return { amount, unit: unit[1] };
}

/** Short form of a capacity: `8`, `400ms`, `64kB`. */
export function formatCapacity(c: Capacity): string {
  if (c.unit === 'packets') return String(c.amount);
  if (c.unit === 'micros') return c.amount % 1000 === 0 ? `${c.amount / 1000}ms` : `${c.amount}us`;
  if (c.amount % 1024 ** 2 === 0) return `${c.amount / 1024 ** 2}MB`;
  if (c.amount % 1024 === 0) return `${c.amount / 1024}kB`;
  return `${c.amount}B`;
}

/** Measure of one packet in a capacity unit. */
export function packetSize(unit: CapacityUnit, p: Packet): number {
  return unit === 'packets' ? 1 : unit === 'bytes' ? packetBytes(p) : packetDuration(p);
}

/** A growable circular buffer: O(1) push and shift, no per-item allocation. */
export class Ring<T> {
  private buf: Array<T | undefined> = new Array(16);
  private head = 0;
  length = 0;

  push(x: T): void {
    if (this.length === this.buf.length) this.grow();
    this.buf[(this.head + this.length) & (this.buf.length - 1)] = x;
    this.length++;
  }
  shift(): T | undefined {
    if (this.length === 0) return undefined;
    const x = this.buf[this.head];
    this.buf[this.head] = undefined;
    this.head = (this.head + 1) & (this.buf.length - 1);
    this.length--;
    return x;
  }
  peek(): T | undefined {
    return this.length === 0 ? undefined : this.buf[this.head];
  }
  /** Removes every item for which `drop` returns true, keeping order. */
  remove(drop: (x: T) => boolean): T[] {
    const kept: T[] = [], removed: T[] = [];
    while (this.length > 0) {
      const x = this.shift()!;
      (drop(x) ? removed : kept).push(x);
    }
    for (const x of kept) this.push(x);
    return removed;
  }
  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.length; i++) out.push(this.buf[(this.head + i) & (this.buf.length - 1)]!);
    return out;
  }
  private grow(): void {
    const next: Array<T | undefined> = new Array(this.buf.length * 2);
    for (let i = 0; i < this.length; i++) next[i] = this.buf[(this.head + i) & (this.buf.length - 1)];
    this.buf = next;
    this.head = 0;
  }
}

/** A full `error`-policy queue. */
export class EdgeOverflowError extends Error {
  constructor(
    readonly edge: string,
    readonly capacity: Capacity,
  ) {
    super(`edge ${edge}: queue full (capacity ${formatCapacity(capacity)}, policy 'error')`);
    this.name = 'EdgeOverflowError';
  }
}

/**
 * A bounded packet queue with an overflow policy. The graph runtime puts one on every edge; it is also
 * usable alone.
 *
 * ```ts
 * const q = new BoundedQueue('mic.audio -> vad.audio', parseCapacity('100ms'), 'drop-oldest');
 * q.offer(audioPacket({ samples: new Float32Array(1600), sampleRate: 16_000, channels: 1 })); // 100 ms: now full
 * q.drops.overflow; // 0 until the next packet arrives
 * ```
 */
export class BoundedQueue {
  readonly items = new Ring<Packet>();
  /** Occupancy in the capacity's unit. */
  size = 0;
  /** Highest packet count ever queued. */
  maxDepth = 0;
  readonly drops: Record<DropReason, number> = { overflow: 0, fenced: 0, late: 0, stopped: 0 };
  /** Called for every dropped packet after it is counted (before it is disposed). */
  onDrop: ((p: Packet, reason: DropReason) => void) | undefined;
  /** Disposes a dropped packet; the runtime replaces it to respect shared (fanned-out) packets. */
  dispose: (p: Packet) => void = disposePacket;

  constructor(
    readonly name: string,
    readonly capacity: Capacity,
    readonly policy: OverflowPolicy,
  ) {}

  get length(): number {
    return this.items.length;
  }
  /** At or over capacity. */
  get full(): boolean {
    return this.size >= this.capacity.amount;
  }

  /**
   * Adds a packet under the queue's policy. Returns false when the packet was dropped instead
   * (`drop-newest`); throws {@link EdgeOverflowError} under `error`.
   */
  offer(p: Packet): boolean {
    if (this.size >= this.capacity.amount && this.items.length > 0) {
      switch (this.policy) {
        case 'block':
          break;
        case 'drop-newest':
          this.drop(p, 'overflow');
          return false;
        case 'drop-oldest':
          while (this.size >= this.capacity.amount && this.items.length > 0) this.drop(this.take()!, 'overflow');
          break;
        case 'latest':
          break;
        case 'error':
          throw new EdgeOverflowError(this.name, this.capacity);
      }
    }
    // `latest` keeps only the newest packet whatever the capacity.
    if (this.policy === 'latest') while (this.items.length > 0) this.drop(this.take()!, 'overflow');
    this.items.push(p);
    this.size += packetSize(this.capacity.unit, p);
    if (this.items.length > this.maxDepth) this.maxDepth = this.items.length;
    return true;
  }

  /** Removes and returns the oldest packet. */
  take(): Packet | undefined {
    const p = this.items.shift();
    if (p !== undefined) this.size -= packetSize(this.capacity.unit, p);
    return p;
  }

  /** Drops every queued packet matching `stale` (interrupt fencing); returns how many. */
  fence(stale: (p: Packet) => boolean, reason: DropReason = 'fenced'): number {
    const removed = this.items.remove(stale);
    for (const p of removed) {
      this.size -= packetSize(this.capacity.unit, p);
      this.drop(p, reason);
    }
    return removed.length;
  }

  /** Counts, reports and disposes a packet the queue will not deliver. */
  drop(p: Packet, reason: DropReason): void {
    this.drops[reason]++;
    this.onDrop?.(p, reason);
    this.dispose(p);
  }

  /** Drops everything (the session stopped). */
  clear(): void {
    while (this.items.length > 0) this.drop(this.take()!, 'stopped');
  }
}
