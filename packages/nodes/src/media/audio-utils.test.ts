import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { audioPacket, type AudioPacket, type ControlPacket } from '@omniflow/core';
import { mixChannels, mixdownPacket } from './mixdown.js';
import { Rechunker } from './rechunk.js';
import { resample, Resampler } from './resampler.js';
import { dominantFrequency, rms, sine } from './testing.js';
import { EnergyVad, SilenceTrimmer } from './vad.js';
import { readWav, WavWriter, wavPackets, writeWav } from './wav.js';

const dir = mkdtempSync(join(tmpdir(), 'omniflow-media-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const concat = (parts: Float32Array[]): Float32Array => {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
};
const db = (ratio: number) => 20 * Math.log10(ratio);

describe('Resampler', () => {
  it('48 kHz -> 16 kHz keeps in-band tones (1 and 7 kHz within 0.1 dB) and attenuates out-of-band ones by >= 80 dB', () => {
    const level = (f: number) => {
      const x = sine(f, 48_000, 48_000);
      const y = resample(x, 48_000, 16_000);
      expect(y.length).toBe(16_000);
      return db(rms(y, 1600, 14_400) / rms(x));
    };
    expect(Math.abs(level(1000))).toBeLessThan(0.1);
    expect(Math.abs(level(7000))).toBeLessThan(0.1);
    // 10 kHz would alias to 6 kHz and 12 kHz to 4 kHz: right in the speech band.
    expect(level(10_000)).toBeLessThan(-80);
    expect(level(12_000)).toBeLessThan(-80);
  });

  it('44.1 kHz -> 16 kHz keeps the frequency of a tone, and streaming in odd chunks equals one-shot', () => {
    const x = sine(440, 44_100, 44_100);
    const once = resample(x, 44_100, 16_000);
    expect(once.length).toBe(16_000);
    expect(dominantFrequency(once, 16_000)).toBeCloseTo(440, 0);
    const r = new Resampler({ inputRate: 44_100, outputRate: 16_000 });
    const parts: Float32Array[] = [];
    for (let i = 0; i < x.length; i += 777) parts.push(r.push(x.subarray(i, i + 777)));
    parts.push(r.flush());
    const streamed = concat(parts);
    expect(streamed.length).toBe(16_000);
    let worst = 0;
    for (let i = 0; i < once.length; i++) worst = Math.max(worst, Math.abs(once[i] - streamed[i]));
    expect(worst).toBeLessThan(1e-6);
  });

  it('upsamples stereo 16 kHz -> 24 kHz per channel without crosstalk', () => {
    const l = sine(500, 16_000, 16_000), rr = sine(3000, 16_000, 16_000, 0.25);
    const inter = new Float32Array(32_000);
    for (let i = 0; i < 16_000; i++) { inter[2 * i] = l[i]; inter[2 * i + 1] = rr[i]; }
    const y = resample(inter, 16_000, 24_000, { channels: 2 });
    expect(y.length).toBe(48_000);
    const left = y.filter((_, i) => i % 2 === 0), right = y.filter((_, i) => i % 2 === 1);
    expect(dominantFrequency(left, 24_000)).toBeCloseTo(500, 0);
    expect(dominantFrequency(right, 24_000)).toBeCloseTo(3000, 0);
    expect(rms(right, 2400, 21_600)).toBeCloseTo(0.25 / Math.SQRT2, 3);
  });

  it('names bad rates', () => {
    expect(() => new Resampler({ inputRate: 0, outputRate: 16_000 })).toThrow(/inputRate must be a positive integer, got 0/);
  });
});

describe('mixdown and re-chunking', () => {
  it('averages channels to mono and copies mono to stereo', () => {
    expect(Array.from(mixChannels(Float32Array.of(1, 0, 0.5, 0.5), 2, 1))).toEqual([0.5, 0.5]);
    expect(Array.from(mixChannels(Float32Array.of(0.25, -1), 1, 2))).toEqual([0.25, 0.25, -1, -1]);
    const p = mixdownPacket(audioPacket({ samples: new Float32Array(960), sampleRate: 48_000, channels: 2, pts: 5 }));
    expect([p.channels, p.samples.length, p.pts, p.duration]).toEqual([1, 480, 5, 10_000]);
    expect(() => mixChannels(new Float32Array(3), 2, 1)).toThrow(/3 samples is not a multiple of 2 channels/);
  });

  it('re-cuts arbitrary packets into exact sizes with continuous pts', () => {
    const r = new Rechunker({ frames: 160 });
    const out: AudioPacket[] = [];
    let pts = 1_000_000;
    for (const n of [100, 250, 17, 333]) {
      out.push(...r.push(audioPacket({ samples: new Float32Array(n).fill(n), sampleRate: 16_000, channels: 1, pts })));
      pts += (n / 16_000) * 1e6;
    }
    out.push(...r.flush());
    expect(out.map((p) => p.samples.length)).toEqual([160, 160, 160, 160, 60]);
    expect(out.map((p) => p.pts)).toEqual([1_000_000, 1_010_000, 1_020_000, 1_030_000, 1_040_000]);
    expect(out[0].samples[99]).toBe(100);
    expect(out[0].samples[100]).toBe(250);
    const padded = new Rechunker({ frames: 160, tail: 'pad' });
    padded.push(audioPacket({ samples: new Float32Array(10).fill(1), sampleRate: 16_000, channels: 1 }));
    expect(padded.flush()[0].samples.length).toBe(160);
  });
});

describe('energy VAD and silence trim', () => {
  // 0.5 s silence, 1 s tone, 0.1 s gap (shorter than the hangover), 0.5 s tone, 1 s silence at 16 kHz.
  const sr = 16_000;
  const signal = concat([new Float32Array(8000), sine(300, sr, 16_000, 0.3), new Float32Array(1600), sine(300, sr, 8000, 0.3), new Float32Array(16_000)]);
  const packets = (chunk: number): AudioPacket[] => {
    const out: AudioPacket[] = [];
    for (let i = 0; i < signal.length; i += chunk) out.push(audioPacket({ samples: signal.slice(i, i + chunk), sampleRate: sr, channels: 1, pts: (i / sr) * 1e6 }));
    return out;
  };

  it('emits one speech-start/speech-end pair, bridging a gap shorter than the hangover, at the right times', () => {
    const vad = new EnergyVad({ thresholdDb: -40, minSpeechMs: 60, hangoverMs: 300 });
    const out = [...packets(512).flatMap((p) => vad.push(p)), ...vad.flush()];
    const controls = out.filter((p): p is ControlPacket => p.kind === 'control');
    expect(controls.map((c) => c.signal)).toEqual(['speech-start', 'speech-end']);
    expect(controls[0].pts).toBe(500_000);
    expect(controls[1].pts).toBe(1_600_000 + 500_000);
    // Audio passes through untouched and in order, each control right before the packet that completed it.
    expect(out.filter((p) => p.kind === 'audio').length).toBe(Math.ceil(signal.length / 512));
  });

  it('splits into two segments when the gap is longer than the hangover', () => {
    const vad = new EnergyVad({ thresholdDb: -40, hangoverMs: 60 });
    const signals = [...packets(320).flatMap((p) => vad.push(p)), ...vad.flush()].filter((p): p is ControlPacket => p.kind === 'control');
    expect(signals.map((c) => `${c.signal}@${c.pts / 1000}`)).toEqual(['speech-start@500', 'speech-end@1500', 'speech-start@1600', 'speech-end@2100']);
  });

  it('trims leading and trailing silence but keeps the inner gap and the padding', () => {
    const trim = new SilenceTrimmer({ thresholdDb: -40, paddingMs: 100 });
    const kept = [...packets(700).flatMap((p) => trim.push(p)), ...trim.flush()];
    const total = kept.reduce((n, p) => n + p.samples.length, 0);
    expect(total).toBe(1600 + 16_000 + 1600 + 8000 + 1600);
    expect(kept[0].pts).toBe(400_000);
  });

  it('keeps a partial last frame of speech at the end of the stream', () => {
    const trim = new SilenceTrimmer({ thresholdDb: -40, paddingMs: 40 });
    const speech = sine(300, sr, 16_000 + 100, 0.3); // 1 s and 100 samples: the last 100 are not a whole frame
    const kept = [...trim.push(audioPacket({ samples: concat([new Float32Array(1600), speech]), sampleRate: sr, channels: 1 })), ...trim.flush()];
    expect(kept.reduce((n, p) => n + p.samples.length, 0)).toBe(640 + 16_100);
    expect(kept[0].pts).toBe(60_000);
  });
});

describe('WAV', () => {
  it('streams float32 and 16-bit files whose header is fixed on close, and reads them back with wavefile', async () => {
    const tone = sine(1000, 24_000, 24_000, 0.5);
    for (const format of ['f32', 's16'] as const) {
      const path = join(dir, `tone-${format}.wav`);
      const w = await WavWriter.create(path, { sampleRate: 24_000, channels: 1, format });
      for (let i = 0; i < tone.length; i += 1000) await w.write(tone.subarray(i, i + 1000));
      const { frames, bytes } = await w.close();
      expect(frames).toBe(24_000);
      const file = readFileSync(path);
      expect(file.length).toBe(bytes);
      expect(file.readUInt32LE(4)).toBe(file.length - 8);
      const back = await readWav(path);
      expect([back.sampleRate, back.channels, back.frames, back.bitDepth]).toEqual([24_000, 1, 24_000, format === 'f32' ? '32f' : '16']);
      let worst = 0;
      for (let i = 0; i < tone.length; i++) worst = Math.max(worst, Math.abs(back.samples[i] - tone[i]));
      expect(worst).toBeLessThan(format === 'f32' ? 1e-9 : 1 / 32_767);
    }
  });

  it('writes packets of a stereo stream and re-reads them as packets with pts', async () => {
    const path = join(dir, 'stereo.wav');
    const src = Array.from({ length: 5 }, (_, i) => audioPacket({ samples: new Float32Array(800).fill(i / 10), sampleRate: 8000, channels: 2, pts: i * 50_000 }));
    await writeWav(src, path, { format: 's16' });
    const packets = [...wavPackets(await readWav(path), { chunkMs: 100 })];
    expect(packets.map((p) => p.pts)).toEqual([0, 100_000, 200_000]);
    expect(packets.map((p) => p.samples.length)).toEqual([1600, 1600, 800]);
    expect(packets[2].samples[0]).toBeCloseTo(0.4, 4);
  });

  it('reports missing and non-WAV files by name', async () => {
    await expect(readWav(join(dir, 'nope.wav'))).rejects.toThrow(/file not found: ".*nope.wav"/);
    await expect(readWav(Buffer.from('definitely not a RIFF file'))).rejects.toThrow(/WAV bytes is not a readable WAV file/);
  });
});
