/**
 * Media benchmark: decode speed of a generated 60 s clip (1280x720 30 fps H.264 + AAC) to 16 kHz audio packets
 * and to 2 fps frames, each next to a bare ffmpeg run with the same arguments (the baseline: what ffmpeg costs
 * without us); log-mel features per second of audio (batch kernel and streaming) on the default backend;
 * resampling and vision preprocessing. All speeds are multiples of real time (media seconds per wall second).
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@omniflow/runtime-gpu';
import { LogMelStream, decodeAudio, decodeVideo, logMelFeatures, preprocessVideo, resample, resolveFfmpeg, type FfmpegBinary } from '@omniflow/nodes';
import { medianMs } from './memory.js';

const SECONDS = 60;

/** Bare ffmpeg with stdout drained: the floor any decoder built on it can reach. */
function bareFfmpeg(binary: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(binary, ['-hide_banner', '-nostats', '-nostdin', ...args, 'pipe:1'], { stdio: ['ignore', 'pipe', 'ignore'] });
    p.stdout.resume();
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`ffmpeg exited with ${code}`))));
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

const x = (ms: number) => +(SECONDS / (ms / 1000)).toFixed(1);

async function decodeSuite(binary: FfmpegBinary, clip: string) {
  const audioArgs = ['-i', clip, '-map', '0:a:0', '-vn', '-ac', '1', '-ar', '16000', '-f', 'f32le'];
  const videoArgs = (vf: string) => ['-i', clip, '-map', '0:v:0', '-an', '-vf', vf, '-pix_fmt', 'rgb24', '-f', 'rawvideo'];
  const audio = await timed(async () => {
    let samples = 0;
    let packets = 0;
    for await (const p of decodeAudio(clip, { ffmpegPath: binary.path, sampleRate: 16_000, chunkMs: 100 })) {
      samples += p.samples.length;
      packets++;
    }
    return { samples, packets };
  });
  const audioBare = await bareFfmpeg(binary.path, audioArgs);
  const frames = async (o: { maxSize?: number }) =>
    timed(async () => {
      let n = 0;
      let size = '';
      for await (const f of decodeVideo(clip, { ffmpegPath: binary.path, fps: 2, ...o })) {
        n++;
        size = `${f.width}x${f.height}`;
      }
      return { frames: n, size };
    });
  const video = await frames({});
  const videoBare = await bareFfmpeg(binary.path, videoArgs('fps=2'));
  const small = await frames({ maxSize: 448 });
  return {
    binary: binary.source,
    audio16kMono: { ...audio.value, ms: Math.round(audio.ms), xRealtime: x(audio.ms), bareFfmpegXRealtime: x(audioBare) },
    video2fps: { ...video.value, ms: Math.round(video.ms), xRealtime: x(video.ms), bareFfmpegXRealtime: x(videoBare) },
    video2fpsMax448: { ...small.value, ms: Math.round(small.ms), xRealtime: x(small.ms) },
  };
}

export async function run(): Promise<object> {
  const dir = mkdtempSync(join(tmpdir(), 'omniflow-media-bench-'));
  try {
    const binary = resolveFfmpeg();
    const clip = join(dir, 'clip60.mp4');
    const made = await timed(async () =>
      execFileSync(binary.path, ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', `testsrc=size=1280x720:rate=30:duration=${SECONDS}`,
        '-f', 'lavfi', '-i', `sine=frequency=440:sample_rate=44100:duration=${SECONDS}`, '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p',
        '-c:a', 'aac', '-shortest', clip]),
    );
    const decode = [await decodeSuite(binary, clip)];
    if (binary.source !== '@ffmpeg-installer/ffmpeg') {
      const saved = process.env.PATH;
      process.env.PATH = '';
      try {
        decode.push(await decodeSuite(resolveFfmpeg(), clip));
      } catch {
        /* bundled binary not installed: one row only */
      } finally {
        process.env.PATH = saved;
      }
    }

    const backend = await initBackend();
    const pcm = new Float32Array(SECONDS * 16_000);
    for (let i = 0; i < pcm.length; i++) pcm[i] = 0.5 * Math.sin((2 * Math.PI * 440 * i) / 16_000) + 0.05 * Math.sin(i * 12.9898) ;
    const tensorsBefore = tf.memory().numTensors;
    const batchMs = await medianMs(() => logMelFeatures(pcm).features.dispose(), 5, 1);
    const streamMs = await medianMs(() => {
      const s = new LogMelStream();
      for (let i = 0; i < pcm.length; i += 1600) s.push(pcm.subarray(i, i + 1600))?.dispose();
      s.flush()?.dispose();
      s.dispose();
    }, 3, 1);
    const leaked = tf.memory().numTensors - tensorsBefore;

    const pcm48 = new Float32Array(10 * 48_000).map((_, i) => Math.sin(i * 0.05));
    const resampleMs = await medianMs(() => resample(pcm48, 48_000, 16_000), 3, 1);

    const frame = { data: new Uint8Array(1280 * 720 * 3).map((_, i) => i % 251), width: 1280, height: 720 };
    const frames = Array.from({ length: 8 }, () => frame);
    let grid: readonly number[] = [];
    const visionMs = await medianMs(() => (grid = preprocessVideo(frames, { fps: 2 }).gridThw), 3, 1);

    return {
      clip: { seconds: SECONDS, video: '1280x720 30fps h264 (ultrafast)', audio: '44.1 kHz aac', generatedMs: Math.round(made.ms) },
      decode,
      logMel: {
        backend: backend.name,
        batchKernel: { ms: +batchMs.toFixed(1), xRealtime: x(batchMs) },
        streaming100msChunks: { ms: +streamMs.toFixed(1), xRealtime: x(streamMs) },
        goalXRealtime: 200,
        leakedTensors: leaked,
      },
      resample48kTo16k: { ms: +resampleMs.toFixed(1), xRealtime: +(10 / (resampleMs / 1000)).toFixed(1) },
      visionPreprocess720pFrames: { frames: frames.length, msPerFrame: +(visionMs / frames.length).toFixed(1), gridThw: grid },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
