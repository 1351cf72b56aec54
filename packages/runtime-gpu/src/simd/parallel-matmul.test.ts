import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend.js';
import { packBf16, unpackBf16 } from './bf16.js';
import { defaultChunkWidths, ParallelMatMul, PARALLEL_MIN_ROWS } from './parallel-matmul.js';
import { lcgValues as values, maxAbsDiff } from '../testing/values.js';

/** tf.matMul and plain ops: the definition apply must agree with. */
function expected(x: tf.Tensor2D, w: tf.Tensor2D, bias: tf.Tensor1D | undefined, alpha: number, relu: boolean): tf.Tensor2D {
  return tf.tidy(() => {
    let y: tf.Tensor2D = tf.mul(tf.matMul(x, w), tf.scalar(alpha));
    if (bias) y = tf.add(y, bias);
    return relu ? tf.relu(y) : y;
  });
}

/** Blocks this thread (no event loop turns), as a long apply would. */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const made: ParallelMatMul[] = [];
/** A ParallelMatMul the test's afterEach disposes. */
function make(w: tf.Tensor2D, options?: ConstructorParameters<typeof ParallelMatMul>[1]): ParallelMatMul {
  const mm = new ParallelMatMul(w, options);
  made.push(mm);
  return mm;
}
afterEach(() => made.splice(0).forEach((mm) => mm.dispose()));

beforeAll(async () => {
  await initBackend();
  await import('@tensorflow/tfjs-backend-cpu');
});

// The product runs in omniflow's own kernels over a memory the object owns: the tfjs backend only holds x and y.
describe.each(['wasm', 'cpu'])('ParallelMatMul with tfjs on %s', (backend) => {
  beforeAll(async () => {
    await tf.setBackend(backend);
  });

  // 1-3 rows: the streaming kernels on the calling thread; 4+: the blocked kernel split across threads.
  it.each([2, 3])('equals tf.matMul (+ alpha, bias, relu) for 1-16 rows and odd N, %i threads', (threads) => {
    const start = tf.memory().numTensors;
    for (const [K, N] of [[64, 1000], [130, 37], [7, 19]] as Array<[number, number]>) {
      const w = tf.tensor2d(values(K * N, K * 7 + N), [K, N]);
      const b = tf.tensor1d(values(N, N + 3));
      const mm = make(w, { threads });
      expect([mm.K, mm.N, mm.threads, mm.format]).toEqual([K, N, threads, 'float32']);
      for (const M of [1, 3, 4, 8, 13, 16]) {
        tf.tidy(() => {
          const x = tf.tensor2d(values(M * K, M + K), [M, K]);
          const tol = 2e-6 * Math.sqrt(K) + 1e-6;
          expect(maxAbsDiff(mm.apply(x), tf.matMul(x, w)), `plain M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(tol);
          const fancy = mm.apply(x, { bias: b, alpha: 0.75, activation: 'relu' });
          expect(maxAbsDiff(fancy, expected(x, w, b, 0.75, true)), `fused M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(tol);
          expect(maxAbsDiff(mm.apply(x, { alpha: -2 }), expected(x, w, undefined, -2, false)), `alpha M=${M}`).toBeLessThanOrEqual(2 * tol);
          // relu clipped something
          if (M * N >= 100) expect((fancy.dataSync() as Float32Array).filter((v) => v === 0).length / (M * N)).toBeGreaterThan(0.3);
        });
      }
      tf.dispose([w, b]);
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  it('runs more rows than maxRows in chunks, keeps leading axes, and splits few rows when told to', () => {
    const start = tf.memory().numTensors;
    tf.tidy(() => {
      const K = 33, N = 50;
      const w = tf.tensor2d(values(K * N, 11), [K, N]);
      const chunked = make(w, { threads: 2, maxRows: 5 });
      for (const M of [6, 17, 40]) {
        const x = tf.tensor2d(values(M * K, M), [M, K]);
        expect(maxAbsDiff(chunked.apply(x), tf.matMul(x, w)), `M=${M} in chunks of 5`).toBeLessThan(1e-5);
      }
      const x3 = tf.tensor3d(values(2 * 3 * K, 2), [2, 3, K]);
      expect(maxAbsDiff(chunked.apply(x3), tf.reshape(tf.matMul(tf.reshape(x3, [6, K]), w), [2, 3, N]))).toBeLessThan(1e-5);
      expect(chunked.apply(tf.tensor1d(values(K, 3))).shape).toEqual([N]);
      expect(chunked.apply(tf.zeros([0, K])).shape).toEqual([0, N]);
      // 1-3 rows on the workers too (the streaming kernels there)
      expect(PARALLEL_MIN_ROWS).toBeGreaterThan(1);
      const everyRow = make(w, { threads: 3, parallelFromRows: 1 });
      for (const M of [1, 2, 3, 5]) {
        const x = tf.tensor2d(values(M * K, 50 + M), [M, K]);
        expect(maxAbsDiff(everyRow.apply(x), tf.matMul(x, w)), `M=${M} split`).toBeLessThan(1e-5);
      }
      // one thread: no workers at all
      const x = tf.tensor2d(values(8 * K, 9), [8, K]);
      const alone = make(w, { threads: 1 });
      expect(maxAbsDiff(alone.apply(x), tf.matMul(x, w))).toBeLessThan(1e-5);
      expect(alone.chunksRun()).toEqual([alone.chunkCount]);
    });
    expect(tf.memory().numTensors).toBe(start);
  });

  it('runs every chunk exactly once on the workers alone (callerRuns false), streaming and blocked', () => {
    const start = tf.memory().numTensors;
    tf.tidy(() => {
      const K = 70, N = 333;
      const w = tf.tensor2d(values(K * N, 21), [K, N]);
      const b = tf.tensor1d(values(N, 22));
      const mm = make(w, { threads: 3, parallelFromRows: 1, callerRuns: false });
      let expectedChunks = 0;
      for (const M of [1, 3, 4, 11, 16]) {
        const x = tf.tensor2d(values(M * K, 40 + M), [M, K]);
        expect(maxAbsDiff(mm.apply(x, { bias: b, alpha: 0.5, activation: 'relu' }), expected(x, w, b, 0.5, true)), `M=${M}`).toBeLessThan(1e-5);
        expectedChunks += mm.chunkCount;
      }
      const ran = mm.chunksRun();
      expect(ran[0]).toBe(0);
      expect(ran[1]! + ran[2]!).toBe(expectedChunks);
    });
    expect(tf.memory().numTensors).toBe(start);
  });

  it('takes packed bf16 weights and equals the float32 product over the unpacked weight', () => {
    const start = tf.memory().numTensors;
    tf.tidy(() => {
      for (const [K, N] of [[17, 6], [130, 1002], [9, 18]] as Array<[number, number]>) {
        const packed = packBf16(tf.tensor2d(values(K * N, K + N * 5), [K, N]));
        const w = unpackBf16(packed);
        const b = tf.tensor1d(values(N, 9));
        const mm = make(packed, { threads: 3 });
        expect([mm.K, mm.N, mm.format]).toEqual([K, N, 'bf16']);
        for (const M of [1, 3, 4, 8, 13]) {
          const x = tf.tensor2d(values(M * K, M * 31 + K), [M, K]);
          const tol = 2e-6 * Math.sqrt(K) + 1e-6;
          expect(maxAbsDiff(mm.apply(x, { bias: b, alpha: 1.5, activation: 'relu' }), expected(x, w, b, 1.5, true)), `M=${M} K=${K} N=${N}`).toBeLessThanOrEqual(2 * tol);
        }
      }
    });
    expect(tf.memory().numTensors).toBe(start);
  });
});

describe('ParallelMatMul errors and lifetime', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('names what does not fit', () => {
    tf.tidy(() => {
      const w = tf.tensor2d(values(4 * 6, 1), [4, 6]);
      expect(() => new ParallelMatMul(tf.zeros([4]) as unknown as tf.Tensor2D)).toThrow('ParallelMatMul: W must be float32 [K, N] or packed bf16 int32 [K, N/2] (packBf16), got float32 [4]');
      expect(() => new ParallelMatMul(w, { threads: 0 })).toThrow('ParallelMatMul: threads must be an integer in 1..16, got 0');
      expect(() => new ParallelMatMul(w, { threads: 1, callerRuns: false })).toThrow('callerRuns false needs threads >= 2');
      const mm = make(w, { threads: 2 });
      expect(() => mm.apply(tf.zeros([1, 5]))).toThrow("ParallelMatMul.apply: x's last axis must match W's 4 rows, got x [1,5] and W [4, 6]");
      expect(() => mm.apply(tf.zeros([1, 4], 'int32'))).toThrow('x must be float32, got int32 [1,4]');
      expect(() => mm.apply(tf.zeros([1, 4]), { bias: tf.zeros([5]) as tf.Tensor1D })).toThrow('bias must be float32 [6] for W [4, 6], got float32 [5]');
      expect(() => mm.apply(tf.zeros([1, 4]), { alpha: NaN })).toThrow('alpha must be a finite number, got NaN');
      expect(() => mm.apply(tf.zeros([1, 4]), { activation: 'gelu' as 'relu' })).toThrow("activation 'gelu' is not one of linear, relu");
    });
  });

  it('throws after dispose, and dispose is idempotent', () => {
    const start = tf.memory().numTensors;
    const w = tf.tensor2d(values(8 * 8, 2), [8, 8]);
    const mm = new ParallelMatMul(w, { threads: 2 });
    w.dispose(); // W was copied: the tensor is not needed any more
    const x = tf.tensor2d(values(4 * 8, 3), [4, 8]);
    mm.apply(x).dispose();
    mm.dispose();
    mm.dispose();
    expect(() => mm.apply(x)).toThrow('ParallelMatMul.apply: used after dispose()');
    x.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  it('uses a new bias tensor, not the copy of the last one', () => {
    tf.tidy(() => {
      const w = tf.tensor2d(values(8 * 12, 4), [8, 12]);
      const x = tf.tensor2d(values(4 * 8, 5), [4, 8]);
      const mm = make(w, { threads: 2 });
      for (const seed of [6, 7]) {
        const b = tf.tensor1d(values(12, seed));
        expect(maxAbsDiff(mm.apply(x, { bias: b }), expected(x, w, b, 1, false))).toBeLessThan(1e-5);
      }
    });
  });

  it('finishes without a worker that died unseen, throws once its exit is seen, and times out when nobody is left', async () => {
    const w = tf.tensor2d(values(16 * 40, 8), [16, 40]);
    const x = tf.tensor2d(values(8 * 16, 9), [8, 16]);
    const worker = (mm: ParallelMatMul) => (mm as unknown as { workers: Array<{ worker: { terminate(): Promise<number> } }> }).workers[0]!.worker;

    const mm = make(w, { threads: 2, timeoutMs: 2000 }).waitReady();
    mm.apply(x).dispose();
    void worker(mm).terminate();
    sleepSync(200); // the worker is gone, but this thread has not run its exit event: the caller takes every chunk
    const t0 = performance.now();
    tf.tidy(() => {
      expect(maxAbsDiff(mm.apply(x), tf.matMul(x, w))).toBeLessThan(1e-5);
    });
    expect(performance.now() - t0).toBeLessThan(1000);
    await new Promise((resolve) => setTimeout(resolve, 50)); // the exit event runs
    expect(() => mm.apply(x)).toThrow(/^ParallelMatMul.apply: worker thread 1 exited with code 1; dispose\(\) it and make a new one$/);
    expect(() => mm.waitReady()).toThrow(/^ParallelMatMul.waitReady: worker thread 1 exited/);

    // With the chunks left to the workers, a dead one means nobody runs them: apply times out instead of hanging.
    const left = make(w, { threads: 2, callerRuns: false, timeoutMs: 300 }).waitReady();
    left.apply(x).dispose();
    void worker(left).terminate();
    sleepSync(200);
    const t1 = performance.now();
    expect(() => left.apply(x)).toThrow('ParallelMatMul.apply: a worker thread did not finish its chunk within 300 ms (its thread died or is stuck)');
    expect(performance.now() - t1).toBeLessThan(2000);
    expect(() => left.apply(x)).toThrow(/did not finish its chunk within 300 ms .*; dispose\(\) it and make a new one/);
    tf.dispose([w, x]);
  });

  it('cuts W into whole groups of 8 columns: wide then narrow by default, or chunksPerThread equal ones', () => {
    expect(defaultChunkWidths(4096, 2)).toEqual([1792, 1792, 256, 256]);
    expect(defaultChunkWidths(1000, 2)).toEqual([432, 432, 72, 64]);
    expect(defaultChunkWidths(1000, 3)).toEqual([288, 288, 288, 48, 48, 40]);
    expect(defaultChunkWidths(100, 2)).toEqual([56, 44]); // too narrow to split further
    const w = tf.zeros([3, 1000]) as tf.Tensor2D;
    expect(make(w, { threads: 2 }).chunkCount).toBe(4);
    expect(make(w, { threads: 2, chunksPerThread: 4 }).chunkCount).toBe(8); // 8 chunks of 128 columns (the last 104)
    expect(make(w, { threads: 3, chunksPerThread: 1 }).chunkCount).toBe(3); // 336, 336, 328
    expect(make(tf.zeros([3, 20]) as tf.Tensor2D, { threads: 3 }).chunkCount).toBe(3); // 8, 8, 4: never narrower than 8
    expect(() => make(w, { threads: 2, chunksPerThread: 200 })).toThrow('ParallelMatMul: chunksPerThread must be an integer in 1..127, got 200');
    expect(() => make(w, { chunkWidths: [500, 500] })).toThrow('ParallelMatMul: chunkWidths must be 1..255 widths, multiples of 8 but the last, summing to N = 1000; got [500, 500]');
    expect(() => make(w, { chunkWidths: [512, 480] })).toThrow(/summing to N = 1000; got \[512, 480\]/);
    w.dispose();
  });

  it('takes chunks of any widths (wide first, narrow last)', () => {
    tf.tidy(() => {
      const K = 40, N = 1003;
      const w = tf.tensor2d(values(K * N, 31), [K, N]);
      const mm = make(w, { threads: 2, chunkWidths: [400, 400, 96, 104, 3] });
      expect(mm.chunkCount).toBe(5);
      for (const M of [2, 8]) {
        const x = tf.tensor2d(values(M * K, 32 + M), [M, K]);
        expect(maxAbsDiff(mm.apply(x), tf.matMul(x, w)), `M=${M}`).toBeLessThan(1e-5);
      }
    });
  });

  it('does not keep the process alive when dispose() is forgotten', () => {
    const source = fileURLToPath(new URL('./parallel-matmul.ts', import.meta.url));
    const script = `
      import * as tf from '@tensorflow/tfjs-core';
      import '@tensorflow/tfjs-backend-cpu';
      const { ParallelMatMul } = await import(${JSON.stringify(source)});
      await tf.setBackend('cpu');
      const mm = new ParallelMatMul(tf.ones([8, 8]), { threads: 2 });
      console.log(mm.apply(tf.ones([4, 8])).dataSync()[0]);
    `;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000, cwd: fileURLToPath(new URL('.', import.meta.url)) });
    expect(child.error, child.stderr).toBeUndefined();
    expect(child.status, child.stderr).toBe(0);
    expect(child.stdout.trim()).toBe('8');
  });
});
