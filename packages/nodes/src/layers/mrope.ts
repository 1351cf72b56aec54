import { ropeInvFreq, ropeTablesFromAngles, type RopeTables } from './rope.js';

/**
 * Which position axis (0 = t, 1 = h, 2 = w) drives each of the headDim/2 rotary frequencies.
 *
 * Interleaved (Qwen3-Omni, spec 3.4): start from t everywhere, then frequency j uses h if j%3 == 1 and j < 3·sec[1], w
 * if j%3 == 2 and j < 3·sec[2] — the layout T H W T H W … T T T. Contiguous (Qwen2.5-Omni): the first sec[0]
 * frequencies use t, the next sec[1] h, the last sec[2] w.
 *
 * ```ts
 * mropeAxes([4, 2, 2], true); // Uint8Array [0, 1, 2, 0, 1, 2, 0, 0]
 * ```
 */
export function mropeAxes(section: readonly [number, number, number], interleaved: boolean): Uint8Array {
  const half = section[0] + section[1] + section[2];
  const axes = new Uint8Array(half);
  for (let j = 0; j < half; j++) {
    if (interleaved) axes[j] = j % 3 === 1 && j < 3 * section[1] ? 1 : j % 3 === 2 && j < 3 * section[2] ? 2 : 0;
    else axes[j] = j < section[0] ? 0 : j < section[0] + section[1] ? 1 : 2;
  }
  return axes;
}

/** Multimodal position ids: one row per axis (t, h, w), each `S` long, possibly fractional (video time). */
export type MropePositions = readonly [ArrayLike<number>, ArrayLike<number>, ArrayLike<number>];

/**
 * MRoPE cos/sin tables `[S, headDim]` for 3-axis positions.
 *
 * ```ts
 * const t = mropeTables([tPos, hPos, wPos], 128, 1e6, [24, 20, 20], true);
 * const [cos, sin] = ropeTensors(t);
 * ```
 */
export function mropeTables(positions: MropePositions, headDim: number, theta: number, section: readonly [number, number, number], interleaved: boolean): RopeTables {
  if (section[0] + section[1] + section[2] !== headDim / 2) {
    throw new Error(`mropeTables: mrope_section [${section}] must sum to head_dim/2 = ${headDim / 2}`);
  }
  const n = positions[0].length;
  if (positions[1].length !== n || positions[2].length !== n) {
    throw new Error(`mropeTables: position rows have lengths ${positions[0].length}, ${positions[1].length}, ${positions[2].length}; expected three equal rows`);
  }
  const inv = ropeInvFreq(headDim, theta);
  const axes = mropeAxes(section, interleaved);
  return ropeTablesFromAngles(n, headDim, (p, j) => Math.fround(positions[axes[j]!]![p]!) * inv[j]!);
}
