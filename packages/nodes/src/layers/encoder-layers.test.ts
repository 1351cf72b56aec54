import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@omniflow/runtime-gpu';
import { equalLengthRuns, segmentAttention, segmentPasses } from './encoder-attention.js';
import { gelu, geluTanh } from './gelu.js';
import { layerNorm } from './layer-norm.js';
import { conv2d } from './conv.js';
import { applyRotaryHalf, visionRotaryCosSin } from './vision-rope.js';

/** Deterministic pseudo-random values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    out[i] = s / 1073741824 - 1;
  }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

beforeAll(async () => {
  await initBackend();
});

describe('segmentAttention', () => {
  it('equals per-token softmax attention restricted to each segment, computed by hand', () => {
    const n = 7, heads = 2, d = 4, w = heads * d;
    const cu = [0, 3, 6, 7]; // two runs: 3+3 batched together, then 1
    const q = values(n * w, 1), k = values(n * w, 2), v = values(n * w, 3);
    const want = new Float32Array(n * w);
    for (let s = 0; s + 1 < cu.length; s++) {
      for (let i = cu[s]; i < cu[s + 1]; i++) {
        for (let h = 0; h < heads; h++) {
          const scores: number[] = [];
          for (let j = cu[s]; j < cu[s + 1]; j++) {
            let dot = 0;
            for (let e = 0; e < d; e++) dot += q[i * w + h * d + e] * k[j * w + h * d + e];
            scores.push(dot / Math.sqrt(d));
          }
          const max = Math.max(...scores);
          const exp = scores.map((x) => Math.exp(x - max));
          const sum = exp.reduce((a, b) => a + b, 0);
          for (let e = 0; e < d; e++) {
            let acc = 0;
            exp.forEach((p, jj) => (acc += (p / sum) * v[(cu[s] + jj) * w + h * d + e]));
            want[i * w + h * d + e] = acc;
          }
        }
      }
    }
    const before = tf.memory().numTensors;
    const got = tf.tidy(() => segmentAttention(tf.tensor2d(q, [n, w]), tf.tensor2d(k, [n, w]), tf.tensor2d(v, [n, w]), cu, heads).dataSync());
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('gives the same result when the scores are built in blocks of queries', () => {
    const n = 12, w = 8;
    tf.tidy(() => {
      const [q, k, v] = [1, 2, 3].map((s) => tf.tensor2d(values(n * w, s + 10), [n, w]));
      const whole = segmentAttention(q, k, v, [0, 6, 12], 2);
      const blocked = segmentAttention(q, k, v, [0, 6, 12], 2, undefined, 2 * 2 * 6 * 2); // 2 query rows per block
      expect(maxAbsDiff(blocked.dataSync(), whole.dataSync())).toBeLessThan(1e-6);
    });
  });

  it('rejects cu_seqlens that do not cover the sequence', () => {
    tf.tidy(() => {
      const x = tf.zeros([5, 8]) as tf.Tensor2D;
      expect(() => segmentAttention(x, x, x, [0, 4], 2)).toThrow(/must start at 0 and end at the sequence length 5/);
    });
  });

  it('groups equal consecutive segments and cuts passes of whole segments', () => {
    expect(equalLengthRuns([0, 4, 8, 12, 14])).toEqual([{ start: 0, length: 4, count: 3 }, { start: 12, length: 2, count: 1 }]);
    expect(segmentPasses([0, 104, 208, 260], 220)).toEqual([{ start: 0, cuSeqlens: [0, 104, 208] }, { start: 208, cuSeqlens: [0, 52] }]);
    expect(segmentPasses([0, 300, 310], 100)).toEqual([{ start: 0, cuSeqlens: [0, 300] }, { start: 300, cuSeqlens: [0, 10] }]);
  });
});

describe('activations and LayerNorm', () => {
  it('computes exact and tanh GELU', () => {
    tf.tidy(() => {
      const x = tf.tensor1d([-3, -1, 0, 0.5, 2]);
      // x·Φ(x) from the normal CDF, and the tanh formula, evaluated in float64
      expect(maxAbsDiff(gelu(x).dataSync(), [-0.0040497, -0.1586553, 0, 0.3457312, 1.9544997])).toBeLessThan(1e-6);
      expect(maxAbsDiff(geluTanh(x).dataSync(), [-0.0036374, -0.1588080, 0, 0.3457140, 1.9545977])).toBeLessThan(1e-6);
    });
  });

  it('normalises over the last axis with biased variance', () => {
    tf.tidy(() => {
      const ln = { weight: tf.tensor1d([1, 2, 1, 1]), bias: tf.tensor1d([0, 0, 0, 1]), dim: 4, eps: 1e-5 };
      const y = layerNorm(tf.tensor2d([[1, 2, 3, 4]]), ln).dataSync();
      const s = Math.sqrt(1.25 + 1e-5);
      expect(maxAbsDiff(y, [-1.5 / s, (2 * -0.5) / s, 0.5 / s, 1.5 / s + 1])).toBeLessThan(1e-6);
    });
  });
});

describe('conv2d', () => {
  it('matches PyTorch Conv2d(kernel 3, stride 2, padding 1) computed by hand', () => {
    const [h, w, cin, cout] = [5, 6, 2, 3];
    const x = values(h * w * cin, 4); // NHWC
    const wt = values(cout * cin * 9, 5); // PyTorch [out, in, kh, kw]
    const bias = values(cout, 6);
    const [oh, ow] = [3, 3];
    const want = new Float32Array(oh * ow * cout);
    for (let i = 0; i < oh; i++)
      for (let j = 0; j < ow; j++)
        for (let o = 0; o < cout; o++) {
          let acc = bias[o];
          for (let c = 0; c < cin; c++)
            for (let a = 0; a < 3; a++)
              for (let b = 0; b < 3; b++) {
                const [y, xx] = [2 * i - 1 + a, 2 * j - 1 + b];
                if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
                acc += x[(y * w + xx) * cin + c] * wt[((o * cin + c) * 3 + a) * 3 + b];
              }
          want[(i * ow + j) * cout + o] = acc;
        }
    tf.tidy(() => {
      const filter = tf.transpose(tf.tensor4d(wt, [cout, cin, 3, 3]), [2, 3, 1, 0]) as tf.Tensor4D;
      const layer = { filter, bias: tf.tensor1d(bias), inChannels: cin, outChannels: cout, kernel: [3, 3] as const, stride: [2, 2] as const, padding: 1 };
      const y = conv2d(tf.tensor4d(x, [1, h, w, cin]), layer);
      expect(y.shape).toEqual([1, oh, ow, cout]);
      expect(maxAbsDiff(y.dataSync(), want)).toBeLessThan(1e-5);
      expect(() => conv2d(tf.zeros([1, 4, 4, 5]) as tf.Tensor4D, layer)).toThrow(/input has 5 channels .* the filter expects 2/);
    });
  });
});

describe('vision 2-D rotary', () => {
  it('rotates the first half-pair by row angles and the second by column angles', () => {
    tf.tidy(() => {
      // head_dim 8: d = 4, inv_freq = [1, 1/100] with theta 10000
      const { cos, sin } = visionRotaryCosSin([2, 3], 8, 10000);
      const c = cos.dataSync();
      expect(maxAbsDiff(c, [2, 0.02, 3, 0.03, 2, 0.02, 3, 0.03].map(Math.cos))).toBeLessThan(1e-6);
      const x = tf.tensor3d([[[1, 0, 0, 0, 0, 0, 0, 0]]]);
      const y = applyRotaryHalf(x as tf.Tensor3D, cos, sin).dataSync();
      // x1 = e0 rotates into e4 by the row angle 2: [cos 2, 0, 0, 0, sin 2, 0, 0, 0]
      expect(maxAbsDiff(y, [Math.cos(2), 0, 0, 0, Math.sin(2), 0, 0, 0])).toBeLessThan(1e-6);
    });
  });
});
