/**
 * The machine's own memory bandwidth, measured with a plain Float32Array triad (a[i] = b[i] + s*c[i])
 * over arrays far larger than the caches. Benchmarks report effective bandwidth next to this figure.
 */
export function measureTriadBandwidth(options: { megabytes?: number; repeats?: number } = {}): { gbPerSecond: number; arrayMiB: number } {
  const n = ((options.megabytes ?? 128) * 2 ** 20) / 4;
  const a = new Float32Array(n), b = new Float32Array(n).fill(1), c = new Float32Array(n).fill(2);
  a.fill(0); // first touch outside the timed region
  let best = Infinity;
  for (let r = 0; r < (options.repeats ?? 5); r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) a[i] = b[i] + 0.5 * c[i];
    best = Math.min(best, performance.now() - t0);
  }
  return { gbPerSecond: +((3 * n * 4) / (best / 1000) / 1e9).toFixed(2), arrayMiB: (n * 4) / 2 ** 20 };
}

/** Median of `repeats` timings (ms) of `fn` after `warmup` untimed calls. */
export async function medianMs(fn: () => unknown | Promise<unknown>, repeats = 7, warmup = 2): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((x, y) => x - y);
  return times[Math.floor(times.length / 2)];
}
