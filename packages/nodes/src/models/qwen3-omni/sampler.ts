import { z } from 'zod';

/**
 * Token sampling over raw logits, in transformers' processor order: repetition penalty → temperature → top-k → top-p →
 * draw. Temperature 0 (or `greedy: true`) is argmax (after the repetition penalty). Seedable, so a run can be
 * replayed.
 */
export const samplerOptionsSchema = z.object({
  /** Argmax instead of a draw (the repetition penalty still applies). */
  greedy: z.boolean().default(false),
  /** Softmax temperature; 0 means greedy. */
  temperature: z.number().nonnegative().default(1),
  /** Keep only the k most likely tokens; 0 disables. */
  topK: z.number().int().nonnegative().default(0),
  /** Keep the smallest set of most likely tokens whose probability reaches p; 1 disables. */
  topP: z.number().gt(0).lte(1).default(1),
  /** > 1 discourages tokens already in the history (CTRL rule: logit/penalty if positive, logit·penalty if not). */
  repetitionPenalty: z.number().positive().default(1),
  /** Seed of the random draw; absent: seeded from Math.random. */
  seed: z.number().int().optional(),
});

export type SamplerOptions = z.input<typeof samplerOptionsSchema>;

/**
 * A sampler with its own random stream.
 *
 * ```ts
 * const sampler = new Sampler({ temperature: 0.7, topP: 0.8, topK: 20, seed: 42 });
 * const id = sampler.sample(logits, historyIds); // logits: Float32Array [vocab]
 * ```
 */
export class Sampler {
  readonly options: z.output<typeof samplerOptionsSchema>;
  private readonly random: () => number;

  constructor(options: SamplerOptions = {}) {
    const parsed = samplerOptionsSchema.safeParse(options);
    if (!parsed.success) {
      throw new Error(`Sampler: invalid options: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    this.options = parsed.data;
    this.random = mulberry32(parsed.data.seed ?? Math.floor(Math.random() * 2 ** 32));
  }

  /** True when this sampler never draws (argmax). */
  get isGreedy(): boolean {
    return this.options.greedy || this.options.temperature === 0;
  }

  /** Picks the next token from raw `logits`; `history` (prompt and generated ids) feeds the repetition penalty. */
  sample(logits: Float32Array, history: ArrayLike<number> = []): number {
    const o = this.options;
    const scores = o.repetitionPenalty !== 1 ? applyRepetitionPenalty(logits, history, o.repetitionPenalty) : logits;
    if (this.isGreedy) return argmax(scores);
    return drawFrom(candidates(scores, o.temperature, o.topK, o.topP), this.random());
  }
}

/** Index of the largest value (the first one on ties, like torch.argmax). */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/**
 * A copy of `logits` with the CTRL repetition penalty applied once to every distinct id in `history`.
 *
 * ```ts
 * applyRepetitionPenalty(Float32Array.of(2, 1.5, -1), [0, 2], 2); // [1, 1.5, -2]
 * ```
 */
export function applyRepetitionPenalty(logits: Float32Array, history: ArrayLike<number>, penalty: number): Float32Array {
  const out = Float32Array.from(logits);
  const seen = new Set<number>();
  for (let i = 0; i < history.length; i++) {
    const id = history[i]!;
    if (seen.has(id) || id < 0 || id >= out.length) continue;
    seen.add(id);
    const v = logits[id]!;
    out[id] = v < 0 ? v * penalty : v / penalty;
  }
  return out;
}

/** Token ids and their (unnormalised) probabilities after temperature, top-k and top-p, most likely first. */
interface Candidates {
  ids: Int32Array;
  weights: Float64Array;
}

function candidates(scores: Float32Array, temperature: number, topK: number, topP: number): Candidates {
  const V = scores.length;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (scores[i]! > max) max = scores[i]!;
  const probs = new Float64Array(V);
  let total = 0;
  for (let i = 0; i < V; i++) total += probs[i] = Math.exp((scores[i]! - max) / temperature);
  // Only tokens that can survive top-p are sorted: the mass below (1 - topP) / V in total is < 1 - topP, so the
  // nucleus always closes among the tokens above that threshold. Exact, and avoids sorting the whole vocabulary.
  // With top-k the k best must all pass the threshold, else the filter could drop part of the top-k mass: then sort all.
  const collect = (threshold: number): number[] => {
    const out: number[] = [];
    for (let i = 0; i < V; i++) if (probs[i]! >= threshold && probs[i]! > 0) out.push(i);
    return out;
  };
  let ids = collect(topP < 1 ? ((1 - topP) / V) * total : 0);
  if (topK > 0 && topP < 1 && ids.length < topK) ids = collect(0);
  ids.sort((a, b) => probs[b]! - probs[a]! || a - b);
  if (topK > 0 && ids.length > topK) ids = ids.slice(0, topK);
  if (topP < 1) {
    const kept = ids.reduce((a, i) => a + probs[i]!, 0);
    let cum = 0;
    let n = 0;
    while (n < ids.length && cum < topP * kept) cum += probs[ids[n++]!]!;
    ids = ids.slice(0, Math.max(1, n));
  }
  return { ids: Int32Array.from(ids), weights: Float64Array.from(ids, (i) => probs[i]!) };
}

function drawFrom(c: Candidates, u: number): number {
  let total = 0;
  for (const w of c.weights) total += w;
  let acc = 0;
  const target = u * total;
  for (let i = 0; i < c.ids.length; i++) {
    acc += c.weights[i]!;
    if (target < acc) return c.ids[i]!;
  }
  return c.ids[c.ids.length - 1]!;
}

/** Small, fast, seedable PRNG (mulberry32): uniform floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
