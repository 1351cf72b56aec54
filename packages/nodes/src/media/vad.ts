import { audioPacket, controlPacket, samplesToMicros, type AudioPacket, type ControlPacket, type Micros } from '@omniflow/core';

export interface EnergyVadOptions {
  /** Analysis frame, ms. Default 20. */
  readonly frameMs?: number;
  /**
   * Speech threshold in dBFS (RMS of the frame, all channels). Default -40. With `adaptive`, the threshold is
   * max(this, noise floor + marginDb).
   */
  readonly thresholdDb?: number;
  /** Track the noise floor and require frames to exceed it by this many dB. Off by default. */
  readonly adaptiveMarginDb?: number;
  /** Consecutive speech needed to declare speech-start, ms. Default 60 (rejects clicks). */
  readonly minSpeechMs?: number;
  /** Silence that must follow speech before speech-end, ms (the hangover). Default 300. */
  readonly hangoverMs?: number;
}

/**
 * RMS level of interleaved samples in dBFS (−Infinity for digital silence).
 *
 * ```ts
 * levelDb(new Float32Array(160).fill(0.1)); // -20
 * ```
 */
export function levelDb(samples: Float32Array, from = 0, to = samples.length): number {
  let s = 0;
  for (let i = from; i < to; i++) s += samples[i] * samples[i];
  return to > from ? 10 * Math.log10(s / (to - from)) : -Infinity;
}

/**
 * Splits a stream of audio packets into fixed analysis frames, whatever the packet sizes, and tells the caller
 * the level and absolute position of each one.
 *
 * ```ts
 * const frames = new FrameSplitter(320, 1);
 * frames.push(packet, (frame, i, pts) => console.log(i, pts, levelDb(frame)));
 * ```
 */
export class FrameSplitter {
  private buffer: Float32Array;
  private filled = 0;
  private frameIndex = 0;
  private origin?: Micros;
  constructor(
    readonly frameSamples: number,
    readonly channels: number,
  ) {
    this.buffer = new Float32Array(frameSamples * channels);
  }
  /** Calls `onFrame(frame, frameIndex, pts)` for every completed frame (the array is reused: copy to keep). */
  push(p: AudioPacket, onFrame: (frame: Float32Array, index: number, pts: Micros) => void): void {
    this.origin ??= p.pts;
    let offset = 0;
    while (offset < p.samples.length) {
      const n = Math.min(this.buffer.length - this.filled, p.samples.length - offset);
      this.buffer.set(p.samples.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.buffer.length) {
        onFrame(this.buffer, this.frameIndex, this.origin + samplesToMicros(this.frameIndex * this.frameSamples, p.sampleRate));
        this.frameIndex++;
        this.filled = 0;
      }
    }
  }
  /** The partial frame left at the end of the stream (copy), if any. */
  remainder(): Float32Array | undefined {
    return this.filled ? this.buffer.slice(0, this.filled) : undefined;
  }
  /** Drops the partial frame, so the next push starts a fresh one (frame indices go on counting). */
  clearRemainder(): void {
    this.filled = 0;
  }
}

/**
 * Energy voice-activity detector with attack and hangover. Feed it audio packets; it returns the packets to pass
 * on: the audio itself, plus `speech-start` / `speech-end` control packets. A `speech-start` is stamped with the pts
 * of the first speech frame (so it lies up to `minSpeechMs` before the audio it arrives with); a `speech-end` with
 * the end of the last speech frame. `flush()` closes an open speech segment at the end of the stream.
 *
 * ```ts
 * const vad = new EnergyVad({ thresholdDb: -40, hangoverMs: 300 });
 * for (const p of packets) for (const q of vad.push(p)) if (q.kind === 'control') console.log(q.signal, q.pts);
 * ```
 */
export class EnergyVad {
  readonly options: Required<Omit<EnergyVadOptions, 'adaptiveMarginDb'>> & { adaptiveMarginDb?: number };
  private splitter?: FrameSplitter;
  private frameUs = 0;
  private speaking = false;
  private run = 0; // consecutive frames disagreeing with the current state
  private runStart: Micros = 0;
  private lastSpeechEnd: Micros = 0;
  private noiseFloor = Infinity;
  private session = 'default';
  private turn = 0;

  constructor(o: EnergyVadOptions = {}) {
    this.options = {
      frameMs: o.frameMs ?? 20,
      thresholdDb: o.thresholdDb ?? -40,
      minSpeechMs: o.minSpeechMs ?? 60,
      hangoverMs: o.hangoverMs ?? 300,
      ...(o.adaptiveMarginDb !== undefined ? { adaptiveMarginDb: o.adaptiveMarginDb } : {}),
    };
    for (const k of ['frameMs', 'minSpeechMs', 'hangoverMs'] as const) {
      if (!(this.options[k] >= 0)) throw new RangeError(`EnergyVad: ${k} must be >= 0, got ${this.options[k]}`);
    }
    if (!(this.options.frameMs > 0)) throw new RangeError(`EnergyVad: frameMs must be positive, got ${this.options.frameMs}`);
  }

  /** True while inside a speech segment. */
  get inSpeech(): boolean {
    return this.speaking;
  }

  push(p: AudioPacket): Array<AudioPacket | ControlPacket> {
    if (!this.splitter) {
      const frameSamples = Math.max(1, Math.round((p.sampleRate * this.options.frameMs) / 1000));
      this.splitter = new FrameSplitter(frameSamples, p.channels);
      this.frameUs = samplesToMicros(frameSamples, p.sampleRate);
    }
    this.session = p.session;
    this.turn = p.turn;
    const controls: ControlPacket[] = [];
    this.splitter.push(p, (frame, _i, pts) => {
      const c = this.classify(frame, pts);
      if (c) controls.push(c);
    });
    return [...controls, p];
  }

  /** Ends the stream: emits `speech-end` if a segment is still open. */
  flush(): ControlPacket[] {
    if (!this.speaking) return [];
    this.speaking = false;
    return [this.control('speech-end', this.lastSpeechEnd)];
  }

  private classify(frame: Float32Array, pts: Micros): ControlPacket | undefined {
    const o = this.options;
    const db = levelDb(frame);
    let threshold = o.thresholdDb;
    if (o.adaptiveMarginDb !== undefined) {
      // Noise floor: follows quiet frames down at once and rises slowly (0.5 dB a frame), so speech does not lift it.
      this.noiseFloor = db < this.noiseFloor ? db : Math.min(db, this.noiseFloor + 0.5);
      threshold = Math.max(threshold, this.noiseFloor + o.adaptiveMarginDb);
    }
    const speech = db > threshold;
    if (speech) this.lastSpeechEnd = pts + this.frameUs;
    if (speech === this.speaking) {
      this.run = 0;
      return undefined;
    }
    if (this.run === 0) this.runStart = pts;
    this.run++;
    const needed = this.speaking ? o.hangoverMs : o.minSpeechMs;
    if (this.run * this.frameUs < needed * 1000 && !(needed === 0)) return undefined;
    this.run = 0;
    this.speaking = speech;
    return speech ? this.control('speech-start', this.runStart) : this.control('speech-end', this.lastSpeechEnd);
  }

  private control(signal: 'speech-start' | 'speech-end', pts: Micros): ControlPacket {
    return controlPacket({ signal, pts, session: this.session, turn: this.turn });
  }
}

export interface SilenceTrimOptions {
  /** Analysis frame, ms. Default 20. */
  readonly frameMs?: number;
  /** A frame above this RMS level (dBFS) is speech. Default -40. */
  readonly thresholdDb?: number;
  /** Silence kept before the first speech and after the last, ms. Default 100. */
  readonly paddingMs?: number;
}

/**
 * Drops leading and trailing silence (by frame energy, like {@link EnergyVad}); silence between speech is kept.
 * Trailing silence is held back until speech resumes or the stream ends, so it is emitted only if more speech
 * follows. Output packets keep the source pts (a trimmed stream starts at its first kept sample's pts).
 *
 * ```ts
 * const trim = new SilenceTrimmer({ thresholdDb: -45, paddingMs: 100 });
 * const kept = [...packets.flatMap((p) => trim.push(p)), ...trim.flush()];
 * ```
 */
export class SilenceTrimmer {
  private readonly frameMs: number;
  private readonly thresholdDb: number;
  private readonly paddingMs: number;
  private splitter?: FrameSplitter;
  private format?: { sampleRate: number; channels: number; session: string; turn: number; frameSamples: number };
  /** Frames waiting: leading silence (only the last `padding` kept) or silence after speech. */
  private held: Array<{ frame: Float32Array; pts: Micros }> = [];
  private seenSpeech = false;
  private lastKeptPts: Micros = 0;

  constructor(o: SilenceTrimOptions = {}) {
    this.frameMs = o.frameMs ?? 20;
    this.thresholdDb = o.thresholdDb ?? -40;
    this.paddingMs = o.paddingMs ?? 100;
    if (!(this.frameMs > 0)) throw new RangeError(`SilenceTrimmer: frameMs must be positive, got ${this.frameMs}`);
    if (!(this.paddingMs >= 0)) throw new RangeError(`SilenceTrimmer: paddingMs must be >= 0, got ${this.paddingMs}`);
  }

  push(p: AudioPacket): AudioPacket[] {
    if (!this.splitter) {
      const frameSamples = Math.max(1, Math.round((p.sampleRate * this.frameMs) / 1000));
      this.splitter = new FrameSplitter(frameSamples, p.channels);
      this.format = { sampleRate: p.sampleRate, channels: p.channels, session: p.session, turn: p.turn, frameSamples };
    }
    const out: Array<{ frame: Float32Array; pts: Micros }> = [];
    const padFrames = Math.ceil(this.paddingMs / this.frameMs);
    this.splitter.push(p, (frame, _i, pts) => {
      const copy = frame.slice();
      const speech = levelDb(copy) > this.thresholdDb;
      if (speech) {
        // Leading silence keeps only its last `padding`; silence between speech segments is kept whole.
        const keep = this.seenSpeech ? this.held : this.held.slice(-padFrames);
        out.push(...keep, { frame: copy, pts });
        this.lastKeptPts = pts;
        this.held = [];
        this.seenSpeech = true;
      } else {
        this.held.push({ frame: copy, pts });
        if (!this.seenSpeech && this.held.length > padFrames) this.held.shift();
      }
    });
    return this.merge(out);
  }

  /** Ends the stream: emits the padding after the last speech (the rest of the trailing silence is dropped). */
  flush(): AudioPacket[] {
    if (!this.seenSpeech) return [];
    const padFrames = Math.ceil(this.paddingMs / this.frameMs);
    const out = this.held.slice(0, padFrames);
    // The last partial frame belongs to the speech or its padding unless the padding is already full.
    const rest = this.splitter?.remainder();
    if (rest && this.held.length < padFrames) {
      const last = this.held.length ? this.held[this.held.length - 1].pts : this.lastKeptPts;
      out.push({ frame: rest, pts: last + samplesToMicros(this.format!.frameSamples, this.format!.sampleRate) });
    }
    this.held = [];
    return this.merge(out);
  }

  private merge(frames: Array<{ frame: Float32Array; pts: Micros }>): AudioPacket[] {
    if (frames.length === 0) return [];
    const f = this.format!;
    const packets: AudioPacket[] = [];
    let run: Array<{ frame: Float32Array; pts: Micros }> = [];
    const frameUs = samplesToMicros(f.frameSamples, f.sampleRate);
    const emit = (): void => {
      if (run.length === 0) return;
      const samples = new Float32Array(run.reduce((n, r) => n + r.frame.length, 0));
      let o = 0;
      for (const r of run) {
        samples.set(r.frame, o);
        o += r.frame.length;
      }
      packets.push(audioPacket({ samples, sampleRate: f.sampleRate, channels: f.channels, session: f.session, turn: f.turn, pts: run[0].pts }));
      run = [];
    };
    for (const fr of frames) {
      // Contiguous frames go in one packet; a jump (trimmed silence) starts a new one.
      if (run.length && Math.abs(fr.pts - (run[run.length - 1].pts + frameUs)) > 1) emit();
      run.push(fr);
    }
    emit();
    return packets;
  }
}
