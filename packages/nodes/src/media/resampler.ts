/**
 * Band-limited sample-rate conversion: a polyphase windowed-sinc (Kaiser) filter, streaming with state, good
 * enough for ASR front ends (passband flat to 0.9·Nyquist of the lower rate, ≥ 80 dB stopband by default).
 *
 * For an in/out ratio reduced to L/M, output sample n sits at input time n·M/L; its L possible fractional
 * offsets are the filter's phases, precomputed once. The filter is zero-phase (centred), with zeros assumed
 * before the first sample and after the last one (on flush), so a stream of N input frames gives exactly
 * ceil(N·L/M) output frames and no delay.
 */

export interface ResamplerOptions {
  readonly inputRate: number;
  readonly outputRate: number;
  /** Interleaved channels. Default 1. */
  readonly channels?: number;
  /** Stopband attenuation in dB (sets the Kaiser beta). Default 80. */
  readonly attenuationDb?: number;
  /** Passband edge as a fraction of the lower Nyquist; the stopband starts at that Nyquist. Default 0.9. */
  readonly passband?: number;
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** Modified Bessel function of the first kind, order 0 (series; converges fast for the betas used here). */
function besselI0(x: number): number {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 200; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return sum;
}

/** Largest phase table held in memory (phases × taps); beyond it coefficients are computed per sample. */
const MAX_TABLE = 1 << 22;

/**
 * Streaming resampler. `push` interleaved float32 frames, get what can be computed so far; `flush` at the end.
 *
 * ```ts
 * const r = new Resampler({ inputRate: 48_000, outputRate: 16_000 });
 * const a = r.push(chunk48k);   // ~chunk.length / 3 samples
 * const b = r.flush();          // the tail
 * ```
 */
export class Resampler {
  readonly inputRate: number;
  readonly outputRate: number;
  readonly channels: number;
  /** Reduced ratio: output time step per input sample is L/M. */
  private readonly L: number;
  private readonly M: number;
  /** Input samples either side of the centre the filter reaches. */
  readonly halfTaps: number;
  private readonly taps: number;
  private readonly cutoff: number; // cycles per input sample
  private readonly beta: number;
  private readonly table?: Float32Array; // [L][taps]
  /** Pending input (per channel, deinterleaved) from absolute input index `bufferStart`. */
  private buffer: Float32Array[];
  private bufferStart: number;
  private bufferLength = 0;
  private inputFrames = 0;
  private outputFrames = 0;
  private flushed = false;

  constructor(o: ResamplerOptions) {
    const { inputRate, outputRate } = o;
    if (!Number.isInteger(inputRate) || inputRate <= 0) throw new RangeError(`Resampler: inputRate must be a positive integer, got ${inputRate}`);
    if (!Number.isInteger(outputRate) || outputRate <= 0) throw new RangeError(`Resampler: outputRate must be a positive integer, got ${outputRate}`);
    const channels = o.channels ?? 1;
    if (!Number.isInteger(channels) || channels < 1) throw new RangeError(`Resampler: channels must be a positive integer, got ${channels}`);
    const passband = o.passband ?? 0.9;
    if (!(passband > 0 && passband < 1)) throw new RangeError(`Resampler: passband must be in (0, 1), got ${passband}`);
    const A = o.attenuationDb ?? 80;
    if (!(A >= 20)) throw new RangeError(`Resampler: attenuationDb must be >= 20, got ${A}`);
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.channels = channels;
    const g = gcd(inputRate, outputRate);
    this.L = outputRate / g;
    this.M = inputRate / g;
    // Design at the input rate: transition band from passband·nyq to nyq of the lower of the two rates.
    const nyq = Math.min(inputRate, outputRate) / 2;
    const fPass = passband * nyq;
    const fStop = nyq;
    this.cutoff = (fPass + fStop) / 2 / inputRate;
    const dw = (2 * Math.PI * (fStop - fPass)) / inputRate;
    // Kaiser's design formulas: length from attenuation and transition width, beta from attenuation.
    const length = Math.ceil((A - 8) / (2.285 * dw)) + 1;
    this.halfTaps = Math.max(2, Math.ceil(length / 2));
    this.taps = 2 * this.halfTaps;
    this.beta = A > 50 ? 0.1102 * (A - 8.7) : A >= 21 ? 0.5842 * (A - 21) ** 0.4 + 0.07886 * (A - 21) : 0;
    if (this.L * this.taps <= MAX_TABLE) {
      this.table = new Float32Array(this.L * this.taps);
      for (let p = 0; p < this.L; p++) this.phase(p, this.table.subarray(p * this.taps, (p + 1) * this.taps));
    }
    // The first outputs reach halfTaps-1 samples before input 0: keep them as leading zeros.
    this.bufferStart = -(this.halfTaps - 1);
    this.buffer = Array.from({ length: channels }, () => new Float32Array(8192));
    this.bufferLength = this.halfTaps - 1;
  }

  /** Delay-free group delay: 0 (the filter is centred). Output frames produced so far. */
  get produced(): number {
    return this.outputFrames;
  }

  /** Coefficients of phase p (fractional offset p/L) over inputs base-halfTaps+1 … base+halfTaps, DC gain 1. */
  private phase(p: number, out: Float32Array): void {
    const frac = p / this.L;
    const i0b = besselI0(this.beta);
    let sum = 0;
    for (let j = 0; j < this.taps; j++) {
      const d = frac - (j - this.halfTaps + 1); // distance from output time to input sample, in input samples
      const x = 2 * this.cutoff * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const r = d / this.halfTaps;
      const w = r * r < 1 ? besselI0(this.beta * Math.sqrt(1 - r * r)) / i0b : 0;
      out[j] = sinc * w;
      sum += out[j];
    }
    // Normalising each phase to unity DC gain removes the small per-phase gain ripple of a truncated sinc.
    for (let j = 0; j < this.taps; j++) out[j] /= sum;
  }

  /** Adds interleaved input frames; returns interleaved output frames computable so far. */
  push(input: Float32Array): Float32Array {
    if (this.flushed) throw new Error('Resampler.push: already flushed; create a new Resampler for a new stream');
    const C = this.channels;
    if (input.length % C !== 0) throw new RangeError(`Resampler.push: ${input.length} samples is not a multiple of ${C} channels`);
    const frames = input.length / C;
    this.reserve(frames);
    for (let c = 0; c < C; c++) {
      const ch = this.buffer[c];
      for (let i = 0; i < frames; i++) ch[this.bufferLength + i] = input[i * C + c];
    }
    this.bufferLength += frames;
    this.inputFrames += frames;
    return this.run(this.inputFrames);
  }

  /** Ends the stream: pads with zeros and returns the remaining output (total = ceil(inputFrames·L/M)). */
  flush(): Float32Array {
    if (this.flushed) return new Float32Array(0);
    this.flushed = true;
    this.reserve(this.halfTaps);
    for (const ch of this.buffer) ch.fill(0, this.bufferLength, this.bufferLength + this.halfTaps);
    this.bufferLength += this.halfTaps;
    return this.run(this.inputFrames + this.halfTaps, Math.ceil((this.inputFrames * this.L) / this.M));
  }

  private reserve(frames: number): void {
    // Drop input no future output can reach.
    const nextBase = Math.floor((this.outputFrames * this.M) / this.L);
    const keepFrom = nextBase - this.halfTaps + 1;
    const drop = Math.min(Math.max(0, keepFrom - this.bufferStart), this.bufferLength);
    if (drop > 0) {
      for (const ch of this.buffer) ch.copyWithin(0, drop, this.bufferLength);
      this.bufferLength -= drop;
      this.bufferStart += drop;
    }
    if (this.bufferLength + frames > this.buffer[0].length) {
      const size = Math.max(this.buffer[0].length * 2, this.bufferLength + frames);
      this.buffer = this.buffer.map((ch) => {
        const grown = new Float32Array(size);
        grown.set(ch.subarray(0, this.bufferLength));
        return grown;
      });
    }
  }

  /** Computes outputs whose filter window ends before `available` (absolute input frames), up to `limit` outputs. */
  private run(available: number, limit = Infinity): Float32Array {
    const C = this.channels;
    const { L, M, taps, halfTaps } = this;
    // Output n needs inputs up to floor(n·M/L) + halfTaps.
    let end = Math.floor(((available - halfTaps) * L) / M);
    while (end >= 0 && Math.floor((end * M) / L) + halfTaps >= available) end--;
    while (Math.floor(((end + 1) * M) / L) + halfTaps < available) end++;
    const count = Math.max(0, Math.min(end + 1, limit) - this.outputFrames);
    const out = new Float32Array(count * C);
    const scratch = this.table ? undefined : new Float32Array(taps);
    for (let k = 0; k < count; k++) {
      const n = this.outputFrames + k;
      const pos = n * M;
      const base = Math.floor(pos / L);
      const p = pos - base * L;
      let coeffs: Float32Array;
      if (this.table) coeffs = this.table.subarray(p * taps, (p + 1) * taps);
      else {
        this.phase(p, scratch!);
        coeffs = scratch!;
      }
      const first = base - halfTaps + 1 - this.bufferStart;
      for (let c = 0; c < C; c++) {
        const ch = this.buffer[c];
        let acc = 0;
        for (let j = 0; j < taps; j++) acc += coeffs[j] * ch[first + j];
        out[k * C + c] = acc;
      }
    }
    this.outputFrames += count;
    return out;
  }
}

/**
 * Resamples a whole buffer (interleaved) in one call.
 *
 * ```ts
 * const pcm16k = resample(pcm48k, 48_000, 16_000); // length = ceil(pcm48k.length / 3)
 * ```
 */
export function resample(input: Float32Array, inputRate: number, outputRate: number, options: Omit<ResamplerOptions, 'inputRate' | 'outputRate'> = {}): Float32Array {
  if (inputRate === outputRate) return input.slice();
  const r = new Resampler({ inputRate, outputRate, ...options });
  const a = r.push(input);
  const b = r.flush();
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
