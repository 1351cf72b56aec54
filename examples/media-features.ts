/**
 * Any media file → the tensors Qwen3-Omni consumes, printing what it saw on the way.
 *
 *   node --conditions=source --import tsx examples/media-features.ts talk.mp3
 *   node --conditions=source --import tsx examples/media-features.ts clip.mp4 --fps 2
 *
 * Without a file it generates a 6 s clip (colour bars, a tone with a pause, 320x240) with ffmpeg. Steps, as a
 * template to copy: probe + decode audio to 16 kHz mono packets → voice activity → log-mel `input_features`;
 * decode video frames at `--fps` → smart_resize → `pixel_values_videos` with `grid_thw` and `second_per_grid`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { AudioPacket, VideoPacket } from '@omniflow/core';
import { initBackend } from '@omniflow/runtime-gpu';
import { EnergyVad, decodeAudio, decodeVideo, describeStream, logMelFeatures, preprocessVideo, probeMedia, resolveFfmpeg, smartResize } from '@omniflow/nodes';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: { fps: { type: 'string', default: '2' }, 'max-frames': { type: 'string', default: '64' } },
});
const fps = Number(args.fps);
const maxFrames = Number(args['max-frames']);
const ffmpeg = resolveFfmpeg();
console.log(`ffmpeg: ${ffmpeg.path} (from ${ffmpeg.source})`);

let scratch: string | undefined;
let file = positionals[0];
if (!file) {
  scratch = mkdtempSync(join(tmpdir(), 'omniflow-media-features-'));
  file = join(scratch, 'generated.mp4');
  // A tone for 2 s, 1 s of silence, a tone again: the VAD below should find two speech-like segments.
  execFileSync(ffmpeg.path, ['-hide_banner', '-loglevel', 'error', '-y',
    '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25:duration=6',
    '-f', 'lavfi', '-i', "aevalsrc='0.4*sin(2*PI*440*t)*between(mod(t,3),0,2)':s=44100:d=6",
    '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest', file]);
  console.log(`no file given: generated ${file}`);
}
const ms = (t0: number) => `${(performance.now() - t0).toFixed(0)} ms`;

try {
  const backend = await initBackend();
  console.log(`tensor backend: ${backend.name}\n`);

  // What is in there: ffmpeg's own report, no ffprobe needed.
  const input = await probeMedia(file);
  console.log(`container: ${input.format}, duration ${input.durationSeconds?.toFixed(2) ?? 'unknown'} s`);
  for (const s of input.streams) console.log(`  stream #${s.index}: ${describeStream(s)}`);

  // Audio: decode (ffmpeg resamples and mixes down), watch for speech, then the model's log-mel features.
  let t0 = performance.now();
  const packets: AudioPacket[] = [];
  const speech: string[] = [];
  if (input.streams.some((s) => s.type === 'audio')) {
    const vad = new EnergyVad({ thresholdDb: -35, hangoverMs: 300 });
    for await (const p of decodeAudio(file, { sampleRate: 16_000, channels: 1, chunkMs: 100 })) {
      packets.push(p);
      for (const q of vad.push(p)) if (q.kind === 'control') speech.push(`${q.signal} @ ${(q.pts / 1e6).toFixed(2)} s`);
    }
    for (const q of vad.flush()) speech.push(`${q.signal} @ ${(q.pts / 1e6).toFixed(2)} s`);
  } else console.log('\naudio: none');
  if (packets.length) {
    const samples = new Float32Array(packets.reduce((n, p) => n + p.samples.length, 0));
    let o = 0;
    for (const p of packets) { samples.set(p.samples, o); o += p.samples.length; }
    const seconds = samples.length / 16_000;
    console.log(`\naudio: ${packets.length} packets, ${samples.length} samples = ${seconds.toFixed(2)} s at 16 kHz mono, decoded in ${ms(t0)}`);
    console.log(`voice activity: ${speech.length ? speech.join(', ') : 'no speech-like energy'}`);
    t0 = performance.now();
    const { features, frames } = logMelFeatures(samples);
    const first = performance.now() - t0;
    t0 = performance.now();
    logMelFeatures(samples).features.dispose(); // again, warm: the steady-state speed
    const warm = performance.now() - t0;
    console.log(`log-mel input_features: [${features.shape.join(', ')}] (${frames} frames of 10 ms) in ${first.toFixed(0)} ms (warm: ${warm.toFixed(0)} ms = ${(seconds / (warm / 1000)).toFixed(0)}x real time)`);
    const v = features.dataSync();
    console.log(`  values in [${Math.min(...v).toFixed(3)}, ${Math.max(...v).toFixed(3)}]`);
    features.dispose();
  }

  // Video: frames at the sampling rate the model will be told about, scaled by ffmpeg straight to the size the
  // video processor's smart_resize rule gives, so preprocessing only normalises and patchifies.
  const video = input.streams.find((s) => s.type === 'video');
  if (video?.width && video.height) {
    const size = smartResize(video.height, video.width, { factor: 32, minPixels: 128 * 32 * 32, maxPixels: 768 * 32 * 32 });
    t0 = performance.now();
    const frames: VideoPacket[] = [];
    for await (const f of decodeVideo(file, { fps, size })) {
      frames.push(f);
      if (frames.length >= maxFrames) break;
    }
    console.log(`\nvideo: ${frames.length} frames at ${fps} fps, smart_resize ${video.width}x${video.height} -> ${size.width}x${size.height} by ffmpeg, pts ${frames[0]?.pts ?? 0}…${frames[frames.length - 1]?.pts ?? 0} µs, in ${ms(t0)}`);
    if (frames.length) {
      t0 = performance.now();
      const clip = preprocessVideo(frames, { fps });
      console.log(`pixel_values_videos: [${clip.shape.join(', ')}], grid_thw [${clip.gridThw.join(', ')}], ${clip.tokens} vision tokens, second_per_grid ${clip.secondPerGrid} s, in ${ms(t0)}`);
    }
  } else console.log('\nvideo: none');
} finally {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
}
