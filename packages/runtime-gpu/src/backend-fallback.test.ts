import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it, vi } from 'vitest';
import { initBackend } from './backend.js';

describe('initBackend when wasm cannot start', () => {
  it('falls back to cpu and reports both failures', async () => {
    // The wasm binary cannot be found (as after a bundler moved it): its init fails, cpu is last.
    const quiet = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    const quietErr = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const quietLog = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    const r = await initBackend({ wasmPaths: '/nonexistent/omniflow-wasm' });
    quiet.mockRestore();
    quietErr.mockRestore();
    quietLog.mockRestore();
    expect(r.name).toBe('cpu');
    expect(r.skipped.map((s) => s.name)).toEqual(['tensorflow', 'wasm']);
    expect(r.reason).toContain("wasm: tf.setBackend('wasm') returned false");
    expect(tf.getBackend()).toBe('cpu');
  });
});
