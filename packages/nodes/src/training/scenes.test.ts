import { describe, expect, it } from 'vitest';
import { captionEvents, eventPhrase, orderedMatches, scoreCaptions } from './captions.js';
import { generateScene, MAX_SCENE_SECONDS, SceneRandom } from './scenes.js';

describe('scene generator', () => {
  it('is a pure function of (seed, index): same samples and caption every time, different scenes otherwise', () => {
    const a = generateScene(3, 17), b = generateScene(3, 17);
    expect(b.caption).toBe(a.caption);
    expect(b.pcm).toEqual(a.pcm);
    expect(generateScene(3, 18).caption === a.caption && generateScene(4, 17).caption === a.caption).toBe(false);
    expect(generateScene(4, 17).pcm).not.toEqual(a.pcm);
  });

  it('keeps scenes within 7 s, at 16 kHz, unclipped, with one to four events that the caption names in order', () => {
    const counts = [0, 0, 0, 0, 0];
    for (let i = 0; i < 60; i++) {
      const s = generateScene(11, i);
      expect(s.sampleRate).toBe(16_000);
      expect(s.pcm.length / 16_000).toBeLessThanOrEqual(MAX_SCENE_SECONDS + 1e-9);
      expect(Math.max(...s.pcm.map(Math.abs))).toBeLessThanOrEqual(0.95 + 1e-6);
      expect(captionEvents(s.caption)).toEqual(s.events.map((e) => eventPhrase(e.event)));
      for (const e of s.events) expect(e.end).toBeLessThanOrEqual(s.pcm.length / 16_000);
      counts[s.events.length]!++;
    }
    expect(counts[0]).toBe(0);
    for (const n of [1, 2, 3, 4]) expect(counts[n]).toBeGreaterThan(5);
  });

  it('renders what the caption says: a silence is quiet, a tone at A4 has its energy at 440 Hz', () => {
    let checked = 0;
    for (let i = 0; i < 80 && checked < 6; i++) {
      const s = generateScene(5, i);
      for (const { event, start, end } of s.events) {
        const seg = s.pcm.subarray(Math.round(start * 16_000) + 800, Math.round(end * 16_000) - 800);
        if (seg.length < 1600) continue;
        const rms = Math.sqrt(seg.reduce((a, v) => a + v * v, 0) / seg.length);
        const overlapped = s.events.some((o) => o.event !== event && o.start < end && o.end > start);
        if (event.kind === 'silence') {
          expect(rms).toBeLessThan(0.01);
          checked++;
        } else if (event.kind === 'tone' && event.pitch === 'A4' && !overlapped) {
          // Goertzel power at 440 Hz vs 880 Hz
          const power = (f: number) => {
            const w = (2 * Math.PI * f) / 16_000;
            let re = 0, im = 0;
            seg.forEach((v, n) => ((re += v * Math.cos(w * n)), (im -= v * Math.sin(w * n))));
            return re * re + im * im;
          };
          expect(power(440)).toBeGreaterThan(100 * power(880));
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(2);
  });

  it('keeps every click train over a bed countable: a 25 ms frame on a click holds several times the bed frame before it', () => {
    // The energy of a Hann-windowed 25 ms frame (the log-mel front end's window) starting on a click, over the frame
    // 50 ms earlier (bed alone). With the bed at the clicks' own level this ratio was about 1.2 (median; some clicks
    // below 1): a click then moves the log-mel by under a decibel and cannot be counted.
    const frame = (pcm: Float32Array, at: number) => {
      let e = 0;
      for (let k = -200; k < 200; k++) e += (pcm[at + k]! * (0.5 + 0.5 * Math.cos((Math.PI * k) / 200))) ** 2;
      return e;
    };
    const ratios: number[] = [];
    let trains = 0;
    for (let i = 0; i < 400 && trains < 30; i++) {
      const s = generateScene(21, i);
      for (const e of s.events) {
        if (e.event.kind !== 'clicks' || !s.events.some((o) => o !== e && o.start < e.end && o.end > e.start)) continue;
        trains++;
        const period = (e.end - e.start - 0.01) / (e.event.count - 1);
        for (let c = 0; c < e.event.count; c++) {
          const at = Math.round((e.start + c * period) * 16_000);
          ratios.push(frame(s.pcm, at + 40) / frame(s.pcm, at - 800));
        }
      }
    }
    expect(trains).toBe(30);
    ratios.sort((a, b) => a - b);
    expect(ratios[Math.floor(ratios.length / 2)]).toBeGreaterThan(3);
    expect(ratios[Math.floor(ratios.length / 10)]).toBeGreaterThan(2);
  });

  it('draws the same random numbers for the same stream', () => {
    const a = new SceneRandom(1, 2), b = new SceneRandom(1, 2), c = new SceneRandom(1, 3);
    const xs = [a.next(), a.next(), a.next()];
    expect([b.next(), b.next(), b.next()]).toEqual(xs);
    expect(c.next()).not.toBe(xs[0]);
  });
});

describe('caption scoring', () => {
  it('splits captions into events and counts events named in the right order', () => {
    const ref = 'white noise for about one second with a falling chirp then a click repeated four times';
    expect(captionEvents(ref)).toEqual(['white noise for about one second', 'a falling chirp', 'a click repeated four times']);
    expect(orderedMatches(['a', 'b', 'c'], ['b', 'a', 'c'])).toBe(2);
    const scores = scoreCaptions([
      { predicted: ref, reference: ref },
      { predicted: 'a click repeated four times then white noise for about one second', reference: ref },
    ]);
    expect(scores.exactMatch).toBe(0.5);
    // 3 + 1 in order of 3 + 3 reference events; 3 + 2 predicted.
    expect(scores.eventRecall).toBeCloseTo(4 / 6, 12);
    expect(scores.eventPrecision).toBeCloseTo(4 / 5, 12);
    expect(scores.eventF1).toBeCloseTo((2 * (4 / 5) * (4 / 6)) / (4 / 5 + 4 / 6), 12);
  });
});
