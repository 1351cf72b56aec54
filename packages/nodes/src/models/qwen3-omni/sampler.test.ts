import { describe, expect, it } from 'vitest';
import { applyRepetitionPenalty, argmax, Sampler } from './sampler.js';

const logitsOf = (probs: number[]) => Float32Array.from(probs, Math.log);

function frequencies(s: Sampler, logits: Float32Array, n: number): number[] {
  const counts = new Array(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[s.sample(logits)]++;
  return counts.map((c) => c / n);
}

describe('Sampler', () => {
  it('is argmax when greedy or at temperature 0', () => {
    const l = Float32Array.of(0.1, 2.5, -1, 2.4);
    expect(new Sampler({ greedy: true }).sample(l)).toBe(1);
    expect(new Sampler({ temperature: 0 }).sample(l)).toBe(1);
    expect(argmax(Float32Array.of(3, 3, 1))).toBe(0);
  });

  it('draws in proportion to softmax(logits / temperature)', () => {
    const l = logitsOf([0.5, 0.3, 0.2]);
    const f = frequencies(new Sampler({ seed: 1 }), l, 20000);
    expect(f[0]).toBeCloseTo(0.5, 1);
    expect(f[1]).toBeCloseTo(0.3, 1);
    expect(f[2]).toBeCloseTo(0.2, 1);
    // Temperature 0.5 squares the odds: 0.25 : 0.09 : 0.04.
    const hot = frequencies(new Sampler({ seed: 2, temperature: 0.5 }), l, 20000);
    expect(hot[0]).toBeCloseTo(0.25 / 0.38, 1);
    expect(hot[2]).toBeCloseTo(0.04 / 0.38, 1);
  });

  it('top-k and top-p cut the tail before drawing', () => {
    const l = logitsOf([0.5, 0.3, 0.15, 0.05]);
    expect(frequencies(new Sampler({ seed: 3, topK: 2 }), l, 5000).slice(2)).toEqual([0, 0]);
    const nucleus = frequencies(new Sampler({ seed: 4, topP: 0.7 }), l, 5000); // 0.5 < 0.7 <= 0.8: keeps two
    expect(nucleus.slice(2)).toEqual([0, 0]);
    expect(nucleus[0]).toBeCloseTo(0.5 / 0.8, 1);
    expect(frequencies(new Sampler({ seed: 5, topP: 0.5 }), l, 1000)).toEqual([1, 0, 0, 0]);
    // top-p applies to the mass left after top-k, as in transformers.
    const both = frequencies(new Sampler({ seed: 6, topK: 3, topP: 0.9 }), l, 5000); // of 0.95: 0.5/0.95, 0.8/0.95 < 0.9
    expect(both[2]).toBeGreaterThan(0.05);
    expect(both[3]).toBe(0);
  });

  it('penalises tokens in the history once each (divide positive, multiply negative logits)', () => {
    const l = Float32Array.of(2, 1.5, -1);
    expect(Array.from(applyRepetitionPenalty(l, [0, 0, 2], 2))).toEqual([1, 1.5, -2]);
    expect(new Sampler({ greedy: true, repetitionPenalty: 2 }).sample(l, [0])).toBe(1);
  });

  it('replays the same draws from the same seed', () => {
    const l = logitsOf([0.25, 0.25, 0.25, 0.25]);
    const a = new Sampler({ seed: 42 }), b = new Sampler({ seed: 42 }), c = new Sampler({ seed: 43 });
    const seq = (s: Sampler) => Array.from({ length: 32 }, () => s.sample(l));
    const sa = seq(a);
    expect(seq(b)).toEqual(sa);
    expect(seq(c)).not.toEqual(sa);
  });

  it('rejects invalid options naming the option', () => {
    expect(() => new Sampler({ topP: 0 })).toThrow(/Sampler: invalid options: topP: /);
    expect(() => new Sampler({ temperature: -1 })).toThrow(/temperature: /);
    expect(() => new Sampler({ topK: 1.5 })).toThrow(/topK: /);
  });
});
