import { describe, expect, it } from 'vitest';
import { from, lastValueFrom, toArray } from 'rxjs';
import { restamp } from './restamp.js';
import { audioPacket, textPacket } from './packets.js';

/** 20 ms chunks of 16 kHz audio at the given (possibly bad) pts. */
const chunks = (pts: number[]) => pts.map((p) => audioPacket({ samples: new Float32Array(320), sampleRate: 16_000, channels: 1, pts: p }));
const run = async (pts: number[], o = {}) => (await lastValueFrom(from(chunks(pts)).pipe(restamp(o), toArray()))).map((p) => p.pts);

describe('restamp', () => {
  it('snaps jitter within the tolerance to the sample clock', async () => {
    expect(await run([0, 21_300, 39_100, 60_900], { tolerance: 2_000 })).toEqual([0, 20_000, 40_000, 60_000]);
  });

  it('fills missing timestamps from durations', async () => {
    expect(await run([5_000, NaN, NaN, 65_000])).toEqual([5_000, 25_000, 45_000, 65_000]);
  });

  it('never runs backwards', async () => {
    expect(await run([0, 20_000, 10_000, 40_000])).toEqual([0, 20_000, 40_000, 60_000]);
  });

  it('keeps real gaps (lost audio)', async () => {
    expect(await run([0, 20_000, 100_000])).toEqual([0, 20_000, 100_000]);
  });

  it('can ignore the source clock entirely', async () => {
    expect(await run([777, 1, 99_999], { fromDurations: true, origin: 1_000 })).toEqual([1_000, 21_000, 41_000]);
  });

  it('keeps non-media packets monotonic', async () => {
    const out = await lastValueFrom(from([textPacket({ text: 'a', pts: 50 }), textPacket({ text: 'b', pts: 10 })]).pipe(restamp(), toArray()));
    expect(out.map((p) => p.pts)).toEqual([50, 50]);
  });
});
