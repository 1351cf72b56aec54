import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixturePath } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { decodePositionIds, getRopeIndex, ropeIndexConfigOf, type RopeIndexConfig } from './rope-index.js';
import type { GridThw } from './vision-encoder.js';

// Token ids of the tiny fixture config.
const cfg: RopeIndexConfig = {
  imageTokenId: 247,
  videoTokenId: 248,
  audioTokenId: 244,
  visionStartTokenId: 245,
  audioStartTokenId: 242,
  positionIdPerSeconds: 13,
  spatialMergeSize: 2,
  nWindow: 50,
};
const [VS, VE, AS, AE, IMG, VID, AUD, T] = [245, 246, 242, 243, 247, 248, 244, 7];

/** Row r (0 = t, 1 = h, 2 = w) of batch entry b. */
function row(r: { positionIds: Float32Array; shape: [3, number, number] }, axis: number, b = 0): number[] {
  const [, batch, seq] = r.shape;
  return Array.from(r.positionIds.subarray((axis * batch + b) * seq, (axis * batch + b + 1) * seq));
}

describe('getRopeIndex', () => {
  it('gives text (and audio without vision) 1-D positions from the attention mask, padding at 1', () => {
    const r = getRopeIndex({ inputIds: [[0, 0, T, T, AS, AUD, AE, T]], attentionMask: [[0, 0, 1, 1, 1, 1, 1, 1]] }, cfg);
    for (let a = 0; a < 3; a++) expect(row(r, a)).toEqual([1, 1, 0, 1, 2, 3, 4, 5]);
    expect(r.ropeDeltas).toEqual([6 - 6]);
  });

  it('places image tokens on the merged (h, w) grid and restarts text after the largest position', () => {
    // image grid 1×4×6 -> 2×3 merged tokens
    const ids = [T, VS, ...Array(6).fill(IMG), VE, T];
    const r = getRopeIndex({ inputIds: [ids], imageGridThw: [[1, 4, 6]] }, cfg);
    expect(row(r, 0)).toEqual([0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
    expect(row(r, 1)).toEqual([0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
    expect(row(r, 2)).toEqual([0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
    expect(r.ropeDeltas).toEqual([7 - 10]);
  });

  it('gives video groups fractional float32 time positions: g · second_per_grid · 13', () => {
    // grid 3×4×4: 3 temporal groups of 2×2 merged tokens; frames sampled at 3 fps -> 2/3 s per group
    const ids = [T, VS, ...Array(12).fill(VID), VE, T];
    const r = getRopeIndex({ inputIds: [ids], videoGridThw: [[3, 4, 4]], secondPerGrids: [2 / 3] }, cfg);
    const t = row(r, 0);
    expect(t.slice(2, 6)).toEqual([2, 2, 2, 2]);
    expect(t[6]).toBeCloseTo(2 + 26 / 3, 5);
    expect(t[10]).toBeCloseTo(2 + 52 / 3, 5);
    expect(t[6]).not.toBe(Math.round(t[6]));
    // The end marker follows the largest position (the last group's time), so the following text is fractional too.
    expect(t[14]).toBeCloseTo(3 + 52 / 3, 5);
    expect(t[15]).toBeCloseTo(4 + 52 / 3, 5);
    expect(r.ropeDeltas[0]).toBeCloseTo(5 + 52 / 3 - 16, 5);
  });

  it('interleaves a video with its soundtrack by time (audio-in-video: two markers each side)', () => {
    // video grid 2×2×2 -> 1 token per group at t = 0 and 13; audio of 150 frames -> 20 tokens at t = 0..19
    const body = [VID, ...Array(13).fill(AUD), VID, ...Array(7).fill(AUD)];
    const ids = [T, VS, AS, ...body, AE, VE, T];
    const r = getRopeIndex({ inputIds: [ids], videoGridThw: [[2, 2, 2]], audioSeqlens: [150], secondPerGrids: [1], useAudioInVideo: true }, cfg);
    const t = row(r, 0);
    expect(t.slice(0, 3)).toEqual([0, 1, 2]);
    expect(t.slice(3, 3 + 15)).toEqual([3, ...Array.from({ length: 13 }, (_, j) => 3 + j), 16]);
    expect(t.slice(18, 25)).toEqual([16, 17, 18, 19, 20, 21, 22]);
    expect(t.slice(25)).toEqual([23, 24, 25]);
    expect(r.ropeDeltas).toEqual([26 - 28]);
  });

  it('handles a batch: media are consumed in order across rows, padding positions stay 0', () => {
    const a = [T, VS, ...Array(6).fill(IMG), VE, T];
    const b = [T, T, VS, IMG, VE];
    const single = (ids: number[], grid: GridThw) => getRopeIndex({ inputIds: [ids], imageGridThw: [grid] }, cfg);
    const padded = [0, 0, 0, 0, 0, ...b];
    const r = getRopeIndex({ inputIds: [a, padded], attentionMask: [a.map(() => 1), padded.map((_, i) => (i < 5 ? 0 : 1))], imageGridThw: [[1, 4, 6], [1, 2, 2]] }, cfg);
    for (let axis = 0; axis < 3; axis++) {
      expect(row(r, axis, 0)).toEqual(row(single(a, [1, 4, 6]), axis));
      expect(row(r, axis, 1)).toEqual([0, 0, 0, 0, 0, ...row(single(b, [1, 2, 2]), axis)]);
    }
    expect(r.ropeDeltas).toEqual([...single(a, [1, 4, 6]).ropeDeltas, ...single(b, [1, 2, 2]).ropeDeltas]);
  });

  it('says what is wrong when the prompt and the media disagree', () => {
    const ids = [T, VS, ...Array(5).fill(IMG), VE, T];
    expect(() => getRopeIndex({ inputIds: [ids], imageGridThw: [[1, 4, 6]] }, cfg)).toThrow(/the image 0 at 2 needs 6 placeholder tokens \(247\) but position 7 holds 246/);
    const two = [T, VS, IMG, VE, VS, IMG, VE];
    expect(() => getRopeIndex({ inputIds: [two], imageGridThw: [[1, 2, 2]] }, cfg)).toThrow(/more images than given \(1\)/);
    expect(() => getRopeIndex({ inputIds: [[1, 2], [3]] }, cfg)).toThrow(/rows differ in length/);
    const longAudio = [T, AS, ...Array(21).fill(AUD), AE, VS, IMG, VE];
    expect(() => getRopeIndex({ inputIds: [longAudio], audioSeqlens: [150], imageGridThw: [[1, 2, 2]] }, cfg)).toThrow(/audio 0 at 2 needs 20 placeholder tokens but the prompt has more/);
  });

  it('decodes at past length + rope delta on all three rows', () => {
    expect(decodePositionIds(59, 3, 2)).toEqual([[62, 63], [62, 63], [62, 63]]);
  });
});

describe('getRopeIndex parity (fixture case 4_mrope_position_ids)', () => {
  let cases: SafetensorsFile;
  let fixtureCfg: RopeIndexConfig;
  const ints = (name: string) => Array.from(cases.read(name).data);
  const grid = (name: string) => [ints(name) as unknown as GridThw];

  beforeAll(() => {
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    fixtureCfg = ropeIndexConfigOf(readQwen3OmniConfig(fixturePath('config.json')).config.thinker_config);
  });
  afterAll(() => cases?.close());

  it('reproduces the mixed audio/image/video prompt exactly', () => {
    const r = getRopeIndex(
      {
        inputIds: [ints('rope.input_ids')],
        attentionMask: [ints('rope.attention_mask')],
        imageGridThw: grid('rope.image_grid_thw'),
        videoGridThw: grid('rope.video_grid_thw'),
        audioSeqlens: ints('rope.audio_seqlens'),
        secondPerGrids: ints('rope.video_second_per_grid'),
      },
      fixtureCfg,
    );
    expect(Array.from(r.positionIds)).toEqual(ints('rope.position_ids'));
    expect(r.ropeDeltas).toEqual(ints('rope.rope_deltas'));
  });

  it('reproduces the audio-in-video prompt exactly', () => {
    const r = getRopeIndex(
      {
        inputIds: [ints('rope_aiv.input_ids')],
        videoGridThw: grid('rope_aiv.video_grid_thw'),
        audioSeqlens: ints('rope_aiv.audio_seqlens'),
        secondPerGrids: ints('rope_aiv.video_second_per_grid'),
        useAudioInVideo: true,
      },
      fixtureCfg,
    );
    expect(Array.from(r.positionIds)).toEqual(ints('rope_aiv.position_ids'));
    expect(r.ropeDeltas).toEqual(ints('rope_aiv.rope_deltas'));
  });
});
