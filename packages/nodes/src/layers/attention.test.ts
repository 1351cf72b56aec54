import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, fixtureDir, initBackend, KVCache } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from '../models/qwen3-omni/config.js';
import { BATCHED_ATTENTION_MAX_MACS, decoderAttention, disposeDecoderAttention, loadDecoderAttention, setBatchedAttentionMaxMacs, type DecoderAttention } from './attention.js';
import { mropeTables } from './mrope.js';
import { ropeTensors } from './rope.js';

const BATCHED_ATTENTION_MAX_MACS_DEFAULT = BATCHED_ATTENTION_MAX_MACS;
let ckpt: Checkpoint;
let attn: DecoderAttention;
let fused: DecoderAttention; // the same layer with q/k/v as one matrix
const { config } = readQwen3OmniConfig(fixtureDir());
const c = config.thinker_config.text_config;

beforeAll(async () => {
  await initBackend();
  ckpt = Checkpoint.open(fixtureDir());
  const sizes = { hidden: c.hidden_size, numHeads: c.num_attention_heads, numKvHeads: c.num_key_value_heads, headDim: c.head_dim, rmsNormEps: c.rms_norm_eps };
  attn = loadDecoderAttention(ckpt, 'thinker.model.layers.1.self_attn', sizes);
  fused = loadDecoderAttention(ckpt, 'thinker.model.layers.1.self_attn', { ...sizes, fuseQkv: true });
});
afterAll(() => {
  disposeDecoderAttention(attn);
  disposeDecoderAttention(fused);
  ckpt.close();
});

function rope(positions: number[]): [tf.Tensor3D, tf.Tensor3D] {
  return ropeTensors(mropeTables([positions, positions.map((p) => p + 1), positions.map((p) => 2 * p)], c.head_dim, c.rope.theta, c.rope.mropeSection!, true));
}

/** Plain per-head causal attention on the host from the layer's own projections: the definition, no batching tricks. */
function naive(x: number[][], positions: number[]): number[][] {
  const { numHeads: H, numKvHeads: Hkv, headDim: D } = attn;
  return tf.tidy(() => {
    const xt = tf.tensor2d(x);
    const [cos, sin] = rope(positions);
    const proj = (l: typeof attn.q_proj) => tf.matMul(xt, l!.weight);
    const norm = (t: tf.Tensor, n: typeof attn.q_norm, heads: number) => {
      const r = tf.reshape(t, [x.length, heads, D]);
      return tf.mul(tf.div(r, tf.sqrt(tf.add(tf.mean(tf.square(r), -1, true), n.eps))), n.weight);
    };
    const rot = (t: tf.Tensor) => {
      const [a, b] = tf.split(t, 2, -1);
      return tf.add(tf.mul(t, cos), tf.mul(tf.concat([tf.neg(b!), a!], -1), sin));
    };
    const q = rot(norm(proj(attn.q_proj), attn.q_norm, H)).arraySync() as number[][][];
    const k = rot(norm(proj(attn.k_proj), attn.k_norm, Hkv)).arraySync() as number[][][];
    const v = (tf.reshape(proj(attn.v_proj), [x.length, Hkv, D]).arraySync()) as number[][][];
    const heads: number[][] = x.map(() => []);
    for (let h = 0; h < H; h++) {
      const kv = Math.floor(h / (H / Hkv));
      for (let i = 0; i < x.length; i++) {
        const s = Array.from({ length: i + 1 }, (_, j) => q[i]![h]!.reduce((a, qd, d) => a + qd * k[j]![kv]![d]!, 0) / Math.sqrt(D));
        const m = Math.max(...s);
        const e = s.map((z) => Math.exp(z - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let d = 0; d < D; d++) heads[i]!.push(e.reduce((a, p, j) => a + (p / z) * v[j]![kv]![d]!, 0));
      }
    }
    return tf.matMul(tf.tensor2d(heads), attn.o_proj.weight).arraySync() as number[][];
  });
}

describe('decoderAttention', () => {
  const S = 6;
  const x = Array.from({ length: S }, (_, i) => Array.from({ length: c.hidden_size }, (_, d) => Math.sin(1 + i * 0.7 + d * 0.31)));
  const positions = [0, 1, 2, 5, 6, 7];

  it('loads q/k/v fused as one [hidden, q + k + v] matrix holding the three projections side by side', () => {
    const { numHeads: H, numKvHeads: Hkv, headDim: D } = attn;
    expect(fused.q_proj).toBeUndefined();
    expect(fused.qkv_proj!.weight.shape).toEqual([c.hidden_size, (H + 2 * Hkv) * D]);
    const joined = tf.tidy(() => tf.concat([attn.q_proj!.weight, attn.k_proj!.weight, attn.v_proj!.weight], 1));
    expect(tf.tidy(() => tf.max(tf.abs(tf.sub(joined, fused.qkv_proj!.weight))).dataSync()[0])).toBe(0);
    joined.dispose();
  });

  // The fixture's sizes are small enough for the batched path everywhere; -1 forces the per-head path. Each runs with
  // separate q/k/v projections and with the fused matrix (one kernel for the split, norms and RoPE).
  for (const [path, limit, layer] of [
    ['batched', BATCHED_ATTENTION_MAX_MACS, () => attn], ['per-head', -1, () => attn],
    ['batched, fused q/k/v', BATCHED_ATTENTION_MAX_MACS, () => fused], ['per-head, fused q/k/v', -1, () => fused],
  ] as const) {
    describe(`${path} products`, () => {
      beforeAll(() => setBatchedAttentionMaxMacs(limit));
      afterAll(() => setBatchedAttentionMaxMacs(BATCHED_ATTENTION_MAX_MACS_DEFAULT));

      it('matches per-head causal attention with q/k norm, GQA and MRoPE', () => {
        const before = tf.memory().numTensors;
        const [cos, sin] = rope(positions);
        const xt = tf.tensor2d(x);
        const got = tf.tidy(() => decoderAttention(xt, layer(), cos, sin).arraySync());
        const want = naive(x, positions);
        let max = 0;
        got.forEach((r, i) => r.forEach((v, d) => (max = Math.max(max, Math.abs(v - want[i]![d]!)))));
        expect(max).toBeLessThan(1e-5);
        tf.dispose([cos, sin, xt]);
        expect(tf.memory().numTensors).toBe(before);
      });

      it('packs independent sequences (segments): each row equals its sequence attended alone', () => {
        const lengths = [2, 3, 1];
        const pos = [0, 1, 0, 1, 2, 0]; // each sequence's own positions
        const [cos, sin] = rope(pos);
        const before = tf.memory().numTensors;
        const packed = tf.tidy(() => decoderAttention(tf.tensor2d(x), layer(), cos, sin, undefined, lengths).arraySync());
        expect(tf.memory().numTensors).toBe(before);
        let start = 0, max = 0;
        for (const n of lengths) {
          const alone = naive(x.slice(start, start + n), pos.slice(start, start + n));
          alone.forEach((r, i) => r.forEach((v, d) => (max = Math.max(max, Math.abs(v - packed[start + i]![d]!)))));
          start += n;
        }
        expect(max).toBeLessThan(1e-5);
        const xt = tf.tensor2d(x);
        expect(() => decoderAttention(xt, layer(), cos, sin, undefined, [2, 3])).toThrow(/segments \[2, 3\] cover 5 rows, x has 6/);
        expect(() => decoderAttention(xt, layer(), cos, sin, undefined, [6, 0])).toThrow(/positive integers/);
        tf.dispose([cos, sin, xt]);
      });

      it('gives the same rows with a KV cache fed one chunk, then one token at a time', () => {
        const [cos, sin] = rope(positions);
        const full = tf.tidy(() => decoderAttention(tf.tensor2d(x), layer(), cos, sin).arraySync());
        const cache = new KVCache({ layers: 1, kvHeads: c.num_key_value_heads, headDim: c.head_dim, capacity: 2 });
        const before = tf.memory().numTensors;
        const rows: number[][] = [];
        const step = (from: number, to: number) => {
          const [cs, sn] = rope(positions.slice(from, to));
          const y = tf.tidy(() => decoderAttention(tf.tensor2d(x.slice(from, to)), layer(), cs, sn, { cache, layer: 0 }));
          rows.push(...(y.arraySync() as number[][]));
          tf.dispose([cs, sn, y]);
        };
        step(0, 3); // a chunked prefill that also grows the cache past its capacity
        for (let i = 3; i < S; i++) step(i, i + 1);
        expect(cache.length).toBe(S);
        let max = 0;
        rows.forEach((r, i) => r.forEach((v, d) => (max = Math.max(max, Math.abs(v - full[i]![d]!)))));
        expect(max).toBeLessThan(1e-5);
        const grownBuffers = tf.memory().numTensors - before; // the cache's own K and V buffers
        expect(grownBuffers).toBe(2);
        cache.dispose();
        tf.dispose([cos, sin]);
      });
    });
  }
});
