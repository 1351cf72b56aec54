import * as tf from '@tensorflow/tfjs-core';

// Largest attention-score tensor built at once (floats): 128 MB.
const MAX_SCORE_FLOATS = 32 * 1024 * 1024;

/**
 * Bidirectional multi-head attention over a packed sequence cut into independent segments
 * (`cu_seqlens`, as the reference's flash-attention path takes them): every token attends to every
 * token of its own segment and to nothing else. Used by the audio encoder (8 s windows) and the
 * vision encoder (one segment per frame group).
 *
 * Runs of consecutive segments with the same length are computed as one batched matmul, so a
 * long audio cut into many equal windows costs a few large ops, not one op chain per window.
 *
 * `q`, `k`, `v` are [N, heads·headDim] (heads laid out head-major, as `view(N, heads, headDim)`);
 * the result has the same shape. `cuSeqlens` starts at 0 and ends at N.
 *
 * ```ts
 * // two windows of 3 and 2 tokens, 2 heads of 4 dims
 * const out = segmentAttention(q, k, v, [0, 3, 5], 2); // q, k, v: [5, 8] -> [5, 8]
 * ```
 */
export function segmentAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  cuSeqlens: readonly number[],
  numHeads: number,
  scaling?: number,
  maxScoreFloats = MAX_SCORE_FLOATS,
): tf.Tensor2D {
  const [n, width] = q.shape;
  if (width % numHeads !== 0) throw new Error(`segmentAttention: width ${width} is not divisible by ${numHeads} heads`);
  if (cuSeqlens[0] !== 0 || cuSeqlens[cuSeqlens.length - 1] !== n) {
    throw new Error(`segmentAttention: cu_seqlens [${cuSeqlens}] must start at 0 and end at the sequence length ${n}`);
  }
  const headDim = width / numHeads;
  const scale = scaling ?? 1 / Math.sqrt(headDim);
  return tf.tidy(() => {
    const outs: tf.Tensor2D[] = [];
    for (const run of equalLengthRuns(cuSeqlens)) {
      const { start, length, count } = run;
      const rows = length * count;
      // [rows, H·D] -> [count, length, H, D]
      const split = (t: tf.Tensor2D) => tf.reshape(tf.slice(t, [start, 0], [rows, width]), [count, length, numHeads, headDim]);
      const qh = tf.reshape(tf.transpose(split(q), [0, 2, 1, 3]), [count * numHeads, length, headDim]);
      const kt = tf.reshape(tf.transpose(split(k), [0, 2, 3, 1]), [count * numHeads, headDim, length]);
      const vh = tf.reshape(tf.transpose(split(v), [0, 2, 1, 3]), [count * numHeads, length, headDim]);
      // Scores are [count·H, length, length]; a large frame (or many windows) is done in blocks of queries so the
      // score tensor stays under MAX_SCORE_FLOATS. Each query row's softmax is complete within its block.
      const qBlock = Math.max(1, Math.floor(maxScoreFloats / (count * numHeads * length)));
      const blocks: tf.Tensor[] = [];
      for (let q0 = 0; q0 < length; q0 += qBlock) {
        const rowsQ = Math.min(qBlock, length - q0);
        const qb = rowsQ === length ? qh : tf.slice(qh, [0, q0, 0], [-1, rowsQ, -1]);
        // Its own scope, so one block's scores are freed before the next block's are built.
        blocks.push(tf.tidy(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(qb, kt), scale)), vh)));
      }
      const ctx = blocks.length === 1 ? blocks[0] : tf.concat(blocks, 1); // [count·H, length, D]
      outs.push(tf.reshape(tf.transpose(tf.reshape(ctx, [count, numHeads, length, headDim]), [0, 2, 1, 3]), [rows, width]));
    }
    return outs.length === 1 ? outs[0] : tf.concat(outs, 0);
  });
}

/** Groups consecutive segments of equal length: [0,4,8,12,14] -> {start 0, length 4, count 3}, {start 12, length 2, count 1}. */
export function equalLengthRuns(cuSeqlens: readonly number[]): { start: number; length: number; count: number }[] {
  const runs: { start: number; length: number; count: number }[] = [];
  for (let i = 1; i < cuSeqlens.length; i++) {
    const start = cuSeqlens[i - 1];
    const length = cuSeqlens[i] - start;
    if (length < 0) throw new Error(`cu_seqlens must be non-decreasing, got [${cuSeqlens}]`);
    if (length === 0) continue;
    const last = runs[runs.length - 1];
    if (last && last.length === length && last.start + last.length * last.count === start) last.count++;
    else runs.push({ start, length, count: 1 });
  }
  return runs;
}

/**
 * Cuts a packed sequence into passes of whole consecutive segments, each at most `maxTokens` long (a segment longer
 * than that is a pass of its own). Since attention never crosses a segment, an encoder can run its whole layer stack
 * pass by pass and get the same result with activations bounded by the pass size instead of the sequence.
 *
 * ```ts
 * segmentPasses([0, 104, 208, 260], 220); // [{ start: 0, cuSeqlens: [0, 104, 208] }, { start: 208, cuSeqlens: [0, 52] }]
 * ```
 */
export function segmentPasses(cuSeqlens: readonly number[], maxTokens: number): { start: number; cuSeqlens: number[] }[] {
  const passes: { start: number; cuSeqlens: number[] }[] = [];
  let current: { start: number; cuSeqlens: number[] } | undefined;
  for (let i = 1; i < cuSeqlens.length; i++) {
    const [from, to] = [cuSeqlens[i - 1], cuSeqlens[i]];
    if (!current || to - current.start > maxTokens) {
      current = { start: from, cuSeqlens: [0] };
      passes.push(current);
    }
    current.cuSeqlens.push(to - current.start);
  }
  return passes;
}
