import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, fixtureDir, initBackend } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from '../models/qwen3-omni/config.js';
import { disposeSparseMoe, loadSparseMoe, route, sparseMoe, type SparseMoe } from './moe.js';

const { config } = readQwen3OmniConfig(fixtureDir());
let ckpt: Checkpoint;
let thinkerMoe: SparseMoe;
let talkerMoe: SparseMoe;

beforeAll(async () => {
  await initBackend();
  ckpt = Checkpoint.open(fixtureDir());
  const t = config.thinker_config.text_config;
  thinkerMoe = loadSparseMoe(ckpt, 'thinker.model.layers.2.mlp', { hidden: t.hidden_size, numExperts: t.num_experts, topK: t.num_experts_per_tok, moeIntermediate: t.moe_intermediate_size, normTopKProb: true });
  const k = config.talker_config!.text_config;
  talkerMoe = loadSparseMoe(ckpt, 'talker.model.layers.1.mlp', {
    hidden: k.hidden_size, numExperts: k.num_experts, topK: k.num_experts_per_tok, moeIntermediate: k.moe_intermediate_size, normTopKProb: true,
    sharedExpertIntermediate: k.shared_expert_intermediate_size,
  });
});
afterAll(() => {
  disposeSparseMoe(thinkerMoe);
  disposeSparseMoe(talkerMoe);
  ckpt.close();
});

/** The per-token definition: y_t = Σ_k w_tk · expert_{e_tk}(x_t) (+ sigmoid(gate·x_t) · shared(x_t)). */
function naive(x: number[][], moe: SparseMoe): number[][] {
  return tf.tidy(() => {
    const swiglu = (xt: tf.Tensor2D, e: { gateUp: tf.Tensor2D; down: tf.Tensor2D; intermediate: number }) => {
      const [g, u] = tf.split(tf.matMul(xt, e.gateUp), [e.intermediate, e.intermediate], 1);
      return tf.matMul(tf.mul(tf.mul(g!, tf.sigmoid(g!)), u!), e.down);
    };
    return x.map((row) => {
      const xt = tf.tensor2d([row]);
      const E = moe.experts.length;
      // The router's columns: E experts, then (talker) the shared expert's gate.
      const logits = tf.matMul(xt, moe.router).dataSync() as Float32Array;
      expect(logits.length).toBe(moe.sharedExpert ? E + 1 : E);
      const r = route(logits.subarray(0, E), 1, E, moe.topK, moe.normTopKProb);
      let y: tf.Tensor = tf.zeros([1, moe.hidden]);
      for (let k = 0; k < moe.topK; k++) y = tf.add(y, tf.mul(swiglu(xt, moe.experts[r.selectedExperts[k]!]!), r.routingWeights[k]!));
      if (moe.sharedExpert) y = tf.add(y, tf.mul(tf.sigmoid(logits[E]!), swiglu(xt, moe.sharedExpert)));
      return Array.from(y.dataSync());
    });
  });
}

function randomRows(n: number, d: number, seed: number): number[][] {
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2;
  return Array.from({ length: n }, () => Array.from({ length: d }, rnd));
}

describe('sparseMoe', () => {
  for (const [name, get] of [['thinker (no shared expert)', () => thinkerMoe], ['talker (shared expert)', () => talkerMoe]] as const) {
    it(`${name}: grouped per-expert result equals the per-token definition, with no leaks`, () => {
      const moe = get();
      const x = randomRows(13, moe.hidden, 7);
      const want = naive(x, moe);
      const before = tf.memory().numTensors;
      const xt = tf.tensor2d(x);
      const { output, routing } = sparseMoe(xt, moe);
      const got = output.arraySync();
      tf.dispose([xt, output]);
      expect(tf.memory().numTensors).toBe(before);
      let max = 0;
      got.forEach((r, i) => r.forEach((v, d) => (max = Math.max(max, Math.abs(v - want[i]![d]!)))));
      expect(max).toBeLessThan(1e-5);
      // Several experts are used, so the grouping really scatters rows back.
      expect(new Set(routing.selectedExperts).size).toBeGreaterThan(2);
    });
  }

  for (const [name, get] of [['thinker', () => thinkerMoe], ['talker (shared expert gate in alpha)', () => talkerMoe]] as const) {
    it(`${name}: one row at a time (the decode path: weights applied inside the down projections) equals the definition`, () => {
      const moe = get();
      const rows = randomRows(6, moe.hidden, 11);
      const want = naive(rows, moe);
      const before = tf.memory().numTensors;
      let max = 0;
      const used = new Set<number>();
      rows.forEach((row, i) => {
        const xt = tf.tensor2d([row]);
        const { output, routing } = sparseMoe(xt, moe);
        expect(output.shape).toEqual([1, moe.hidden]);
        (output.dataSync() as Float32Array).forEach((v, d) => (max = Math.max(max, Math.abs(v - want[i]![d]!))));
        routing.selectedExperts.forEach((e) => used.add(e));
        tf.dispose([xt, output]);
      });
      expect(tf.memory().numTensors).toBe(before);
      expect(max).toBeLessThan(1e-5);
      expect(used.size).toBeGreaterThan(2);
    });
  }

  it('keeps the talker router as [hidden, experts + 1]: mlp.gate transposed, then shared_expert_gate', () => {
    const k = config.talker_config!.text_config;
    expect(talkerMoe.router.shape).toEqual([k.hidden_size, k.num_experts + 1]);
    expect(thinkerMoe.router.shape).toEqual([config.thinker_config.text_config.hidden_size, config.thinker_config.text_config.num_experts]);
    const gate = ckpt.get('talker.model.layers.1.mlp.gate.weight').data as Float32Array;
    const shared = ckpt.get('talker.model.layers.1.mlp.shared_expert_gate.weight').data as Float32Array;
    const r = talkerMoe.router.dataSync();
    expect([r[0], r[1], r[k.num_experts], r[k.num_experts + 1 + 2]]).toEqual([gate[0], gate[k.hidden_size], shared[0], gate[2 * k.hidden_size + 1]]);
  });

  it('rejects an input of the wrong width, naming both widths', () => {
    const x = tf.zeros([2, 5]) as tf.Tensor2D;
    expect(() => sparseMoe(x, thinkerMoe)).toThrow(`sparseMoe: input has 5 features but the block expects ${thinkerMoe.hidden}`);
    x.dispose();
  });
});

describe('route', () => {
  it('softmaxes over all experts, keeps the top k in descending order and renormalises them', () => {
    const logits = Float32Array.of(0, 2, 1, 2, -1, /* row 2 */ 3, 0, 0, 0, 0);
    const r = route(logits, 2, 5, 2, true);
    expect(Array.from(r.selectedExperts)).toEqual([1, 3, 0, 1]); // tie between 1 and 3 goes to the lower index
    expect(r.routingWeights[0]).toBeCloseTo(0.5, 6);
    expect(r.routingWeights[2]! + r.routingWeights[3]!).toBeCloseTo(1, 6);
    expect(r.routingWeights[2]! / r.routingWeights[3]!).toBeCloseTo(Math.exp(3), 4);
    const raw = route(logits, 2, 5, 2, false);
    const z = [0, 2, 1, 2, -1].reduce((a, l) => a + Math.exp(l), 0);
    expect(raw.routingWeights[0]).toBeCloseTo(Math.exp(2) / z, 6);
  });
});
