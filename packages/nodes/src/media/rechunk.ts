import { audioPacket, samplesToMicros, type AudioPacket, type Micros } from '@omniflow/core';
import { FrameSplitter } from './vad.js';

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
  private splitter?: FrameSplitter;
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
      this.splitter = new FrameSplitter(this.frames, p.channels);
    } else if (p.sampleRate !== this.format.sampleRate || p.channels !== this.format.channels) {
      throw new Error(`Rechunker: packet at pts ${p.pts} is ${p.sampleRate} Hz ${p.channels} ch, the stream is ${this.format.sampleRate} Hz ${this.format.channels} ch`);
    }
    const out: AudioPacket[] = [];
    // The splitter reuses its frame array: copy each one into the packet that owns it.
    this.splitter!.push(p, (frame) => out.push(this.packet(frame.slice())));
    return out;
  }

  /** Emits what is left according to `tail`. */
  flush(): AudioPacket[] {
    const rest = this.splitter?.remainder();
    if (!rest) return [];
    this.splitter!.clearRemainder();
    if (this.tail === 'drop') return [];
    if (this.tail === 'pad') {
      const padded = new Float32Array(this.frames * this.format!.channels);
      padded.set(rest);
      return [this.packet(padded)];
    }
    return [this.packet(rest)];
  }

  /** pts count the samples emitted so far, so the output is one contiguous run whatever the input pts say. */
  private packet(samples: Float32Array): AudioPacket {
    const f = this.format!;
    const p = audioPacket({ samples, sampleRate: f.sampleRate, channels: f.channels, session: f.session, turn: f.turn, pts: this.startPts + samplesToMicros(this.emitted, f.sampleRate) });
    this.emitted += samples.length / f.channels;
    return p;
  }
}
