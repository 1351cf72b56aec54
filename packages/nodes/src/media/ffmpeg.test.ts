import { execFileSync } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audioPacket, type AudioPacket } from '@omniflow/core';
import { decodeAudio } from './decode-audio.js';
import { decodeVideo } from './decode-video.js';
import { encodeAudio, writePcm } from './encode-audio.js';
import { resolveFfmpeg } from './ffmpeg-binary.js';
import { MediaError } from './ffmpeg-process.js';
import { probeMedia } from './probe-media.js';
import { dominantFrequency, sine } from './testing.js';

const dir = mkdtempSync(join(tmpdir(), 'omniflow-ffmpeg-'));
const file = (name: string) => join(dir, name);
const ffmpeg = resolveFfmpeg();
/** The bundled binary, found with PATH and FFMPEG_PATH out of the way (undefined if the optional dependency is absent). */
const bundledFfmpeg = ((): string | undefined => {
  const saved = { PATH: process.env.PATH, FFMPEG_PATH: process.env.FFMPEG_PATH };
  process.env.PATH = '';
  delete process.env.FFMPEG_PATH;
  try {
    return resolveFfmpeg().path;
  } catch {
    return undefined;
  } finally {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
})();
const make = (...args: string[]) => execFileSync(ffmpeg.path, ['-hide_banner', '-loglevel', 'error', '-y', ...args]);

beforeAll(() => {
  make('-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000:duration=2', '-ac', '2', '-c:a', 'pcm_s16le', file('sine440-48k-stereo.wav'));
  make('-f', 'lavfi', '-i', 'sine=frequency=1000:sample_rate=44100:duration=2', '-c:a', 'libmp3lame', '-b:a', '128k', file('sine1000.mp3'));
  make('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10:duration=2', '-f', 'lavfi', '-i', 'sine=frequency=660:sample_rate=44100:duration=2',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest', file('av.mp4'));
  make('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10:duration=2', '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', file('video-only.mp4'));
  make('-f', 'lavfi', '-i', 'anoisesrc=color=white:amplitude=0.3:sample_rate=16000:duration=1', file('noise.wav'));
  // 60 s of 48 kHz stereo: 23 MB of float32 output, far more than any pipe or queue holds.
  make('-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=48000:duration=60', '-ac', '2', file('long.wav'));
  writeFileSync(file('junk.wav'), Buffer.from(Array.from({ length: 8000 }, (_, i) => (i * 7919 + 13) % 251)));
}, 60_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function collect(it: AsyncIterable<AudioPacket>): Promise<{ packets: AudioPacket[]; samples: Float32Array }> {
  const packets: AudioPacket[] = [];
  for await (const p of it) packets.push(p);
  const samples = new Float32Array(packets.reduce((n, p) => n + p.samples.length, 0));
  let o = 0;
  for (const p of packets) { samples.set(p.samples, o); o += p.samples.length; }
  return { packets, samples };
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].startsWith('Z');
  } catch {
    return false;
  }
};
const until = async (cond: () => boolean, ms = 3000) => {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
};

describe(`ffmpeg sources (binary from ${ffmpeg.source})`, () => {
  it('decodes a 48 kHz stereo WAV to 16 kHz mono packets: exact sample count, pts, frequency, stream info', async () => {
    const d = decodeAudio(file('sine440-48k-stereo.wav'), { sampleRate: 16_000, channels: 1, chunkMs: 100 });
    const { packets, samples } = await collect(d);
    expect(samples.length).toBe(32_000);
    expect(packets.length).toBe(20);
    expect(packets.every((p) => p.samples.length === 1600 && p.sampleRate === 16_000 && p.channels === 1)).toBe(true);
    expect(packets.map((p) => p.pts)).toEqual(Array.from({ length: 20 }, (_, i) => i * 100_000));
    expect(dominantFrequency(samples, 16_000)).toBeCloseTo(440, 0);
    const info = await d.info;
    expect(info.inputs[0].streams[0]).toMatchObject({ type: 'audio', sampleRate: 48_000, channels: 2 });
    expect(info.inputs[0].durationSeconds).toBeCloseTo(2, 2);
    expect(info.outputs[0].streams[0]).toMatchObject({ type: 'audio', sampleRate: 16_000, channels: 1 });
  });

  it('decodes mp3 and the audio track of an mp4 (frequency recovered, length within codec padding)', async () => {
    const mp3 = await collect(decodeAudio(file('sine1000.mp3'), { chunkMs: 20 }));
    expect(Math.abs(mp3.samples.length - 32_000)).toBeLessThan(32_000 * 0.05);
    expect(dominantFrequency(mp3.samples.subarray(1600), 16_000)).toBeCloseTo(1000, 0);
    expect(mp3.packets[1].pts).toBe(20_000);
    const mp4 = await collect(decodeAudio(file('av.mp4'), { sampleRate: 24_000, channels: 2 }));
    expect(mp4.packets[0].channels).toBe(2);
    expect(Math.abs(mp4.samples.length / 2 - 48_000)).toBeLessThan(48_000 * 0.05);
    const left = mp4.samples.filter((_, i) => i % 2 === 0);
    expect(dominantFrequency(left.subarray(2400), 24_000)).toBeCloseTo(660, 0);
  });

  it('decodes video frames at a chosen fps and size with pts from the frame index', async () => {
    const frames = [];
    for await (const f of decodeVideo(file('av.mp4'), { fps: 5, maxSize: 160 })) frames.push(f);
    expect(frames.length).toBe(10);
    expect(frames.map((f) => [f.width, f.height, f.data.length])).toEqual(Array(10).fill([160, 120, 160 * 120 * 3]));
    expect(frames.map((f) => f.pts)).toEqual(Array.from({ length: 10 }, (_, i) => i * 200_000));
    expect(frames[3].duration).toBe(200_000);
    // testsrc draws colour bars: a frame is far from uniform.
    expect(new Set(frames[0].data).size).toBeGreaterThan(20);
    const native = [];
    for await (const f of decodeVideo(file('video-only.mp4'), { size: { width: 64, height: 32 } })) native.push(f);
    expect(native.length).toBe(20);
    expect([native[1].pts, native[1].width, native[1].height]).toEqual([100_000, 64, 32]);
  });

  it('probes containers and streams without ffprobe or decoding', async () => {
    const av = await probeMedia(file('av.mp4'));
    expect(av.format).toMatch(/mp4/);
    expect(av.durationSeconds).toBeCloseTo(2, 1);
    expect(av.streams.map((s) => [s.type, s.codec])).toEqual([['video', 'h264'], ['audio', 'aac']]);
    expect(av.streams[0]).toMatchObject({ width: 320, height: 240, fps: 10 });
    expect(av.streams[1]).toMatchObject({ sampleRate: 44_100, channels: 1 });
    await expect(probeMedia(file('junk.wav'))).rejects.toMatchObject({ code: 'corrupt' });
  });

  it('reads from an http URL and from a Node Readable', async () => {
    const server: Server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'audio/wav' });
      res.end(readFileSync(file('noise.wav')));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/noise.wav`;
      expect((await collect(decodeAudio(url))).samples.length).toBe(16_000);
    } finally {
      server.close();
    }
    const fromStream = await collect(decodeAudio(createReadStream(file('sine1000.mp3'))));
    expect(dominantFrequency(fromStream.samples.subarray(1600), 16_000)).toBeCloseTo(1000, 0);
  });

  it('pauses ffmpeg while the consumer is slow: its output and our queue stay bounded', async () => {
    // Full-rate stereo float: 60 s would be 23 MB if ffmpeg were not held back.
    const d = decodeAudio(file('long.wav'), { sampleRate: 48_000, channels: 2, chunkMs: 10 });
    const it = d[Symbol.asyncIterator]();
    await it.next();
    const pid = d.pid!;
    const written = () => Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
    const rssKb = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
    await new Promise((r) => setTimeout(r, 300));
    const first = written();
    await new Promise((r) => setTimeout(r, 300));
    expect(alive(pid)).toBe(true);
    expect(written()).toBe(first); // blocked on the full pipe, not decoding ahead
    expect(first).toBeLessThan(1024 * 1024); // pipe + our 64 KiB buffer, not 23 MB
    expect(rssKb()).toBeLessThan(100 * 1024);
    // Consuming resumes it.
    for (let i = 0; i < 200; i++) await it.next();
    expect(written()).toBeGreaterThan(first);
    await it.return!();
  });

  it('kills ffmpeg when the consumer stops early (break and close)', async () => {
    const d = decodeAudio(file('long.wav'));
    let pid = 0;
    for await (const _ of d) {
      pid = d.pid!;
      break;
    }
    expect(pid).toBeGreaterThan(0);
    await until(() => !alive(pid));
    expect(alive(pid)).toBe(false);
    const v = decodeVideo(file('av.mp4'));
    const it = v[Symbol.asyncIterator]();
    await it.next();
    const vpid = v.pid!;
    v.close();
    await until(() => !alive(vpid));
    expect(alive(vpid)).toBe(false);
  });

  it('names every failure: missing file, no audio stream, corrupt data, unknown format, ffmpeg missing', async () => {
    const fail = async (run: () => AsyncIterable<unknown>): Promise<MediaError> => {
      try {
        for await (const _ of run()) { /* drain */ }
      } catch (e) {
        expect(e).toBeInstanceOf(MediaError);
        return e as MediaError;
      }
      throw new Error('expected a MediaError');
    };
    const missing = await fail(() => decodeAudio(file('nope.wav')));
    expect(missing.code).toBe('not-found');
    expect(missing.message).toMatch(/no file at ".*nope\.wav"/);
    const noAudio = await fail(() => decodeAudio(file('video-only.mp4')));
    expect(noAudio.code).toBe('no-stream');
    expect(noAudio.message).toMatch(/no audio stream in ".*video-only\.mp4" \(it has: video h264 320x240/);
    const noVideo = await fail(() => decodeVideo(file('noise.wav')));
    expect(noVideo.code).toBe('no-stream');
    expect(noVideo.message).toMatch(/no video stream .*it has: audio pcm_s16le 16000Hz 1ch/);
    const corrupt = await fail(() => decodeAudio(file('junk.wav')));
    expect(corrupt.code).toBe('corrupt');
    expect(corrupt.message).toMatch(/junk\.wav/);
    // An mp4 cut short: its index (written at the end) is missing.
    writeFileSync(file('truncated.mp4'), readFileSync(file('av.mp4')).subarray(0, 3000));
    const truncated = await fail(() => decodeAudio(file('truncated.mp4')));
    expect(truncated.code).toBe('corrupt');
    expect(truncated.message).toMatch(/truncated\.mp4.*moov atom not found/);
    const unknown = await fail(() => decodeAudio(file('noise.wav'), { inputFormat: 'no_such_format' }));
    expect(unknown.code).toBe('unknown-format');
    expect(unknown.message).toMatch(/no_such_format/);
    const noBinary = await fail(() => decodeAudio(file('noise.wav'), { ffmpegPath: join(dir, 'no-ffmpeg-here') }));
    expect(noBinary.code).toBe('ffmpeg-missing');
    expect(noBinary.message).toMatch(/option ffmpegPath=".*no-ffmpeg-here" does not exist/);
    const nowhere = await fail(() => decodeAudio('http://127.0.0.1:9/nothing.wav'));
    expect(nowhere.code).toBe('io');
  });

  it('resolves the binary in order: option, FFMPEG_PATH, PATH, bundled package', () => {
    const saved = { FFMPEG_PATH: process.env.FFMPEG_PATH, PATH: process.env.PATH };
    try {
      process.env.FFMPEG_PATH = ffmpeg.path;
      expect(resolveFfmpeg()).toEqual({ path: ffmpeg.path, source: 'FFMPEG_PATH' });
      expect(resolveFfmpeg(ffmpeg.path).source).toBe('option');
      process.env.FFMPEG_PATH = join(dir, 'missing-ffmpeg');
      expect(() => resolveFfmpeg()).toThrow(/FFMPEG_PATH=".*missing-ffmpeg" does not exist/);
      delete process.env.FFMPEG_PATH;
      process.env.PATH = dir; // no ffmpeg there
      if (bundledFfmpeg) {
        const fallback = resolveFfmpeg();
        expect(fallback.source).toBe('@ffmpeg-installer/ffmpeg');
        expect(existsSync(fallback.path)).toBe(true);
      } else expect(() => resolveFfmpeg()).toThrow(/no ffmpegPath option, no FFMPEG_PATH, no ffmpeg on PATH/);
    } finally {
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  });

  it.skipIf(!bundledFfmpeg)('the bundled 2018 binary decodes too', async () => {
    const { samples } = await collect(decodeAudio(file('sine440-48k-stereo.wav'), { ffmpegPath: bundledFfmpeg }));
    expect(samples.length).toBe(32_000);
    expect(dominantFrequency(samples, 16_000)).toBeCloseTo(440, 0);
  });
});

describe('ffmpeg and PCM sinks', () => {
  const tonePackets = (freq: number, sampleRate: number, seconds: number): AudioPacket[] => {
    const all = sine(freq, sampleRate, sampleRate * seconds, 0.5);
    const step = sampleRate / 10;
    return Array.from({ length: seconds * 10 }, (_, i) => audioPacket({ samples: all.slice(i * step, (i + 1) * step), sampleRate, channels: 1, pts: i * 100_000 }));
  };

  it.each(['mp3', 'opus', 'm4a'] as const)('encodes %s to a file that decodes back to the same tone', async (format) => {
    const path = file(`out.${format}`);
    const r = await encodeAudio(tonePackets(440, 24_000, 1), path, { format });
    expect(r).toEqual({ frames: 24_000, sampleRate: 24_000, channels: 1 });
    const d = decodeAudio(path);
    const { samples } = await collect(d);
    expect(Math.abs(samples.length - 16_000)).toBeLessThan(16_000 * 0.1);
    expect(dominantFrequency(samples.subarray(800), 16_000)).toBeCloseTo(440, 0);
    const codec = { mp3: 'mp3', opus: 'opus', m4a: 'aac' }[format];
    expect((await d.info).inputs[0].streams[0].codec).toBe(codec);
  });

  it('encodes m4a into a Writable (fragmented MP4) and rejects unknown formats', async () => {
    const sink = new PassThrough();
    const chunks: Buffer[] = [];
    sink.on('data', (c: Buffer) => chunks.push(c));
    await encodeAudio(tonePackets(880, 16_000, 1), sink, { format: 'm4a' });
    writeFileSync(file('piped.m4a'), Buffer.concat(chunks));
    const { samples } = await collect(decodeAudio(file('piped.m4a')));
    expect(dominantFrequency(samples.subarray(1600), 16_000)).toBeCloseTo(880, 0);
    await expect(encodeAudio(tonePackets(440, 16_000, 1), file('x.mp5'), { format: 'mp5' as 'mp3' })).rejects.toThrow(/unknown output format "mp5"; use one of mp3, opus, m4a/);
  });

  it('writes raw PCM to a Writable with backpressure (f32le and s16le byte counts and values)', async () => {
    for (const [format, bytesPerSample] of [['f32le', 4], ['s16le', 2]] as const) {
      const sink = new PassThrough({ highWaterMark: 1024 });
      const chunks: Buffer[] = [];
      const done = writePcm(tonePackets(440, 16_000, 1), sink, { format, end: true });
      // A slow reader: the writer must wait for 'drain' instead of piling up.
      for await (const c of sink) { chunks.push(c as Buffer); await new Promise((r) => setImmediate(r)); }
      expect(await done).toEqual({ frames: 16_000 });
      const all = Buffer.concat(chunks);
      expect(all.length).toBe(16_000 * bytesPerSample);
      const v = format === 'f32le' ? all.readFloatLE(4 * 40) : all.readInt16LE(2 * 40) / 32_767;
      expect(v).toBeCloseTo(0.5 * Math.sin((2 * Math.PI * 440 * 40) / 16_000), 4);
    }
  });
});
