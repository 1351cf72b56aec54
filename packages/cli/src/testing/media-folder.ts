import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { resolveFfmpeg } from '@omniflow/nodes';

/** One generated test file and what captioning it should give. */
export interface GeneratedMedia {
  readonly path: string;
  /** Seconds of audio ffmpeg was asked for (mp3/aac add a few ms of codec padding). */
  readonly seconds: number;
  /** `ok` files must caption; the others must become error lines with this reason. */
  readonly expect: 'ok' | 'corrupt' | 'no-audio';
}

/**
 * Writes a folder of small media files with the ffmpeg binary omniflow uses (lavfi sources, so nothing is
 * downloaded): tones as WAV and MP3, a test-pattern MP4 with AAC audio, a silent WAV, a video with no
 * audio stream and a corrupt file. `seconds` scales the clips (the MP4 and MP3 are 1.5x and 1.2x as long).
 *
 * ```ts
 * const files = makeMediaFolder('/tmp/media', { seconds: 3 });
 * ```
 */
export function makeMediaFolder(dir: string, opts: { seconds?: number; ffmpegPath?: string } = {}): GeneratedMedia[] {
  const s = opts.seconds ?? 3;
  const ffmpeg = opts.ffmpegPath ?? resolveFfmpeg().path;
  mkdirSync(dir, { recursive: true });
  const run = (args: string[]) => execFileSync(ffmpeg, ['-nostdin', '-hide_banner', '-loglevel', 'error', '-y', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const out: GeneratedMedia[] = [];

  const wav = join(dir, 'tone-440.wav');
  run(['-f', 'lavfi', '-i', `sine=frequency=440:sample_rate=44100:duration=${s}`, '-ac', '2', wav]);
  out.push({ path: wav, seconds: s, expect: 'ok' });

  const mp3 = join(dir, 'chirp.mp3');
  run(['-f', 'lavfi', '-i', `aevalsrc=0.4*sin(2*PI*(200+300*t)*t):s=22050:d=${s * 1.2}`, '-codec:a', 'libmp3lame', '-b:a', '64k', mp3]);
  out.push({ path: mp3, seconds: s * 1.2, expect: 'ok' });

  const mp4 = join(dir, 'clip.mp4');
  run(['-f', 'lavfi', '-i', `testsrc=size=160x120:rate=10:duration=${s * 1.5}`, '-f', 'lavfi', '-i', `sine=frequency=880:sample_rate=48000:duration=${s * 1.5}`, '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-b:a', '64k', '-shortest', mp4]);
  out.push({ path: mp4, seconds: s * 1.5, expect: 'ok' });

  const silent = join(dir, 'silence.wav');
  run(['-f', 'lavfi', '-i', `anullsrc=channel_layout=mono:sample_rate=16000`, '-t', String(s), silent]);
  out.push({ path: silent, seconds: s, expect: 'ok' });

  const noAudio = join(dir, 'no-audio.mp4');
  run(['-f', 'lavfi', '-i', `testsrc=size=160x120:rate=10:duration=1`, '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', noAudio]);
  out.push({ path: noAudio, seconds: 0, expect: 'no-audio' });

  const corrupt = join(dir, 'corrupt.wav');
  // A RIFF header promising PCM, then bytes that are not: ffmpeg must refuse it, not caption noise.
  writeFileSync(corrupt, Buffer.concat([Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1'), Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 37 + 11) & 0xff))]));
  out.push({ path: corrupt, seconds: 0, expect: 'corrupt' });

  return out.sort((a, b) => a.path.localeCompare(b.path));
}
