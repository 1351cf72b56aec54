import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { mropeAxes, mropeTables } from './mrope.js';
import { applyRope, ropeInvFreq, ropeTables, ropeTensors } from './rope.js';

beforeAll(async () => {
  await initBackend();
});

describe('RoPE', () => {
  it('inverse frequencies are theta^(-2j/d)', () => {
    const inv = ropeInvFreq(8, 10000);
    expect(Array.from(inv)).toEqual([1, 0.10000000149011612, 0.009999999776482582, 0.0010000000474974513]);
  });

  it('rotates each (x_j, x_{j+d/2}) pair by position·inv_freq (rotate-half convention)', () => {
    const before = tf.memory().numTensors;
    const theta = 100, d = 4, pos = 3;
    const [cos, sin] = ropeTensors(ropeTables([pos], d, theta));
    const x = tf.tensor3d([1, 2, 3, 4], [1, 1, d]);
    const yt = applyRope(x, cos, sin);
    const y = yt.dataSync();
    // Frequency 0 rotates the pair (x0, x2) = (1, 3) by 3 rad, frequency 1 the pair (x1, x3) = (2, 4) by 0.3 rad.
    const a0 = 3, a1 = 3 * 0.1;
    const want = [1 * Math.cos(a0) - 3 * Math.sin(a0), 2 * Math.cos(a1) - 4 * Math.sin(a1), 3 * Math.cos(a0) + 1 * Math.sin(a0), 4 * Math.cos(a1) + 2 * Math.sin(a1)];
    want.forEach((w, i) => expect(y[i]).toBeCloseTo(w, 5));
    tf.dispose([cos, sin, x, yt]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('interleaved MRoPE', () => {
  it('lays out T H W T H W … T for the fixture and release sections', () => {
    expect(Array.from(mropeAxes([4, 2, 2], true))).toEqual([0, 1, 2, 0, 1, 2, 0, 0]);
    const release = mropeAxes([24, 20, 20], true);
    expect(release.length).toBe(64);
    expect([release[0], release[1], release[2], release[57], release[58], release[59], release[60], release[63]]).toEqual([0, 1, 2, 0, 1, 2, 0, 0]);
    expect(release.filter((a) => a === 0).length).toBe(24);
    expect(release.filter((a) => a === 1).length).toBe(20);
    expect(Array.from(mropeAxes([2, 1, 1], false))).toEqual([0, 0, 1, 2]);
  });

  it('takes each frequency angle from its own axis and equals 1-D RoPE when the axes agree', () => {
    const t = [0, 5], h = [0, 7], w = [0, 9];
    const m = mropeTables([t, h, w], 16, 1e6, [4, 2, 2], true);
    const inv = ropeInvFreq(16, 1e6);
    const axes = mropeAxes([4, 2, 2], true);
    for (let j = 0; j < 8; j++) {
      const p = [t, h, w][axes[j]!]![1]!;
      expect(m.cos[16 + j]).toBeCloseTo(Math.cos(p * inv[j]!), 6);
      expect(m.sin[16 + 8 + j]).toBeCloseTo(Math.sin(p * inv[j]!), 6);
    }
    const same = mropeTables([t, t, t], 16, 1e6, [4, 2, 2], true);
    expect(Array.from(same.cos)).toEqual(Array.from(ropeTables(t, 16, 1e6).cos));
  });

  it('rejects a section that does not cover head_dim/2', () => {
    expect(() => mropeTables([[0], [0], [0]], 16, 1e6, [4, 2, 3], true)).toThrow('mrope_section [4,2,3] must sum to head_dim/2 = 8');
  });
});
