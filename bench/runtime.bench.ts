/**
 * Runtime benchmarks (`npm run bench -- runtime`), each against a baseline measured in the same run
 * on the default backend:
 * - fusion: 4 small kernel nodes over 20 ms audio chunks in a compiled graph, fused vs unfused;
 * - batching: a matvec-heavy stage serving 8 sessions, batched (ParallelMatMul: both cores) vs one by one;
 * - bandwidth: a 4096x4096 matvec's effective bandwidth (omniflow's SIMD kernel, float32 and bf16, and tf.matMul)
 *   next to a plain-array triad's;
 * - weights: loading a 1 GB BF16 safetensors file (seconds, peak RSS in a child process);
 * - kvCache: decode-style appends, in place vs rebuilding by concat;
 * - workers: a chunky stage on two worker threads vs the main thread, and a tiny stage's round trip.
 */
import * as tf from '@tensorflow/tfjs-core';
import { tensorPacket, type Packet, type TensorHandle, type TensorPacket } from '@omniflow/core';
import {
  cachedAttention,
  Checkpoint,
  fuseChain,
  initBackend,
  type FusedStep,
  type KernelNode,
  KVCache,
  matMulBf16,
  matMulInt8,
  matMulSmall,
  packBf16,
  packInt8,
  ParallelMatMul,
  simdMatMulMaxRows,
  BLOCKED_MIN_ROWS,
  tensorBatchStage,
  tensorFuser,
  WorkerStage,
  writeSafetensors,
  type TensorToWrite,
} from '@omniflow/runtime-gpu';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { from, lastValueFrom, merge, toArray } from 'rxjs';
import { audioChunks, kernelChainGraph } from '../packages/runtime-gpu/src/testing/kernel-chain.js';
import { measureTriadBandwidth, medianMs } from './memory.js';

const here = fileURLToPath(import.meta.url);

// ------------------------------------------------------------------------------------------------
// Fusion: the same compiled graph with and without the fuser.

async function fusion() {
  const chain = kernelChainGraph(256);
  // 2000 chunks (~0.1 s a run) and 7 alternating runs: at 300 chunks a run lasted ~20 ms and one GC
  // or a neighbour's burst decided the ratio.
  const chunks = 2000, runs = 7;
  const once = async (fuse: boolean) => {
    const session = chain.graph.session({ fuser: tensorFuser(), fuse });
    session.output('y').subscribe((p: Packet) => (p as TensorPacket).tensor.dispose());
    const input = session.input('x');
    const inputs = audioChunks(chunks); // built outside the timed region
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const done = session.start();
    inputs.forEach((t, i) => input.push(tensorPacket({ name: 'pcm', pts: i * 20_000, tensor: t })));
    input.complete();
    await done;
    const cpu = process.cpuUsage(c0);
    return { wall: (performance.now() - t0) / chunks, cpu: (cpu.user + cpu.system) / 1000 / chunks };
  };
  const fusedRuns: Array<{ wall: number; cpu: number }> = [], unfusedRuns: Array<{ wall: number; cpu: number }> = [];
  await once(true);
  await once(false);
  for (let r = 0; r < runs; r++) {
    unfusedRuns.push(await once(false));
    fusedRuns.push(await once(true));
  }
  const stage = chain.graph.plan({ fuser: tensorFuser() }).stages[0];
  const kernels = stage.members.map((n) => ({ id: n.id, type: n.def.type, kernel: n.def.spec.kernel!(n.params) }));
  const fusedOp = fuseChain(kernels);
  const breakdown = kernelBreakdown(kernels, fusedOp.steps);
  chain.dispose();
  const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const fused = med(fusedRuns.map((r) => r.wall)), unfused = med(unfusedRuns.map((r) => r.wall));
  const fusedCpu = med(fusedRuns.map((r) => r.cpu)), unfusedCpu = med(unfusedRuns.map((r) => r.cpu));
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  return {
    chain: 'gain -> proj(320x256) -> bias -> relu over [1, 320] chunks (20 ms at 16 kHz)',
    plan: chain.graph.plan({ fuser: tensorFuser() }).stages.map((s) => s.id),
    fusedSteps: fusedOp.description,
    chunksPerRun: chunks,
    runs,
    unfusedMsPerChunk: +unfused.toFixed(4),
    fusedMsPerChunk: +fused.toFixed(4),
    speedup: +(unfused / fused).toFixed(2),
    // CPU time of this process: steadier than wall time when other work shares the cores.
    unfusedCpuMsPerChunk: +unfusedCpu.toFixed(4),
    fusedCpuMsPerChunk: +fusedCpu.toFixed(4),
    cpuSpeedup: +(unfusedCpu / fusedCpu).toFixed(2),
    // Where the CPU time goes (µs per chunk): each kernel called on its own outside the graph, and
    // what the graph runs add on top (queues, packets, the stage operator, disposal).
    cpuUsPerChunk: {
      unfusedKernels: breakdown.kernels,
      unfusedGraphAndPackets: +(unfusedCpu * 1000 - sum(Object.values(breakdown.kernels))).toFixed(1),
      fusedSteps: breakdown.steps,
      fusedGraphAndPackets: +(fusedCpu * 1000 - sum(Object.values(breakdown.steps))).toFixed(1),
    },
    goal: 1.3,
  };
}

/** CPU µs per call of each kernel of the chain, and of each fused step, on a [1, 320] chunk (medians of 5 × 2000 calls). */
function kernelBreakdown(kernels: KernelNode[], steps: readonly FusedStep[]) {
  const cpuUs = (f: () => tf.Tensor) => {
    const calls = 2000, reps: number[] = [];
    for (let i = 0; i < 200; i++) f().dispose();
    for (let r = 0; r < 5; r++) {
      const c0 = process.cpuUsage();
      for (let i = 0; i < calls; i++) f().dispose();
      const c = process.cpuUsage(c0);
      reps.push((c.user + c.system) / calls);
    }
    return +reps.sort((a, b) => a - b)[2].toFixed(1);
  };
  const [x] = audioChunks(1);
  const inputs: tf.Tensor[] = [x];
  for (const k of kernels) inputs.push(k.kernel(inputs[inputs.length - 1] as unknown as TensorHandle) as unknown as tf.Tensor);
  const result = {
    kernels: Object.fromEntries(kernels.map((k, i) => [k.id, cpuUs(() => k.kernel(inputs[i] as unknown as TensorHandle) as unknown as tf.Tensor)])),
    steps: Object.fromEntries(steps.map((s) => [s.nodes.join('+'), cpuUs(() => tf.tidy(() => s.run(x)))])),
  };
  tf.dispose(inputs);
  return result;
}

// ------------------------------------------------------------------------------------------------
// Batching: 8 sessions through a matvec-heavy stage, batched vs one by one.

const kernelFor = (rows: number) =>
  tf.getBackend() !== 'wasm' || rows > simdMatMulMaxRows() ? 'tf.matMul' : rows >= BLOCKED_MIN_ROWS ? 'omniflow SIMD, register-blocked' : 'omniflow SIMD, streaming';

/**
 * The same stage code (tensorBatchStage) with three `run`s: one by one through matMulSmall (the streaming kernel on the
 * tfjs heap) and through ParallelMatMul (below PARALLEL_MIN_ROWS: the same kernel on the calling thread, over W's
 * column slices in turn) — the baseline is the faster of the two — and batched through ParallelMatMul (8 rows: the
 * register-blocked kernel on every thread, W split by columns).
 */
async function batching() {
  const dim = 4096, sessions = 8, steps = 16; // 64 MiB of weights: batch-1 decoding is memory-bound
  const w = tf.tidy(() => tf.randomNormal([dim, dim], 0, 0.02, 'float32', 7) as tf.Tensor2D);
  const parallel = new ParallelMatMul(w).waitReady();
  const packets = () =>
    Array.from({ length: sessions }, (_, s) =>
      from(Array.from({ length: steps }, (_, i) => tensorPacket({ session: `s${s}`, pts: i * 80_000, name: 'h', tensor: tf.randomNormal([dim], 0, 1, 'float32', s * 1000 + i) })) as Packet[]),
    );
  const runs = {
    oneByOneSmall: { maxBatch: 1, run: (x: tf.Tensor) => matMulSmall(x, w) as tf.Tensor2D },
    oneByOneParallel: { maxBatch: 1, run: (x: tf.Tensor) => parallel.apply(x) as tf.Tensor2D },
    batched: { maxBatch: sessions, run: (x: tf.Tensor) => parallel.apply(x) as tf.Tensor2D },
  };
  const once = async ({ maxBatch, run }: { maxBatch: number; run: (x: tf.Tensor) => tf.Tensor }) => {
    const streams = packets();
    const stage = tensorBatchStage({ maxBatch, maxWaitMs: 1, run });
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const out = await lastValueFrom(merge(...streams).pipe(stage, toArray()));
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(c0);
    out.forEach((p) => p.kind === 'tensor' && p.tensor.dispose());
    return { wall: (sessions * steps) / (ms / 1000), cpu: (sessions * steps) / ((cpu.user + cpu.system) / 1e6) };
  };
  const times: Record<keyof typeof runs, Array<{ wall: number; cpu: number }>> = { oneByOneSmall: [], oneByOneParallel: [], batched: [] };
  for (const r of Object.values(runs)) await once(r);
  const batchedChunks = parallel.chunksRun().map(() => 0); // chunks each thread ran in the measured batched runs
  for (let r = 0; r < 3; r++) {
    for (const [name, run] of Object.entries(runs)) {
      const before = parallel.chunksRun();
      times[name as keyof typeof runs].push(await once(run));
      if (name === 'batched') parallel.chunksRun().forEach((n, t) => (batchedChunks[t] += n - before[t]!));
    }
  }
  // The batched result must be the product: compare one batch with tf.matMul.
  const maxAbsErrorVsTfjs = tf.tidy(() => {
    const x = tf.randomNormal([sessions, dim], 0, 1, 'float32', 3);
    return tf.max(tf.abs(tf.sub(parallel.apply(x), tf.matMul(x, w)))).dataSync()[0]!;
  });
  parallel.dispose();
  w.dispose();
  const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const wall = (xs: typeof times.batched) => med(xs.map((x) => x.wall)), cpu = (xs: typeof times.batched) => med(xs.map((x) => x.cpu));
  const smallIsBaseline = wall(times.oneByOneSmall) >= wall(times.oneByOneParallel);
  const oneByOne = smallIsBaseline ? times.oneByOneSmall : times.oneByOneParallel;
  return {
    stage: `x[B, ${dim}] · W[${dim}, ${dim}] float32 (${((dim * dim * 4) / 2 ** 20).toFixed(0)} MiB of weights) in tensorBatchStage`,
    // The baseline is the faster single-row path measured here.
    oneByOneKernel: smallIsBaseline ? `matMulSmall: ${kernelFor(1)}` : `ParallelMatMul: ${parallel.parallelFromRows > 1 ? 'omniflow SIMD, streaming, calling thread' : `split over ${parallel.threads} threads`}`,
    batchedKernel: `ParallelMatMul: omniflow SIMD, register-blocked, W split by columns over ${parallel.threads} thread(s)`,
    threads: parallel.threads,
    // How the batched runs' column chunks were shared (index 0: the calling thread; claimed, not assigned).
    batchedChunksByThread: batchedChunks,
    sessions,
    stepsPerSession: steps,
    oneByOneItemsPerSecond: +wall(oneByOne).toFixed(1),
    oneByOneCandidates: { matMulSmall: +wall(times.oneByOneSmall).toFixed(1), parallelMatMul: +wall(times.oneByOneParallel).toFixed(1) },
    batchedItemsPerSecond: +wall(times.batched).toFixed(1),
    speedup: +(wall(times.batched) / wall(oneByOne)).toFixed(2),
    // Items per CPU-second of the whole process, worker threads included (process.cpuUsage counts every thread):
    // the work saved by batching, not the second core's help; steadier than wall time when other work shares the cores.
    cpuSpeedup: +(cpu(times.batched) / cpu(oneByOne)).toFixed(2),
    maxAbsErrorVsTfjs: +maxAbsErrorVsTfjs.toPrecision(3),
    goal: 3,
  };
}

// ------------------------------------------------------------------------------------------------
// Bandwidth: batch-1 matvec against the machine's triad bandwidth, same run.

async function bandwidth() {
  const n = 4096;
  const w = tf.tidy(() => tf.randomUniform([n, n], -1, 1, 'float32', 3) as tf.Tensor2D);
  const packed = packBf16(w);
  const packed8 = packInt8(w);
  const x = tf.randomUniform([1, n], -1, 1, 'float32', 4) as tf.Tensor2D;
  // Back to back in one run, so the four see the same machine.
  const runs = {
    tfjs: () => tf.tidy(() => tf.matMul(x, w).dataSync()),
    simd: () => tf.tidy(() => matMulSmall(x, w).dataSync()),
    bf16: () => tf.tidy(() => matMulBf16(x, packed).dataSync()),
    int8: () => tf.tidy(() => matMulInt8(x, packed8).dataSync()),
  };
  const tfjsMs = await medianMs(runs.tfjs, 15, 3);
  const ms = await medianMs(runs.simd, 15, 3);
  const bf16Ms = await medianMs(runs.bf16, 15, 3);
  const int8Ms = await medianMs(runs.int8, 15, 3);
  // Process CPU time per call (median of 15): steadier than wall time when other work shares the cores.
  const cpuMs = (f: () => unknown) => {
    const t: number[] = [];
    for (let i = 0; i < 15; i++) {
      const c0 = process.cpuUsage();
      f();
      const c = process.cpuUsage(c0);
      t.push((c.user + c.system) / 1000);
    }
    return +t.sort((a, b) => a - b)[7]!.toFixed(3);
  };
  const cpu = { tfjsMatvecMs: cpuMs(runs.tfjs), matvecMs: cpuMs(runs.simd), bf16MatvecMs: cpuMs(runs.bf16), int8MatvecMs: cpuMs(runs.int8) };
  // The kernels must agree with tf.matMul (bf16: with the rounded weights, so the error is the rounding's).
  const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
  // int8: the quantization's error, next to the product's own size (max |x·W|).
  const [f32Error, bf16Error, int8Error, refMax] = tf.tidy(() => {
    const ref = tf.matMul(x, w);
    return [maxDiff(matMulSmall(x, w), ref), maxDiff(matMulBf16(x, packed), ref), maxDiff(matMulInt8(x, packed8), ref), tf.max(tf.abs(ref)).dataSync()[0]!];
  });
  tf.dispose([w, x, packed, packed8]);
  const bytes = n * n * 4, bf16Bytes = n * n * 2;
  const gbps = (b: number, t: number) => b / (t / 1000) / 1e9;
  const triad = measureTriadBandwidth();
  const matvec = gbps(bytes, ms);
  return {
    matvec: `x[1, ${n}] · W[${n}, ${n}] float32 (64 MiB)`,
    kernel: tf.getBackend() === 'wasm' ? 'omniflow SIMD (matMulSmall)' : `tf.matMul (matMulSmall falls back on ${tf.getBackend()})`,
    matvecMs: +ms.toFixed(3),
    matvecGBps: +matvec.toFixed(2),
    tfjsMatvecMs: +tfjsMs.toFixed(3),
    tfjsMatvecGBps: +gbps(bytes, tfjsMs).toFixed(2),
    speedupOverTfjs: +(tfjsMs / ms).toFixed(2),
    bf16MatvecMs: +bf16Ms.toFixed(3),
    bf16WeightBytesRead: bf16Bytes,
    bf16GBps: +gbps(bf16Bytes, bf16Ms).toFixed(2),
    // What a float32 matvec would need to reach to match it: the figure to compare with matvecGBps.
    bf16Float32EquivalentGBps: +gbps(bytes, bf16Ms).toFixed(2),
    // int8 (packInt8: n·(n + 4) bytes, scales included): its own bytes per second and the float32 figure it matches.
    int8MatvecMs: +int8Ms.toFixed(3),
    int8GBps: +gbps(n * (n + 4), int8Ms).toFixed(2),
    int8Float32EquivalentGBps: +gbps(bytes, int8Ms).toFixed(2),
    cpuTime: { ...cpu, matvecGBps: +gbps(bytes, cpu.matvecMs).toFixed(2), tfjsMatvecGBps: +gbps(bytes, cpu.tfjsMatvecMs).toFixed(2) },
    maxAbsErrorVsTfjs: { float32: f32Error, bf16: +bf16Error.toPrecision(3), int8: +int8Error.toPrecision(3), productMaxAbs: +refMax.toPrecision(3) },
    triadGBps: triad.gbPerSecond,
    triadArrayMiB: triad.arrayMiB,
    fractionOfTriad: +(matvec / triad.gbPerSecond).toFixed(2),
    tfjsFractionOfTriad: +(gbps(bytes, tfjsMs) / triad.gbPerSecond).toFixed(2),
    goal: 0.6,
  };
}

// ------------------------------------------------------------------------------------------------
// Weights: load a 1 GB BF16 file in a child process and report its peak RSS.

async function weights() {
  const dir = mkdtempSync(join(tmpdir(), 'omniflow-bench-'));
  try {
    const rows = 4096, cols = 4096, count = 32; // 32 x 32 MiB of bf16 = 1 GiB
    const pattern = new Float32Array(rows * cols);
    for (let i = 0; i < pattern.length; i++) pattern[i] = Math.sin(i * 1e-3);
    const tensors: Record<string, TensorToWrite> = {};
    for (let t = 0; t < count; t++) tensors[`model.layers.${t}.mlp.weight`] = { dtype: 'BF16', shape: [rows, cols], data: () => pattern };
    const path = join(dir, 'model.safetensors');
    const w0 = performance.now();
    writeSafetensors(path, tensors, { format: 'pt' });
    const writeSeconds = (performance.now() - w0) / 1000;
    const fileBytes = statSync(path).size;
    const child = spawnSync(process.execPath, [...process.execArgv, here], { env: { ...process.env, OMNIFLOW_BENCH_LOAD: path }, encoding: 'utf8', maxBuffer: 1 << 20 });
    if (child.status !== 0) throw new Error(`load child failed (${child.status}): ${child.stderr}`);
    const r = JSON.parse(child.stdout.trim().split('\n').pop()!) as { seconds: number; peakRssBytes: number; baselineRssBytes: number; float32Bytes: number; tensors: number; checksum: number };
    return {
      file: `${count} BF16 tensors [${rows}, ${cols}]`,
      fileGiB: +(fileBytes / 2 ** 30).toFixed(3),
      writeSeconds: +writeSeconds.toFixed(2),
      loadSeconds: +r.seconds.toFixed(2),
      loadGBpsOfFile: +(fileBytes / r.seconds / 1e9).toFixed(2),
      float32GiB: +(r.float32Bytes / 2 ** 30).toFixed(3),
      peakRssGiB: +(r.peakRssBytes / 2 ** 30).toFixed(3),
      processBaselineRssGiB: +(r.baselineRssBytes / 2 ** 30).toFixed(3),
      peakRssOverFloat32: +(r.peakRssBytes / r.float32Bytes).toFixed(3),
      goal: 1.2,
      checksum: r.checksum,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Child side: every tensor to float32 host memory through Checkpoint, all kept, like a model does. */
function loadChild(path: string): void {
  const baseline = process.memoryUsage().rss;
  const t0 = performance.now();
  const ckpt = Checkpoint.open(path);
  const kept: Float32Array[] = [];
  let float32Bytes = 0;
  for (const k of ckpt.keys()) {
    const t = ckpt.get(k);
    kept.push(t.data as Float32Array);
    float32Bytes += t.data.byteLength;
  }
  ckpt.close();
  const seconds = (performance.now() - t0) / 1000;
  let checksum = 0;
  for (const a of kept) checksum += a[12345];
  const peakRssBytes = process.resourceUsage().maxRSS * 1024;
  console.log(JSON.stringify({ seconds, peakRssBytes, baselineRssBytes: baseline, float32Bytes, tensors: kept.length, checksum: +checksum.toFixed(4) }));
}

// ------------------------------------------------------------------------------------------------
// KV cache: decode appends (one position per step, all layers), in place vs concat rebuild.

async function kvCache() {
  const layers = 8, kvHeads = 4, headDim = 128, steps = 512;
  const once = (inPlace: boolean) => {
    const cache = new KVCache({ layers, kvHeads, headDim, capacity: 64, inPlace });
    const k = tf.randomNormal([kvHeads, 1, headDim]) as tf.Tensor3D;
    const t0 = performance.now();
    for (let s = 0; s < steps; s++) for (let l = 0; l < layers; l++) cache.appendInPlace(l, k, k);
    const ms = performance.now() - t0;
    cache.dispose();
    k.dispose();
    return ms / steps;
  };
  once(true);
  once(false);
  const inPlace = once(true), rebuild = once(false);

  // One decode step of attention at 1000 cached positions (32 query heads over 4 kv heads):
  // over the buffers with masking, vs over a sliced copy of the live prefix.
  const heads = 32, length = 1000;
  const cache = new KVCache({ layers: 1, kvHeads, headDim, capacity: 1024 });
  tf.tidy(() => {
    cache.appendInPlace(0, tf.randomNormal([kvHeads, length, headDim]), tf.randomNormal([kvHeads, length, headDim]));
  });
  const q = tf.randomNormal([heads, 1, headDim]) as tf.Tensor3D;
  const overBuffers = await medianMs(() => tf.tidy(() => cachedAttention(q, cache.buffers(0)).dataSync()), 15, 3);
  const overSlices = await medianMs(
    () =>
      tf.tidy(() => {
        const b = cache.buffers(0);
        const size: [number, number, number] = [kvHeads, length, headDim];
        const sliced = { k: tf.slice(b.k, [0, 0, 0], size), v: tf.slice(b.v, [0, 0, 0], size), length, capacity: length };
        return cachedAttention(q, sliced).dataSync();
      }),
    15,
    3,
  );
  tf.dispose(q);
  cache.dispose();
  return {
    shape: `${layers} layers x ${kvHeads} kv heads x ${headDim}, ${steps} decode steps`,
    inPlaceMsPerStep: +inPlace.toFixed(4),
    concatRebuildMsPerStep: +rebuild.toFixed(4),
    speedup: +(rebuild / inPlace).toFixed(1),
    attentionAt1000: `${heads} query heads over ${kvHeads} kv heads x ${headDim}, capacity 1024`,
    attentionOverBuffersMs: +overBuffers.toFixed(3),
    attentionOverSlicedCopyMs: +overSlices.toFixed(3),
  };
}

// ------------------------------------------------------------------------------------------------
// Workers: where a second wasm instance pays.

async function workers() {
  const moduleUrl = new URL('../packages/runtime-gpu/src/testing/affine-stage.ts', import.meta.url);
  const inF = 1024, outF = 1024, rows = 64, calls = 40;
  const stages = await Promise.all([0, 1].map(() => WorkerStage.start({ module: moduleUrl, setup: { inF, outF } })));
  const tiny = await WorkerStage.start({ module: moduleUrl, setup: { inF: 8, outF: 4 } });
  try {
    const { affineWeights } = await import('../packages/runtime-gpu/src/testing/affine-stage.js');
    const { w, b } = affineWeights(inF, outF);
    const W = tf.tensor2d(w, [inF, outF]), B = tf.tensor1d(b);
    const x = () => Float32Array.from({ length: rows * inF }, (_, i) => Math.sin(i));
    const mainThread = async () => {
      const t0 = performance.now();
      for (let c = 0; c < calls; c++) tf.tidy(() => tf.relu(tf.add(tf.matMul(tf.tensor2d(x(), [rows, inF]), W), B)).dataSync());
      return (performance.now() - t0) / calls;
    };
    const twoWorkers = async () => {
      const t0 = performance.now();
      const runs: Promise<unknown>[] = [];
      for (let c = 0; c < calls; c++) runs.push(stages[c % 2].run({ x: { dtype: 'float32', shape: [rows, inF], data: x() } }));
      await Promise.all(runs);
      return (performance.now() - t0) / calls;
    };
    await mainThread();
    await twoWorkers();
    const main = await mainThread(), two = await twoWorkers();
    const roundTrip = await medianMs(() => tiny.run({ x: { dtype: 'float32', shape: [1, 8], data: new Float32Array(8) } }), 50, 10);
    const tinyLocal = await medianMs(() => tf.tidy(() => tf.relu(tf.matMul(tf.ones([1, 8]), tf.ones([8, 4]))).dataSync()), 50, 10);
    tf.dispose([W, B]);
    return {
      chunkyStage: `relu(x[${rows}, ${inF}] · W[${inF}, ${outF}] + b), ${calls} chunks`,
      mainThreadMsPerChunk: +main.toFixed(3),
      twoWorkersMsPerChunk: +two.toFixed(3),
      speedup: +(main / two).toFixed(2),
      tinyStageRoundTripMs: +roundTrip.toFixed(3),
      tinyStageOnMainThreadMs: +tinyLocal.toFixed(3),
    };
  } finally {
    await Promise.all([...stages, tiny].map((s) => s.close()));
  }
}

const parts = { fusion, batching, bandwidth, weights, kvCache, workers };

/** All parts, or those named in `OMNIFLOW_BENCH_PARTS` (comma-separated, e.g. `fusion,batching`). */
export async function run(): Promise<object> {
  const backend = await initBackend();
  const wanted = process.env.OMNIFLOW_BENCH_PARTS?.split(',').map((s) => s.trim()).filter(Boolean) ?? Object.keys(parts);
  const unknown = wanted.filter((w) => !(w in parts));
  if (unknown.length) throw new Error(`OMNIFLOW_BENCH_PARTS: unknown part(s) ${unknown.join(', ')} (have ${Object.keys(parts).join(', ')})`);
  const result: Record<string, unknown> = { backend: backend.name, backendReason: backend.reason };
  for (const name of wanted) result[name] = await parts[name as keyof typeof parts]();
  return result;
}

if (process.env.OMNIFLOW_BENCH_LOAD) loadChild(process.env.OMNIFLOW_BENCH_LOAD);
