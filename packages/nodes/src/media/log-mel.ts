/**
 * Whisper-style log-mel features exactly as Qwen3-Omni's WhisperFeatureExtractor computes them
 * (spec/qwen3-omni.md §5.1): periodic Hann(400), centred STFT with reflect padding, hop 160, power spectrum,
 * LAST frame dropped, 128 Slaney mel filters over 0–8 kHz, log10 clamped at 1e-10, floor at (clip max − 8),
 * then (x + 4) / 4. Output layout is [n_mels, frames] — the audio encoder's `input_features`.
 *
 * The DFT is a matmul against a cos/sin basis with the window folded in (the wasm backend has no FFT kernel). The
 * Hann window is symmetric (w[N−n] = w[n], w[0] = 0), so the real part only needs x[n] + x[N−n] and the imaginary
 * part x[n] − x[N−n], n ≤ N/2: two [frames, N/2±1]·[N/2±1, bins] matmuls, half the work of the plain
 * [frames, N]·[N, 2·bins] product.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface LogMelOptions {
  /** Default 16 000: the only rate the model's feature extractor accepts. */
  readonly sampleRate?: number;
  /** Default 400 (25 ms). */
  readonly nFft?: number;
  /** Default 160 (10 ms): 100 frames per second. */
  readonly hopLength?: number;
  /** Default 128. */
  readonly nMels?: number;
  /** Default 0 Hz. */
  readonly fMin?: number;
  /** Default sampleRate / 2. */
  readonly fMax?: number;
}

interface Resolved {
  sampleRate: number;
  nFft: number;
  hopLength: number;
  nMels: number;
  fMin: number;
  fMax: number;
  nBins: number;
}

function resolve(o: LogMelOptions = {}): Resolved {
  const sampleRate = o.sampleRate ?? 16_000;
  const nFft = o.nFft ?? 400;
  const hopLength = o.hopLength ?? 160;
  const nMels = o.nMels ?? 128;
  const fMin = o.fMin ?? 0;
  const fMax = o.fMax ?? sampleRate / 2;
  for (const [k, v] of Object.entries({ sampleRate, nFft, hopLength, nMels })) {
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`logMel: ${k} must be a positive integer, got ${v}`);
  }
  if (nFft % 2 !== 0) throw new RangeError(`logMel: nFft must be even, got ${nFft}`);
  if (!(fMin >= 0 && fMax > fMin && fMax <= sampleRate / 2)) throw new RangeError(`logMel: need 0 <= fMin < fMax <= sampleRate/2, got fMin=${fMin} fMax=${fMax}`);
  return { sampleRate, nFft, hopLength, nMels, fMin, fMax, nBins: nFft / 2 + 1 };
}

// Slaney mel scale (librosa / transformers `mel_scale='slaney'`): linear below 1 kHz, logarithmic above.
const MIN_LOG_HZ = 1000;
const MIN_LOG_MEL = 15;
const LOG_STEP = 27 / Math.log(6.4);
const hzToMel = (f: number): number => (f >= MIN_LOG_HZ ? MIN_LOG_MEL + Math.log(f / MIN_LOG_HZ) * LOG_STEP : (3 * f) / 200);
const melToHz = (m: number): number => (m >= MIN_LOG_MEL ? MIN_LOG_HZ * Math.exp((m - MIN_LOG_MEL) / LOG_STEP) : (200 * m) / 3);

/**
 * Slaney-normalised triangular mel filters, layout [nBins, nMels] (transformers' `mel_filter_bank` with
 * `norm='slaney', mel_scale='slaney'`), computed in float64 and returned as float32 like the extractor uses them.
 *
 * ```ts
 * const f = melFilterBank(); // Float32Array(201 * 128)
 * ```
 */
export function melFilterBank(options: LogMelOptions = {}): Float32Array {
  const { sampleRate, nMels, fMin, fMax, nBins } = resolve(options);
  const melMin = hzToMel(fMin);
  const melMax = hzToMel(fMax);
  const edges = Array.from({ length: nMels + 2 }, (_, i) => melToHz(melMin + ((melMax - melMin) * i) / (nMels + 1)));
  const out = new Float32Array(nBins * nMels);
  for (let b = 0; b < nBins; b++) {
    const f = ((sampleRate / 2) * b) / (nBins - 1);
    for (let m = 0; m < nMels; m++) {
      const down = (f - edges[m]) / (edges[m + 1] - edges[m]);
      const up = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1]);
      const tri = Math.max(0, Math.min(down, up));
      out[b * nMels + m] = tri * (2 / (edges[m + 2] - edges[m]));
    }
  }
  return out;
}

/**
 * Periodic Hann window (torch.hann_window(n, periodic=True)).
 *
 * ```ts
 * hannWindow(400)[200]; // 1
 * ```
 */
export function hannWindow(n: number): Float64Array {
  return Float64Array.from({ length: n }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / n));
}

/**
 * Folded DFT bases for a symmetric window: `cos` [N/2+1, bins] applies to e[n] = x[n] + x[N−n] (e[0] = x[0],
 * e[N/2] = x[N/2]), `sin` [N/2−1, bins] to o[n] = x[n] − x[N−n] for n = 1 … N/2−1.
 */
function foldedDftBasis(nFft: number): { cos: Float32Array; sin: Float32Array } {
  const half = nFft / 2;
  const nBins = half + 1;
  const w = hannWindow(nFft);
  const cos = new Float32Array(nBins * nBins);
  const sin = new Float32Array((half - 1) * nBins);
  for (let n = 0; n <= half; n++) {
    for (let k = 0; k < nBins; k++) {
      // (k·n) mod nFft keeps the angle exact for large k·n.
      const a = (2 * Math.PI * ((k * n) % nFft)) / nFft;
      cos[n * nBins + k] = w[n] * Math.cos(a);
      if (n >= 1 && n < half) sin[(n - 1) * nBins + k] = w[n] * Math.sin(a);
    }
  }
  return { cos, sin };
}

// Host copies of the constant matrices per configuration: a LogMel per call (the kernel node) then costs an upload,
// not the trigonometry.
const constantCache = new Map<string, { cos: Float32Array; sin: Float32Array; filters: Float32Array }>();
function constants(o: Resolved): { cos: Float32Array; sin: Float32Array; filters: Float32Array } {
  const key = JSON.stringify(o);
  let c = constantCache.get(key);
  if (!c) {
    c = { ...foldedDftBasis(o.nFft), filters: melFilterBank(o) };
    constantCache.set(key, c);
  }
  return c;
}

/**
 * Number of feature frames for `samples` input samples: 1 + L//hop STFT frames, the last one dropped.
 *
 * ```ts
 * logMelFrameCount(24_000); // 150
 * ```
 */
export function logMelFrameCount(samples: number, hopLength = 160): number {
  return Math.floor(samples / hopLength);
}

/**
 * The log-mel kernel. Owns its constant tensors (DFT basis, mel filters): call `dispose()` when done.
 *
 * ```ts
 * const mel = new LogMel();
 * const features = mel.features(tf.tensor1d(pcm16k)); // [128, floor(L / 160)]
 * mel.dispose();
 * ```
 */
export class LogMel {
  readonly options: Readonly<Resolved>;
  private readonly cosBasis: tf.Tensor2D;
  private readonly sinBasis: tf.Tensor2D;
  private readonly filters: tf.Tensor2D;

  constructor(options: LogMelOptions = {}) {
    this.options = resolve(options);
    const { nBins, nMels } = this.options;
    const { cos, sin, filters } = constants(this.options);
    this.cosBasis = tf.tensor2d(cos, [nBins, nBins]);
    this.sinBasis = tf.tensor2d(sin, [nBins - 2, nBins]);
    this.filters = tf.tensor2d(filters, [nBins, nMels]);
  }

  /**
   * Raw log10 mel energies (before the clip-max floor and scaling) of the `n` windows that start at
   * `signal[start + t·hop]`, t < n → [n, nMels]. The window folding is a JS pass over host memory: on the wasm
   * backend column slices and reversals run element by element, so folding in tensors would cost more than the DFT.
   */
  logMelOfWindows(signal: Float32Array, start: number, n: number): tf.Tensor2D {
    const { nFft, hopLength, nBins } = this.options;
    if (!(Number.isInteger(n) && n >= 0) || start < 0 || start + (n - 1) * hopLength + nFft > signal.length) {
      throw new RangeError(`LogMel.logMelOfWindows: ${n} windows of ${nFft} from ${start} (hop ${hopLength}) exceed the ${signal.length} samples given`);
    }
    const half = nFft / 2;
    const even = new Float32Array(n * nBins);
    const odd = new Float32Array(n * (half - 1));
    for (let t = 0; t < n; t++) {
      const o = start + t * hopLength;
      const e = t * nBins;
      const d = t * (half - 1);
      even[e] = signal[o];
      even[e + half] = signal[o + half];
      for (let k = 1; k < half; k++) {
        const a = signal[o + k];
        const b = signal[o + nFft - k];
        even[e + k] = a + b;
        odd[d + k - 1] = a - b;
      }
    }
    return tf.tidy(() => {
      const re = tf.matMul(tf.tensor2d(even, [n, nBins]), this.cosBasis);
      const im = tf.matMul(tf.tensor2d(odd, [n, half - 1]), this.sinBasis);
      const mel = tf.matMul(tf.add(tf.square(re), tf.square(im)), this.filters);
      return tf.mul(tf.log(tf.maximum(mel, 1e-10)), 1 / Math.LN10) as tf.Tensor2D;
    });
  }

  /**
   * The kernel: mono pcm [L] at `sampleRate` → features [nMels, floor(L / hop)], exactly the extractor's batch
   * output for one clip (the floor at max − 8 uses the whole clip's max). Needs L > nFft / 2 (reflect padding).
   * A tensor input is read back to host memory for the framing (a copy on the wasm and cpu backends).
   */
  features(pcm: tf.Tensor1D | Float32Array): tf.Tensor2D {
    const { nFft, hopLength } = this.options;
    if (!(pcm instanceof Float32Array) && pcm.rank !== 1) throw new Error(`LogMel.features: pcm must be rank 1 [samples], got [${pcm.shape.join(', ')}]`);
    const x = pcm instanceof Float32Array ? pcm : (pcm.dataSync() as Float32Array);
    const L = x.length;
    const pad = nFft / 2;
    if (L <= pad) throw new Error(`LogMel.features: need more than ${pad} samples for reflect padding, got ${L}`);
    // torch.stft(center=True, pad_mode='reflect'): x[pad..1] | x | x[L-2..L-1-pad].
    const padded = new Float32Array(L + nFft);
    padded.set(x, pad);
    for (let i = 1; i <= pad; i++) {
      padded[pad - i] = x[i];
      padded[pad + L - 1 + i] = x[L - 1 - i];
    }
    const T = logMelFrameCount(L, hopLength);
    return tf.tidy(() => {
      const raw = this.logMelOfWindows(padded, 0, T);
      return tf.transpose(normalizeLogMel(raw, tf.max(raw) as tf.Scalar)) as tf.Tensor2D;
    });
  }

  dispose(): void {
    this.cosBasis.dispose();
    this.sinBasis.dispose();
    this.filters.dispose();
  }
}

/**
 * (max(x, reference − 8) + 4) / 4: Whisper's dynamic-range floor and scaling. `reference` is a scalar tensor or number.
 *
 * ```ts
 * const features = normalizeLogMel(rawLog10, tf.max(rawLog10) as tf.Scalar); // batch: the clip's own max
 * ```
 */
export function normalizeLogMel<T extends tf.Tensor>(x: T, reference: tf.Scalar | number): T {
  return tf.tidy(() => tf.div(tf.add(tf.maximum(x, tf.sub(reference, 8)), 4), 4)) as T;
}

/**
 * One-shot batch features for a mono 16 kHz clip: `[nMels, frames]` tensor (caller owns it) plus the
 * feature attention mask length. Identical to `WhisperFeatureExtractor(...)(pcm, sampling_rate=16000)` for one clip.
 *
 * ```ts
 * const { features, frames } = logMelFeatures(pcm); // features: tf.Tensor2D [128, frames]
 * features.dispose();
 * ```
 */
export function logMelFeatures(pcm: Float32Array, options: LogMelOptions = {}): { features: tf.Tensor2D; frames: number } {
  const mel = new LogMel(options);
  try {
    const features = mel.features(pcm);
    return { features, frames: features.shape[1] };
  } finally {
    mel.dispose();
  }
}

/** How streaming features set the dynamic-range floor that batch mode takes from the whole clip's max. */
export type LogMelStreamReference =
  /** Floor at (max of all frames so far − 8): frames are final when emitted; equals batch once the clip max is seen. */
  | 'running-max'
  /** A fixed log10 reference (e.g. 1.5 for speech near full scale): every frame is independent of the others. */
  | { readonly fixed: number };

/**
 * Incremental log-mel: push PCM chunks of any size, get the frames whose windows are complete, with the right
 * overlap (each window spans 400 samples, hop 160, so 240 samples are carried between pushes). `flush()` reflect-pads
 * the end and emits the remaining frames, so the total frame count is floor(L / 160) like the batch extractor.
 * Raw log10 mel values equal batch mode's whatever the chunking; only the clip-max floor differs (see
 * {@link LogMelStreamReference}).
 *
 * ```ts
 * const stream = new LogMelStream();
 * for (const chunk of chunks) { const f = stream.push(chunk); if (f) { use(f); f.dispose(); } } // f: [128, n]
 * const last = stream.flush(); stream.dispose();
 * ```
 */
export class LogMelStream {
  readonly mel: LogMel;
  /** Running max of the raw log10 mel (for 'running-max'), kept on the device: no read-back per push. */
  private runningMax?: tf.Scalar;
  /** Samples from absolute index `bufferStart` on; the head (first nFft/2+1 samples) is kept for the left reflect. */
  private buffer = new Float32Array(4096);
  private bufferStart = 0;
  private bufferLength = 0;
  private readonly head: Float32Array;
  private headLength = 0;
  private total = 0;
  private nextFrame = 0;
  private flushed = false;

  constructor(
    options: LogMelOptions & { reference?: LogMelStreamReference } = {},
  ) {
    this.mel = new LogMel(options);
    this.reference = options.reference ?? 'running-max';
    this.head = new Float32Array(this.mel.options.nFft / 2 + 1);
  }

  private readonly reference: LogMelStreamReference;

  /** Frames emitted so far. */
  get frames(): number {
    return this.nextFrame;
  }

  /** Adds mono samples; returns the newly complete frames as [nMels, n] (caller owns it), or undefined if none. */
  push(samples: Float32Array): tf.Tensor2D | undefined {
    if (this.flushed) throw new Error('LogMelStream.push: the stream was flushed; create a new LogMelStream for a new clip');
    this.append(samples);
    const { nFft, hopLength } = this.mel.options;
    const pad = nFft / 2;
    // Frame i needs x[i·hop − pad, i·hop + pad) and, while it reaches before 0, x[1..pad] for the reflection.
    let ready = this.total >= pad + 1 ? Math.floor((this.total - pad) / hopLength) + 1 : 0;
    ready = Math.min(ready, Math.floor(this.total / hopLength)); // never beyond the batch frame count floor(L/hop)
    return this.emit(ready);
  }

  /** Ends the clip: reflect-pads the tail and returns the last frames (or undefined). */
  flush(): tf.Tensor2D | undefined {
    if (this.flushed) return undefined;
    this.flushed = true;
    const pad = this.mel.options.nFft / 2;
    if (this.total <= pad) {
      if (this.total === 0) return undefined;
      throw new Error(`LogMelStream.flush: a clip needs more than ${pad} samples for reflect padding, got ${this.total}`);
    }
    return this.emit(logMelFrameCount(this.total, this.mel.options.hopLength));
  }

  dispose(): void {
    this.mel.dispose();
    this.runningMax?.dispose();
    this.runningMax = undefined;
  }

  private append(samples: Float32Array): void {
    const pad = this.mel.options.nFft / 2;
    if (this.headLength < this.head.length) {
      const n = Math.min(this.head.length - this.headLength, samples.length);
      this.head.set(samples.subarray(0, n), this.headLength);
      this.headLength += n;
    }
    // Keep only what the next frame can still reach.
    const keepFrom = Math.max(0, this.nextFrame * this.mel.options.hopLength - pad);
    if (keepFrom > this.bufferStart) {
      const drop = Math.min(keepFrom - this.bufferStart, this.bufferLength);
      this.buffer.copyWithin(0, drop, this.bufferLength);
      this.bufferLength -= drop;
      this.bufferStart += drop;
    }
    if (this.bufferLength + samples.length > this.buffer.length) {
      const grown = new Float32Array(Math.max(this.buffer.length * 2, this.bufferLength + samples.length));
      grown.set(this.buffer.subarray(0, this.bufferLength));
      this.buffer = grown;
    }
    this.buffer.set(samples, this.bufferLength);
    this.bufferLength += samples.length;
    this.total += samples.length;
  }

  /** x[k] with the extractor's reflect padding at both ends (the right end only once flushed). */
  private sample(k: number): number {
    if (k < 0) k = -k;
    if (this.flushed && k >= this.total) k = 2 * (this.total - 1) - k;
    return k <= this.head.length - 1 && k < this.bufferStart ? this.head[k] : this.buffer[k - this.bufferStart];
  }

  private emit(upTo: number): tf.Tensor2D | undefined {
    const n = upTo - this.nextFrame;
    if (n <= 0) return undefined;
    const { nFft, hopLength } = this.mel.options;
    const pad = nFft / 2;
    // The samples windows nextFrame … upTo−1 cover, with the reflect padding applied at either end.
    const from = this.nextFrame * hopLength - pad;
    const region = new Float32Array((n - 1) * hopLength + nFft);
    if (from >= 0 && from + region.length <= this.total) region.set(this.buffer.subarray(from - this.bufferStart, from - this.bufferStart + region.length));
    else for (let k = 0; k < region.length; k++) region[k] = this.sample(from + k);
    this.nextFrame = upTo;
    return tf.tidy(() => {
      const raw = this.mel.logMelOfWindows(region, 0, n);
      let reference: tf.Scalar | number;
      if (this.reference === 'running-max') {
        const chunkMax = tf.max(raw) as tf.Scalar;
        const previous = this.runningMax;
        reference = tf.keep(previous ? (tf.maximum(previous, chunkMax) as tf.Scalar) : chunkMax);
        previous?.dispose();
        this.runningMax = reference;
      } else reference = this.reference.fixed;
      return tf.transpose(normalizeLogMel(raw, reference)) as tf.Tensor2D;
    });
  }
}
