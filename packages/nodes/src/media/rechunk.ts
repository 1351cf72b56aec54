import { audioPacket, samplesToMicros, type AudioPacket, type Micros } from '@omniflow/core';

export interface RechunkerOptions {
  /** Frames (samples per channel) per output packet. */
  readonly frames: number;
  /** On flush: 'pad' the last packet with zeros to full size, 'keep' it short (default) or 'drop' it. */
  readonly tail?: 'pad' | 'keep' | 'drop';
}

/**
 * Re-cuts an audio stream into packets of exactly `frames` frames. pts continue from the first packet's pts by
 * counting samples (a gap or overlap in the input pts is not carried over: the output is one contiguous run).
 *
 * ```ts
 * const r = new Rechunker({ frames: 1600 });          // 100 ms at 16 kHz
 * for (const p of input) for (const q of r.push(p)) send(q);
 * for (const q of r.flush()) send(q);
 * ```
 */
export class Rechunker {
  readonly frames: number;
  private readonly tail: 'pad' | 'keep' | 'drop';
  private buffer = new Float32Array(0);
  private filled = 0;
  private format?: { sampleRate: number; channels: number; session: string; turn: number };
  private startPts: Micros = 0;
  private emitted = 0;

  constructor(o: RechunkerOptions) {
    if (!Number.isInteger(o.frames) || o.frames < 1) throw new RangeError(`Rechunker: frames must be a positive integer, got ${o.frames}`);
    this.frames = o.frames;
    this.tail = o.tail ?? 'keep';
  }

  push(p: AudioPacket): AudioPacket[] {
    if (!this.format) {
      this.format = { sampleRate: p.sampleRate, channels: p.channels, session: p.session, turn: p.turn };
      this.startPts = p.pts;
      this.buffer = new Float32Array(this.frames * p.channels);
    } else if (p.sampleRate !== this.format.sampleRate || p.channels !== this.format.channels) {
      throw new Error(`Rechunker: packet at pts ${p.pts} is ${p.sampleRate} Hz ${p.channels} ch, the stream is ${this.format.sampleRate} Hz ${this.format.channels} ch`);
    }
    const out: AudioPacket[] = [];
    let offset = 0;
    while (offset < p.samples.length) {
      const n = Math.min(this.buffer.length - this.filled, p.samples.length - offset);
      this.buffer.set(p.samples.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.buffer.length) out.push(this.take(this.buffer.length));
    }
    return out;
  }

  /** Emits what is left according to `tail`. */
  flush(): AudioPacket[] {
    if (!this.format || this.filled === 0) return [];
    if (this.tail === 'drop') {
      this.filled = 0;
      return [];
    }
    if (this.tail === 'pad') {
      this.buffer.fill(0, this.filled);
      return [this.take(this.buffer.length)];
    }
    return [this.take(this.filled)];
  }

  private take(length: number): AudioPacket {
    const f = this.format!;
    const samples = this.buffer.slice(0, length);
    const p = audioPacket({ samples, sampleRate: f.sampleRate, channels: f.channels, session: f.session, turn: f.turn, pts: this.startPts + samplesToMicros(this.emitted, f.sampleRate) });
    this.emitted += length / f.channels;
    this.filled = 0;
    return p;
  }
}
