import * as tf from '@tensorflow/tfjs-core';
import { afterEach, describe, expect, it } from 'vitest';
import { initBackend } from './backend.js';

// Each test file runs in its own process (vitest forks), so the backend state here is this file's.
afterEach(() => {
  delete process.env.OMNIFLOW_BACKEND;
});

const matmul = () => tf.tidy(() => Array.from(tf.matMul(tf.tensor2d([[1, 2]]), tf.tensor2d([[3], [4]])).dataSync()));

describe('initBackend', () => {
  it('falls back to wasm when tfjs-node is absent and says why', async () => {
    const [r, again] = await Promise.all([initBackend(), initBackend()]); // racing callers share one init
    expect(again).toBe(r);
    expect(r.name).toBe('wasm');
    expect(r.reason).toBe('first available (tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed)');
    expect(r.skipped.map((s) => s.name)).toEqual(['tensorflow']);
    expect(tf.getBackend()).toBe('wasm');
    expect(matmul()).toEqual([11]);
    expect(await initBackend()).toBe(r); // once
  });

  it('is forced by option or OMNIFLOW_BACKEND, and the results agree', async () => {
    const onWasm = tf.tidy(() => Array.from(tf.softmax(tf.tensor1d([0.5, -1, 2])).dataSync()));
    const cpu = await initBackend({ backend: 'cpu' });
    expect([cpu.name, cpu.reason, tf.getBackend()]).toEqual(['cpu', 'forced by option', 'cpu']);
    const onCpu = tf.tidy(() => Array.from(tf.softmax(tf.tensor1d([0.5, -1, 2])).dataSync()));
    onCpu.forEach((v, i) => expect(v).toBeCloseTo(onWasm[i], 6));
    process.env.OMNIFLOW_BACKEND = 'wasm';
    const wasm = await initBackend();
    expect([wasm.name, wasm.reason, tf.getBackend()]).toEqual(['wasm', 'forced by OMNIFLOW_BACKEND', 'wasm']);
  });

  it('names a bad or unavailable forced backend', async () => {
    process.env.OMNIFLOW_BACKEND = 'webgpu';
    await expect(initBackend()).rejects.toThrow("OMNIFLOW_BACKEND is 'webgpu', which is not one of tensorflow, wasm, cpu");
    delete process.env.OMNIFLOW_BACKEND;
    await expect(initBackend({ backend: 'tensorflow' })).rejects.toThrow('no tensor backend could be initialised: tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed');
  });
});
