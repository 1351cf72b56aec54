/**
 * SIMD matmul kernels (`npm run bench -- simd`): omniflow's kernels (float32 and packed bf16 weights) against
 * tf.matMul for 1–16 rows over [4096, 4096] and [1024, 3072] weights, called directly so every row count shows the
 * kernel itself (float32: the streaming row kernels for 1–3 rows, the register-blocked kernel from BLOCKED_MIN_ROWS = 4;
 * matMulSmall hands more than SIMD_MATMUL_MAX_ROWS = 16 rows to tf.matMul). Process CPU time, best and median of 15
 * calls, the three interleaved in one run so they see the same machine. `parallel`: ParallelMatMul (W split by columns
 * over the cores) against matMulSmall for M = 1-16 over [4096, 4096], wall and CPU time (CPU time counts the worker
 * threads too, so it shows the work, and wall time the gain).
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, matMulSmall, OMNIFLOW_MATMUL_INT8, packBf16, packInt8, ParallelMatMul, registerInt8Kernel, registerSimdKernels } from '@omniflow/runtime-gpu';

function cpuMs(fns: Record<string, () => void>, repeats = 15): Record<string, { bestMs: number; medianMs: number }> {
  const times: Record<string, number[]> = {};
  for (const f of Object.values(fns)) for (let i = 0; i < 3; i++) f();
  for (let r = 0; r < repeats; r++) {
    for (const [name, f] of Object.entries(fns)) {
      const c0 = process.cpuUsage();
      f();
      const c = process.cpuUsage(c0);
      (times[name] ??= []).push((c.user + c.system) / 1000);
    }
  }
  return Object.fromEntries(
    Object.entries(times).map(([name, t]) => {
      t.sort((a, b) => a - b);
      return [name, { bestMs: +t[0]!.toFixed(3), medianMs: +t[t.length >> 1]!.toFixed(3) }];
    }),
  );
}

export async function run(): Promise<object> {
  const backend = await initBackend();
  if (backend.name !== 'wasm') return { backend: backend.name, skipped: 'the SIMD kernels run on the wasm backend only' };
  registerSimdKernels();
  const attrs = { alpha: 1, activation: 'linear' };
  const shapes: Record<string, unknown> = {};
  for (const [K, N] of [[4096, 4096], [1024, 3072]] as const) {
    const w = tf.tidy(() => tf.randomUniform([K, N], -1, 1, 'float32', 1) as tf.Tensor2D);
    const packed = packBf16(w);
    const rows: Record<string, unknown> = {};
    for (const M of [1, 2, 3, 4, 8, 16]) {
      const x = tf.randomUniform([M, K], -1, 1, 'float32', M) as tf.Tensor2D;
      const t = cpuMs({
        tfjs: () => tf.matMul(x, w).dispose(),
        simd: () => (tf.engine().runKernel('OmniflowMatMul', { x, w }, attrs) as tf.Tensor).dispose(),
        simdBf16: () => (tf.engine().runKernel('OmniflowMatMulBf16', { x, w: packed }, attrs) as tf.Tensor).dispose(),
      });
      rows[`M=${M}`] = { ...t, simdSpeedup: +(t.tfjs!.bestMs / t.simd!.bestMs).toFixed(2), bf16Speedup: +(t.tfjs!.bestMs / t.simdBf16!.bestMs).toFixed(2) };
      x.dispose();
    }
    const one = rows['M=1'] as Record<string, { bestMs: number }>;
    shapes[`${K}x${N}`] = { ...rows, matvecGBps: { tfjs: +((K * N * 4) / one.tfjs!.bestMs / 1e6).toFixed(2), simd: +((K * N * 4) / one.simd!.bestMs / 1e6).toFixed(2), bf16BytesRead: +((K * N * 2) / one.simdBf16!.bestMs / 1e6).toFixed(2) } };
    tf.dispose([w, packed]);
  }
  return { backend: backend.name, timing: 'process CPU time per call, best and median of 15', shapes, parallel: parallelSweep(), int8: int8Sweep() };
}

/** Wall and process CPU ms per call (medians of `repeats`), the functions interleaved. */
function wallAndCpuMs(fns: Record<string, () => void>, repeats = 15): Record<string, { wallMs: number; cpuMs: number }> {
  const times: Record<string, Array<{ wall: number; cpu: number }>> = {};
  for (const f of Object.values(fns)) for (let i = 0; i < 3; i++) f();
  for (let r = 0; r < repeats; r++) {
    for (const [name, f] of Object.entries(fns)) {
      const c0 = process.cpuUsage(), t0 = performance.now();
      f();
      const wall = performance.now() - t0, c = process.cpuUsage(c0);
      (times[name] ??= []).push({ wall, cpu: (c.user + c.system) / 1000 });
    }
  }
  const med = (xs: number[]) => +xs.sort((a, b) => a - b)[xs.length >> 1]!.toFixed(3);
  return Object.fromEntries(Object.entries(times).map(([name, t]) => [name, { wallMs: med(t.map((x) => x.wall)), cpuMs: med(t.map((x) => x.cpu)) }]));
}

/** ParallelMatMul vs matMulSmall over [4096, 4096]; from PARALLEL_MIN_ROWS rows ParallelMatMul splits the columns. */
function parallelSweep(): Record<string, unknown> {
  const K = 4096, N = 4096;
  const w = tf.tidy(() => tf.randomUniform([K, N], -1, 1, 'float32', 1) as tf.Tensor2D);
  const parallel = new ParallelMatMul(w).waitReady();
  // The same object forced to split one row too: shows why one row stays on the calling thread.
  const splitAll = new ParallelMatMul(w, { parallelFromRows: 1 }).waitReady();
  const rows: Record<string, unknown> = {};
  for (const M of [1, 2, 4, 8, 16]) {
    const x = tf.randomUniform([M, K], -1, 1, 'float32', M) as tf.Tensor2D;
    const t = wallAndCpuMs({
      matMulSmall: () => matMulSmall(x, w).dispose(),
      parallel: () => parallel.apply(x).dispose(),
      ...(M < parallel.parallelFromRows ? { splitAnyway: () => splitAll.apply(x).dispose() } : {}),
    });
    rows[`M=${M}`] = { ...t, wallSpeedup: +(t.matMulSmall!.wallMs / t.parallel!.wallMs).toFixed(2) };
    x.dispose();
  }
  parallel.dispose();
  splitAll.dispose();
  w.dispose();
  return { weights: `[${K}, ${N}] float32`, threads: parallel.threads, parallelFromRows: parallel.parallelFromRows, timing: 'median of 15, wall and process CPU (all threads)', rows };
}

/**
 * int8 weights (packInt8) against the float32 and bf16 kernels over [M, 4096]·[4096, 4096], M = 1-256 (decode to
 * prefill): process CPU ms (best and median of 15, interleaved), and for each M the int8 kernel's GB/s of its own
 * bytes and of the float32 bytes it stands for (the figure to hold against the float32 kernel's). `int8Panels` is the
 * same weight in the 'panels' packing (for many rows), with `panelsGmacs` its multiply-adds per second.
 */
function int8Sweep(): Record<string, unknown> {
  const K = 4096, N = 4096;
  registerInt8Kernel();
  const attrs = { alpha: 1, activation: 'linear' };
  const w = tf.tidy(() => tf.randomUniform([K, N], -1, 1, 'float32', 1) as tf.Tensor2D);
  const bf16 = packBf16(w), int8 = packInt8(w), panels = packInt8(w, undefined, undefined, 'in-out', 'panels');
  const int8Bytes = N * (K + 4), f32Bytes = K * N * 4;
  const rows: Record<string, unknown> = {};
  for (const M of [1, 2, 3, 4, 8, 16, 64, 256]) {
    const x = tf.randomUniform([M, K], -1, 1, 'float32', M) as tf.Tensor2D;
    const t = cpuMs(
      {
        // float32: omniflow's kernel up to 16 rows, tf.matMul above (what matMulSmall runs)
        f32: () => (M <= 16 ? (tf.engine().runKernel('OmniflowMatMul', { x, w }, attrs) as tf.Tensor) : tf.matMul(x, w)).dispose(),
        bf16: () => (tf.engine().runKernel('OmniflowMatMulBf16', { x, w: bf16 }, attrs) as tf.Tensor).dispose(),
        int8: () => (tf.engine().runKernel(OMNIFLOW_MATMUL_INT8, { x, w: int8 }, { ...attrs, N }) as tf.Tensor).dispose(),
        int8Panels: () => (tf.engine().runKernel(OMNIFLOW_MATMUL_INT8, { x, w: panels }, { ...attrs, N }) as tf.Tensor).dispose(),
      },
      M >= 64 ? 5 : 15,
    );
    const ms = t.int8!.bestMs;
    rows[`M=${M}`] = {
      ...t, int8GBps: +(int8Bytes / ms / 1e6).toFixed(2), int8Float32EquivalentGBps: +(f32Bytes / ms / 1e6).toFixed(2), int8SpeedupOverF32: +(t.f32!.bestMs / ms).toFixed(2),
      panelsGmacs: +((M * K * N) / t.int8Panels!.bestMs / 1e6).toFixed(1), panelsSpeedupOverRows: +(ms / t.int8Panels!.bestMs).toFixed(2),
    };
    x.dispose();
  }
  tf.dispose([w, bf16, int8, panels]);
  return { weights: `[${K}, ${N}]: int8 ${(int8Bytes / 2 ** 20).toFixed(1)} MiB, bf16 32 MiB, float32 64 MiB`, rows };
}
