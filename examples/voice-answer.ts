/**
 * Voice answer: a spoken question in (an audio file), a spoken answer out (a 24 kHz WAV), streamed.
 *
 *   node --conditions=source --import tsx examples/voice-answer.ts question.wav --out answer.wav
 *   node --conditions=source --import tsx examples/voice-answer.ts question.mp3 --model ~/models/Qwen3-Omni-30B-A3B-Instruct --speaker aiden
 *
 * Without a file it makes a 1.5 s test question with ffmpeg (a tone); without --model it runs on the tiny
 * golden-fixture checkpoint (random weights: the answer is noise, every step is the real one).
 *
 * The pipeline, as a template to copy: decode the file to 16 kHz mono → log-mel features → `audioEncoder` node →
 * `speak` node (thinker → talker → streaming Code2Wav). The answer's text is printed as it is written; the audio
 * packets arrive frame by frame and are written to the WAV. Each packet's `voices` says which text it speaks — what an
 * assistant keeps in its context if the user interrupts.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { concat, firstValueFrom, of } from 'rxjs';
import { tensorPacket, textPacket, type AudioPacket, type TensorPacket, type TextPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import {
  audioEncoder, decodeAudio, fixtureTokenizer, loadQwen3Omni, logMelFeatures, resolveFfmpeg, speak, writeWav, type Qwen3OmniModel,
} from '@omniflow/nodes';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string', short: 'o', default: 'answer.wav' },
    model: { type: 'string', short: 'm' },
    tokenizer: { type: 'string' },
    speaker: { type: 'string', short: 's', default: 'ethan' },
    seed: { type: 'string', default: '' },
    'max-tokens': { type: 'string', default: '' },
    'max-frames': { type: 'string', default: '' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: voice-answer.ts [audio-file] [--out FILE.wav] [--model DIR] [--tokenizer DIR] [--speaker NAME] [--seed N] [--max-tokens N] [--max-frames N]');
  process.exit(0);
}
const onFixture = !args.model;
const seed = Number(args.seed || (onFixture ? 3 : 0));
const maxNewTokens = Number(args['max-tokens'] || (onFixture ? 16 : 512));
const maxFrames = Number(args['max-frames'] || (onFixture ? 100 : 4096));
const modules = ['thinker', 'audio_tower', 'talker', 'code2wav'] as const;

const model: Qwen3OmniModel = onFixture
  ? await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules })
  : await loadQwen3Omni(args.model!, { ...(args.tokenizer ? { tokenizer: args.tokenizer } : {}), modules });
console.error(model.describe());
if (onFixture) console.error('\nNOTE: tiny fixture checkpoint with RANDOM weights — the answer is noise. Pass --model <dir> for a real one.');

let file = positionals[0];
let scratch: string | undefined;
if (!file) {
  scratch = mkdtempSync(join(tmpdir(), 'omniflow-voice-'));
  file = join(scratch, 'question.wav');
  execFileSync(resolveFfmpeg().path, ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'sine=frequency=330:sample_rate=16000:duration=1.5', file]);
  console.error(`\nno file given: generated ${file}`);
}

try {
  // 1. The question: 16 kHz mono, log-mel, audio encoder.
  const chunks: Float32Array[] = [];
  for await (const p of decodeAudio(file, { sampleRate: 16_000, channels: 1 })) chunks.push(p.samples);
  const pcm = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  chunks.reduce((o, c) => (pcm.set(c, o), o + c.length), 0);
  const { features } = logMelFeatures(pcm, { nMels: model.config.thinker_config.audio_config.num_mel_bins });
  const question = await firstValueFrom(of(tensorPacket({ name: 'input_features', tensor: features })).pipe(audioEncoder({ model })));
  console.error(`\n${file}: ${(pcm.length / 16_000).toFixed(2)} s of question\nA: `);

  // 2. One user turn (the spoken question), answered aloud.
  const started = performance.now();
  let firstAudio = 0;
  const packets: AudioPacket[] = [];
  const { text, audio } = speak({ model, speaker: args.speaker, seed, maxNewTokens, maxFrames })(
    concat<[TensorPacket, TextPacket]>(of(question), of(textPacket({ text: '', final: true }))),
  );
  text.subscribe((p) => process.stdout.write(p.text));
  await new Promise<void>((resolve, reject) => audio.subscribe({
    next: (p) => {
      firstAudio ||= performance.now() - started;
      packets.push(p);
    },
    error: reject,
    complete: resolve,
  }));
  const { frames } = await writeWav(packets, args.out!);
  const heard = packets.map((p) => p.voices?.text ?? '').join('');
  console.error(`\n\n${args.out}: ${(frames / 24_000).toFixed(2)} s of audio in ${((performance.now() - started) / 1000).toFixed(2)} s, first audio after ${firstAudio.toFixed(0)} ms; voiced text: ${JSON.stringify(heard.slice(0, 80))}`);
} finally {
  model.dispose();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
}
