import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { firstValueFrom, from, lastValueFrom, take, toArray, timer } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audioPacket, defineNode, disposePacket, graph, ports, videoPacket, type AudioPacket, type ControlPacket, type TensorPacket } from '@omniflow/core';
import { initBackend } from '@omniflow/runtime-gpu';
import { energyVad } from './energy-vad.node.js';
import { ffmpegAudioSource } from './ffmpeg-audio-source.node.js';
import { ffmpegEncoderSink } from './ffmpeg-encoder-sink.node.js';
import { resolveFfmpeg } from './ffmpeg-binary.js';
import { ffmpegVideoSource } from './ffmpeg-video-source.node.js';
import { logMelFeatures } from './log-mel.js';
import { logMel, melFeatures } from './mel-features.node.js';
import { mixdown } from './mixdown.node.js';
import { rechunk } from './rechunk.node.js';
import { resampleAudio } from './resample-audio.node.js';
import { readWav } from './wav.js';
import { dominantFrequency, sine } from './testing.js';
import { visionPreprocess } from './vision-preprocess.node.js';
import { wavFileSink } from './wav-file-sink.node.js';
import { wavFileSource } from './wav-file-source.node.js';

const dir = mkdtempSync(join(tmpdir(), 'omniflow-media-nodes-'));
const file = (name: string) => join(dir, name);
const ffmpeg = resolveFfmpeg();

beforeAll(async () => {
  await initBackend();
  const make = (...args: string[]) => execFileSync(ffmpeg.path, ['-hide_banner', '-loglevel', 'error', '-y', ...args]);
  make('-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=16000:duration=2', file('tone16k.wav'));
  make('-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=48000:duration=20', '-ac', '2', file('long.wav'));
  make('-f', 'lavfi', '-i', 'testsrc=size=96x64:rate=4:duration=2', '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', file('v.mp4'));
}, 60_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** ffmpeg processes that are children of this test process. */
const ffmpegChildren = (): number[] =>
  readdirSync('/proc/self/task')
    .flatMap((t) => readFileSync(`/proc/self/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'ffmpeg' && !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].startsWith('Z');
      } catch {
        return false;
      }
    });

describe('media nodes as plain operators', () => {
  it('ffmpegAudioSource -> melFeatures (clip) equals the batch kernel on the same samples, tensors owned by the packet', async () => {
    const before = tf.memory().numTensors;
    const [p] = await lastValueFrom(ffmpegAudioSource({ input: file('tone16k.wav') }).pipe(melFeatures(), toArray()));
    expect(p.name).toBe('input_features');
    expect(p.tensor.shape).toEqual([128, 200]);
    const { samples } = await readWav(file('tone16k.wav'));
    const { features } = logMelFeatures(samples);
    const a = (p.tensor as tf.Tensor).dataSync(), b = features.dataSync();
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
    expect(worst).toBeLessThan(1e-5);
    p.tensor.dispose();
    features.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('melFeatures stream mode emits 10 ms frames with pts, clipSeconds cuts clips, and 48 kHz input is refused by name', async () => {
    const pcm = sine(440, 16_000, 16_000);
    const packets = Array.from({ length: 10 }, (_, i) => audioPacket({ samples: pcm.slice(i * 1600, (i + 1) * 1600), sampleRate: 16_000, channels: 1, pts: 1_000_000 + i * 100_000 }));
    const streamed = await lastValueFrom(from(packets).pipe(melFeatures({ mode: 'stream' }), toArray()));
    expect(streamed.reduce((n, p) => n + p.tensor.shape[1], 0)).toBe(100);
    expect(streamed[0].pts).toBe(1_000_000);
    expect(streamed[1].pts).toBe(1_000_000 + streamed[0].tensor.shape[1] * 10_000);
    streamed.forEach((p) => p.tensor.dispose());
    const clips = await lastValueFrom(from(packets).pipe(melFeatures({ clipSeconds: 0.4 }), toArray()));
    expect(clips.map((p) => [p.tensor.shape[1], p.pts])).toEqual([[40, 1_000_000], [40, 1_400_000], [20, 1_800_000]]);
    clips.forEach((p) => p.tensor.dispose());
    const wrong = audioPacket({ samples: new Float32Array(4800), sampleRate: 48_000, channels: 1 });
    await expect(lastValueFrom(from([wrong]).pipe(melFeatures()))).rejects.toThrow(/melFeatures: port 'audio' needs 16000 Hz mono .* got 48000 Hz 1 ch/);
  });

  it('logMel is a kernel node (tensor in, tensor out) that the runtime can fuse', () => {
    expect(logMel.spec.kernel).toBeDefined();
    const before = tf.memory().numTensors;
    const pcm = tf.tensor1d(sine(440, 16_000, 8000));
    const out = logMel.spec.kernel!({ nMels: 80 })(pcm) as tf.Tensor;
    expect(out.shape).toEqual([80, 50]);
    tf.dispose([pcm, out]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('wavFileSource -> mixdown -> resampleAudio -> rechunk keeps the tone and gives exact 20 ms packets', async () => {
    const out = await lastValueFrom(
      wavFileSource({ path: file('long.wav'), chunkMs: 37 }).pipe(take(30), mixdown(), resampleAudio({ sampleRate: 16_000 }), rechunk({ ms: 20 }), toArray()),
    );
    expect(out.every((p) => p.sampleRate === 16_000 && p.channels === 1)).toBe(true);
    expect(out.slice(0, -1).every((p) => p.samples.length === 320)).toBe(true);
    expect(out.map((p) => p.pts).slice(0, 3)).toEqual([0, 20_000, 40_000]);
    const total = out.reduce((n, p) => n + p.samples.length, 0);
    expect(total).toBe(Math.ceil((30 * 1776) / 3));
    const all = new Float32Array(total);
    let o = 0;
    for (const p of out) { all.set(p.samples, o); o += p.samples.length; }
    expect(dominantFrequency(all, 16_000)).toBeCloseTo(300, 0);
  });

  it('energyVad inserts speech-start/speech-end around a tone', async () => {
    const sig = new Float32Array(32_000);
    sig.set(sine(300, 16_000, 8000, 0.3), 8000);
    const packets = Array.from({ length: 20 }, (_, i) => audioPacket({ samples: sig.slice(i * 1600, (i + 1) * 1600), sampleRate: 16_000, channels: 1, pts: i * 100_000 }));
    const out = await lastValueFrom(from(packets).pipe(energyVad({ hangoverMs: 200 }), toArray()));
    const controls = out.filter((p): p is ControlPacket => p.kind === 'control');
    expect(controls.map((c) => [c.signal, c.pts])).toEqual([['speech-start', 500_000], ['speech-end', 1_000_000]]);
  });

  it('visionPreprocess turns frames into pixel_values_videos clips with grid_thw and second_per_grid extras', async () => {
    const frames = await lastValueFrom(ffmpegVideoSource({ input: file('v.mp4'), fps: 2, size: { width: 64, height: 64 } }).pipe(toArray()));
    expect(frames.length).toBe(4);
    const before = tf.memory().numTensors;
    const clips = await lastValueFrom(from(frames).pipe(visionPreprocess({ patchSize: 16, framesPerClip: 4, minPixels: 4096, maxPixels: 4096 }), toArray()));
    expect(clips.length).toBe(1);
    const c = clips[0] as TensorPacket<tf.Tensor>;
    expect(c.name).toBe('pixel_values_videos');
    expect(c.tensor.shape).toEqual([2 * 4 * 4, 3 * 2 * 16 * 16]);
    expect(Array.from(c.extras!.grid_thw.dataSync())).toEqual([2, 4, 4]);
    expect(c.extras!.second_per_grid.dataSync()[0]).toBe(1);
    const [img] = await lastValueFrom(
      from([{ ...videoPacket({ data: frames[0].data, width: 64, height: 64, format: 'rgb24', index: 0, duration: 1 }), kind: 'image' as const }]).pipe(visionPreprocess({ minPixels: 4096, maxPixels: 4096 }), toArray()),
    );
    expect(img.name).toBe('pixel_values');
    disposePacket(c);
    disposePacket(img);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('unsubscribing from ffmpegAudioSource kills ffmpeg', async () => {
    expect(ffmpegChildren()).toEqual([]);
    const first = await firstValueFrom(ffmpegAudioSource({ input: file('long.wav'), chunkMs: 10 }));
    expect(first.samples.length).toBe(160);
    const end = Date.now() + 3000;
    while (ffmpegChildren().length && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    expect(ffmpegChildren()).toEqual([]);
  });

  it('unsubscribing kills ffmpeg even while it waits on a stalled http stream', async () => {
    const wav = readFileSync(file('long.wav'));
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'audio/wav' });
      res.write(wav.subarray(0, 1000)); // the header and a little data, then nothing while the connection stays open
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/stalled.wav`;
      const sub = ffmpegAudioSource({ input: url }).subscribe();
      let end = Date.now() + 5000;
      while (ffmpegChildren().length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      expect(ffmpegChildren().length).toBe(1);
      await new Promise((r) => setTimeout(r, 200)); // ffmpeg is now blocked reading the stream, and so is our read
      sub.unsubscribe();
      end = Date.now() + 3000;
      while (ffmpegChildren().length && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
      expect(ffmpegChildren()).toEqual([]);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it('sinks: wavFileSink and ffmpegEncoderSink write what they were given', async () => {
    const packets = () => from(Array.from({ length: 10 }, (_, i) => audioPacket({ samples: sine(880, 24_000, 2400, 0.5, (2 * Math.PI * 880 * i * 2400) / 24_000), sampleRate: 24_000, channels: 1, pts: i * 100_000 })));
    const wav = await lastValueFrom(packets().pipe(wavFileSink({ path: file('out.wav'), format: 's16' })));
    expect(wav.frames).toBe(24_000);
    const back = await readWav(file('out.wav'));
    expect(dominantFrequency(back.samples, 24_000)).toBeCloseTo(880, 0);
    const mp3 = await lastValueFrom(packets().pipe(ffmpegEncoderSink({ output: file('out.mp3'), format: 'mp3' })));
    expect(mp3).toEqual({ frames: 24_000, sampleRate: 24_000, channels: 1 });
    expect(() => ffmpegEncoderSink({ output: file('x'), format: 'mp5' as 'mp3' })).toThrow(/ffmpegEncoderSink: bad params: format/);
  });
});

describe('media nodes in a graph', () => {
  it('a full block queue pauses ffmpeg: bytes written ahead of the consumer stay bounded', async () => {
    let consumed = 0;
    let maxAhead = 0;
    let pid = 0;
    const slowSink = defineNode({
      type: 'slowAudioSink',
      inputs: { audio: ports.audio() },
      operator: (_p, ctx) => (in$) =>
        in$.pipe(
          ctx.mapAsync((p: AudioPacket) => {
            consumed += p.samples.byteLength;
            pid ||= ffmpegChildren()[0] ?? 0;
            if (pid) {
              try {
                const written = Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
                maxAhead = Math.max(maxAhead, written - consumed);
              } catch {
                /* ffmpeg already finished */
              }
            }
            return timer(2);
          }),
        ),
    });
    // 8 s of 48 kHz stereo float = 3 MB in 800 packets of 10 ms (3840 bytes each).
    const g = graph('paused-ffmpeg')
      .add('src', ffmpegAudioSource, { input: file('long.wav'), sampleRate: 48_000, channels: 2, chunkMs: 10, inputOptions: ['-t', '8'] })
      .add('sink', slowSink)
      .connect('src.audio', 'sink.audio', { capacity: 4, policy: 'block' });
    const session = await g.run();
    expect(consumed).toBe(8 * 48_000 * 2 * 4);
    const edge = session.metrics().edges.find((e) => e.id === 'src.audio->sink.audio')!;
    expect(edge.maxDepth).toBeLessThanOrEqual(5); // our queue: the edge's capacity (4) plus the packet being handed over
    expect(edge.drops.overflow).toBe(0);
    expect(pid).toBeGreaterThan(0);
    // queue (4 x 3.8 KB) + our PassThrough (64 KiB each side) + the stdout socket buffer + the OS pipe (64 KiB):
    // a few hundred KB, where an unpaused ffmpeg would be seconds ahead (megabytes).
    expect(maxAhead).toBeLessThan(640 * 1024);
  });
});
