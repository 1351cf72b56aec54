/**
 * Ask a question about a local audio or video file and stream the answer.
 *
 *   node --conditions=source --import tsx examples/ask-media.ts talk.mp3 --question "What is being said?"
 *   node --conditions=source --import tsx examples/ask-media.ts clip.mp4 --model ~/models/Qwen3-Omni-30B-A3B-Instruct
 *
 * Without --model it runs on the tiny golden-fixture checkpoint (random weights: the answer is nonsense text, but
 * every step is the real one); without a file it generates a 2 s test clip (colour bars and a tone) with ffmpeg.
 *
 * The pipeline, as a template to copy: decode → log-mel → audioEncoder; video frames → patches → visionEncoder (the
 * video's own soundtrack rides along, interleaved by time); then the thinker node gets the media and the question as
 * one user turn and streams text.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { concat, firstValueFrom, of, type Observable } from 'rxjs';
import { tensorPacket, textPacket, type TensorPacket, type TextPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import {
  audioEncoder,
  decodeAudio,
  decodeVideo,
  fixtureTokenizer,
  loadQwen3Omni,
  logMelFeatures,
  preprocessVideo,
  resolveFfmpeg,
  thinker,
  visionEncoder,
  type Qwen3OmniModel,
} from '@omniflow/nodes';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    question: { type: 'string', short: 'q' },
    model: { type: 'string', short: 'm' },
    tokenizer: { type: 'string' },
    'max-tokens': { type: 'string', default: '' },
    fps: { type: 'string', default: '2' },
    'max-frames': { type: 'string', default: '8' },
    'max-pixels': { type: 'string', default: '' },
    'no-video': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: ask-media.ts [file] [--question TEXT] [--model DIR] [--tokenizer DIR] [--max-tokens N] [--fps N] [--max-frames N] [--max-pixels N] [--no-video]');
  process.exit(0);
}

const onFixture = !args.model;
const maxNewTokens = Number(args['max-tokens'] || (onFixture ? 24 : 512));
const fps = Number(args.fps);
const maxFrames = Number(args['max-frames']);
for (const [name, v] of Object.entries({ 'max-tokens': maxNewTokens, fps, 'max-frames': maxFrames })) {
  if (!(v > 0)) throw new Error(`--${name} must be a positive number, got ${v}`);
}

// 1. The model: a real checkpoint folder, or the tiny fixture (which ships no tokenizer: use the fixture one).
const model: Qwen3OmniModel = onFixture
  ? await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower', 'visual'] })
  : await loadQwen3Omni(args.model!, args.tokenizer ? { tokenizer: args.tokenizer } : {});
console.error(model.describe());
if (onFixture) console.error('\nNOTE: tiny fixture checkpoint with RANDOM weights — the answer is nonsense text. Pass --model <dir> for a real one.');

// 2. The file: given, or a generated clip.
let file = positionals[0];
let scratch: string | undefined;
if (!file) {
  scratch = mkdtempSync(join(tmpdir(), 'omniflow-ask-'));
  file = join(scratch, 'bars-and-tone.mp4');
  execFileSync(resolveFfmpeg().path, [
    '-hide_banner', '-loglevel', 'error', '-y',
    '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10:duration=2',
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=16000:duration=2',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest', file,
  ]);
  console.error(`\nno file given: generated ${file}`);
}

try {
  // 3. Audio: decode to 16 kHz mono, log-mel features, audio encoder.
  const decode = decodeAudio(file, { sampleRate: 16_000, channels: 1 });
  const chunks: Float32Array[] = [];
  for await (const p of decode) chunks.push(p.samples);
  const info = await decode.info;
  const pcm = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  chunks.reduce((o, c) => (pcm.set(c, o), o + c.length), 0);
  const hasVideo = !args['no-video'] && info.inputs.some((i) => i.streams.some((s) => s.type === 'video'));
  console.error(`\n${file}: ${(pcm.length / 16_000).toFixed(2)} s of audio${hasVideo ? ', with video' : ''}`);

  const { features } = logMelFeatures(pcm, { nMels: model.config.thinker_config.audio_config.num_mel_bins });
  const featuresPacket: TensorPacket = tensorPacket({ name: 'input_features', tensor: features });
  const audio = await firstValueFrom(of(featuresPacket).pipe(audioEncoder({ model })));

  // 4. Video (when there is one): frames at `fps`, patches, vision encoder; the soundtrack travels as an extra.
  let media: Observable<TensorPacket> = of(audio);
  if (hasVideo) {
    const v = model.config.thinker_config.vision_config;
    const frames = [];
    for await (const f of decodeVideo(file, { fps, maxSize: 640 })) {
      frames.push(f);
      if (frames.length >= maxFrames) break;
    }
    const maxPixels = Number(args['max-pixels'] || (onFixture ? 64 * 64 : 768 * 32 * 32));
    const clip = preprocessVideo(frames, {
      fps, patchSize: v.patch_size, temporalPatchSize: v.temporal_patch_size, mergeSize: v.spatial_merge_size,
      maxPixels, minPixels: Math.min(128 * 32 * 32, maxPixels),
    });
    console.error(`video: ${frames.length} frames at ${fps} fps → ${clip.width}x${clip.height}, grid [${clip.gridThw}], ${clip.tokens} tokens`);
    const pixels: TensorPacket = tensorPacket({
      name: 'pixel_values_videos',
      tensor: tf.tensor2d(clip.pixelValues, [clip.shape[0], clip.shape[1]]),
      extras: { grid_thw: tf.tensor1d([...clip.gridThw], 'int32'), second_per_grid: tf.tensor1d([clip.secondPerGrid]), audio_embeds: audio.tensor as tf.Tensor },
    });
    media = of(await firstValueFrom(of(pixels).pipe(visionEncoder({ model }))));
  }

  // 5. One user turn — media, then the question — and the streamed answer.
  const question = args.question ?? (hasVideo ? 'What happens in this video, and what can you hear?' : 'What can you hear in this recording?');
  console.error(`\nQ: ${question}\nA: `);
  const started = performance.now();
  let firstToken = 0;
  let tokens = 0;
  const out = thinker({ model, maxNewTokens, ...(onFixture ? {} : { sampler: { temperature: 0.6, topP: 0.95, topK: 20 } }) })(
    concat<[TensorPacket, TextPacket]>(media, of(textPacket({ text: question, final: true }))),
  );
  out.tokens.subscribe(() => {
    tokens++;
    firstToken ||= performance.now() - started;
  });
  await new Promise<void>((resolve, reject) =>
    out.text.subscribe({ next: (p) => process.stdout.write(p.text), error: reject, complete: resolve }),
  );
  const seconds = (performance.now() - started) / 1000;
  console.error(`\n\n${tokens} tokens in ${seconds.toFixed(2)} s (first after ${firstToken.toFixed(0)} ms, ${(tokens / seconds).toFixed(1)} tokens/s)`);
} finally {
  model.dispose();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
}
