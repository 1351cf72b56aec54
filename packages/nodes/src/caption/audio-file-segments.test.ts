import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolveFfmpeg } from '../media/ffmpeg-binary.js';
import { AudioFileError, audioFileSegments, type AudioSegment } from './audio-file-segments.js';

const dir = mkdtempSync(join(tmpdir(), 'capsegs-'));
const ffmpeg = resolveFfmpeg().path;
const make = (name: string, args: string[]) => {
  const p = join(dir, name);
  execFileSync(ffmpeg, ['-nostdin', '-loglevel', 'error', '-y', ...args, p]);
  return p;
};
const collect = async (path: string, segmentSeconds: number, maxSeconds = 100) => {
  const out: AudioSegment[] = [];
  for await (const s of audioFileSegments(path, { segmentSeconds, maxSeconds })) out.push(s);
  return out;
};
const reasonOf = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(AudioFileError);
    return (err as AudioFileError).reason;
  }
  return 'no error';
};

describe('audioFileSegments', () => {
  it('cuts 4.5 s into 2 s segments and folds the 0.5 s tail into the last one, covering every sample once', async () => {
    // 44.1 kHz stereo in, so the 16 kHz mono resampling and downmix are exercised too.
    const wav = make('ramp.wav', ['-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=44100:duration=4.5', '-ac', '2']);
    const segs = await collect(wav, 2);
    expect(segs.map((s) => [s.index, s.start, s.end])).toEqual([
      [0, 0, 2],
      [1, 2, 4.5],
    ]);
    expect(segs.map((s) => s.pcm.length)).toEqual([32_000, 40_000]);
    // The tone is there at full scale (ffmpeg's sine source peaks at 1/8).
    const peak = segs[1].pcm.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    expect(peak).toBeGreaterThan(0.1);
    expect(peak).toBeLessThan(0.2);
  });

  it('keeps a tail of a second or more as its own segment', async () => {
    const wav = make('six.wav', ['-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=16000:duration=5']);
    const segs = await collect(wav, 2);
    expect(segs.map((s) => [s.start, s.end])).toEqual([
      [0, 2],
      [2, 4],
      [4, 5],
    ]);
  });

  it('refuses files past maxSeconds, files without audio, corrupt and missing files, naming the reason', async () => {
    const long = make('long.wav', ['-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=16000:duration=4']);
    expect(await reasonOf(collect(long, 1, 2.5))).toBe('too-long');
    const video = make('video.mp4', ['-f', 'lavfi', '-i', 'testsrc=size=64x64:rate=5:duration=1', '-c:v', 'libx264', '-pix_fmt', 'yuv420p']);
    expect(await reasonOf(collect(video, 1))).toBe('no-audio');
    const bad = join(dir, 'bad.mp3');
    writeFileSync(bad, Buffer.from('this is not an mp3 file at all'.repeat(20)));
    expect(await reasonOf(collect(bad, 1))).toBe('corrupt');
    expect(await reasonOf(collect(join(dir, 'nope.wav'), 1))).toBe('not-found');
  });

  it('stops ffmpeg when the consumer stops early', async () => {
    const wav = make('stop.wav', ['-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=16000:duration=30']);
    const it = audioFileSegments(wav, { segmentSeconds: 1, maxSeconds: 100 });
    const first = await it.next();
    expect(first.done).toBe(false);
    await it.return(undefined);
    expect((await it.next()).done).toBe(true);
  });
});
