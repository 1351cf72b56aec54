/** Test-signal helpers shared by the media tests, examples and benchmarks (not exported from the package). */

/** A sine of `freq` Hz at `sampleRate`, `amplitude` peak. */
export function sine(freq: number, sampleRate: number, frames: number, amplitude = 0.5, phase = 0): Float32Array {
  return Float32Array.from({ length: frames }, (_, i) => amplitude * Math.sin(2 * Math.PI * freq * (i / sampleRate) + phase));
}

export function rms(x: ArrayLike<number>, from = 0, to = x.length): number {
  let s = 0;
  for (let i = from; i < to; i++) s += x[i] * x[i];
  return Math.sqrt(s / Math.max(1, to - from));
}

/**
 * Dominant frequency of a signal: the peak of its Goertzel power over 1 Hz steps in [lo, hi], refined by a
 * parabola through the neighbours. Slow but exact enough to recover a decoded sine within ~1 Hz.
 */
export function dominantFrequency(x: Float32Array, sampleRate: number, lo = 20, hi = sampleRate / 2 - 1): number {
  const n = Math.min(x.length, sampleRate); // at most one second: 1 Hz bins
  const power = (f: number): number => {
    const w = (2 * Math.PI * f) / sampleRate;
    const c = 2 * Math.cos(w);
    let s1 = 0, s2 = 0;
    for (let i = 0; i < n; i++) {
      const s0 = x[i] + c * s1 - s2;
      s2 = s1;
      s1 = s0;
    }
    return s1 * s1 + s2 * s2 - c * s1 * s2;
  };
  // Coarse scan in 10 Hz steps, then 1 Hz around the best, then a parabolic refinement.
  let best = lo, bestP = -1;
  for (let f = lo; f <= hi; f += 10) { const p = power(f); if (p > bestP) { bestP = p; best = f; } }
  let fine = best;
  for (let f = Math.max(lo, best - 10); f <= Math.min(hi, best + 10); f += 1) { const p = power(f); if (p >= bestP) { bestP = p; fine = f; } }
  const a = power(fine - 1), b = power(fine), c = power(fine + 1);
  const denom = a - 2 * b + c;
  return denom === 0 ? fine : fine + (0.5 * (a - c)) / denom;
}
