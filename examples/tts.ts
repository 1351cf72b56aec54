/**
 * Text to speech: text in, a 24 kHz WAV out, streamed — audio starts before the answer is finished.
 *
 *   node --conditions=source --import tsx examples/tts.ts "Hello from omniflow." --out hello.wav
 *   node --conditions=source --import tsx examples/tts.ts "Bonjour !" --speaker chelsie --model ~/models/Qwen3-Omni-30B-A3B-Instruct
 *
 * Without --model it runs on the tiny golden-fixture checkpoint (random weights: the "speech" is noise, but every
 * step — thinker, talker prompt, MoE talker, code predictor, streaming Code2Wav — is the real one).
 *
 * The pipeline, as a template to copy: the Instruct model is asked to repeat the text; the `speak` node runs the
 * thinker, hands each fed row to the talker as it is made, and streams every codec frame through Code2Wav. Each audio
 * packet says which part of the text it voices.
 */
import { parseArgs } from 'node:util';
import { of } from 'rxjs';
import { textPacket, type AudioPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni, speak, writeWav, type Qwen3OmniModel } from '@omniflow/nodes';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string', short: 'o', default: 'tts.wav' },
    model: { type: 'string', short: 'm' },
    tokenizer: { type: 'string' },
    speaker: { type: 'string', short: 's', default: 'ethan' },
    seed: { type: 'string', default: '' },
    'max-frames': { type: 'string', default: '' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log('usage: tts.ts [text] [--out FILE.wav] [--model DIR] [--tokenizer DIR] [--speaker NAME] [--seed N] [--max-frames N]');
  process.exit(0);
}
const onFixture = !args.model;
const text = positionals.join(' ') || 'Hello from omniflow. This sentence is spoken as it is written.';
// On the random-weight fixture seed 3 keeps the talker talking for a while before its EOS.
const seed = Number(args.seed || (onFixture ? 3 : 0));
const maxFrames = Number(args['max-frames'] || (onFixture ? 100 : 4096));

const model: Qwen3OmniModel = onFixture
  ? await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'talker', 'code2wav'] })
  : await loadQwen3Omni(args.model!, { ...(args.tokenizer ? { tokenizer: args.tokenizer } : {}), modules: ['thinker', 'talker', 'code2wav'] });
console.error(model.describe());
if (onFixture) console.error('\nNOTE: tiny fixture checkpoint with RANDOM weights — the audio is noise. Pass --model <dir> for a real voice.');
const speakers = Object.keys(model.config.talker_config?.speaker_id ?? {});
if (!speakers.includes(args.speaker!.toLowerCase())) throw new Error(`--speaker ${args.speaker}: this checkpoint has ${speakers.join(', ')}`);

try {
  const started = performance.now();
  let firstAudio = 0;
  const packets: AudioPacket[] = [];
  const { text: answer, audio } = speak({
    model, speaker: args.speaker, seed, maxFrames, maxNewTokens: 4 * text.length + 16,
    system: 'You are a text-to-speech engine. Repeat the user\'s text exactly, with nothing added.',
  })(of(textPacket({ text, final: true })));
  answer.subscribe((p) => process.stderr.write(p.text));
  await new Promise<void>((resolve, reject) => audio.subscribe({
    next: (p) => {
      firstAudio ||= performance.now() - started;
      packets.push(p);
    },
    error: reject,
    complete: resolve,
  }));
  const { frames } = await writeWav(packets, args.out!);
  const seconds = (performance.now() - started) / 1000;
  console.error(`\n\n${args.out}: ${(frames / 24_000).toFixed(2)} s of audio (${packets.length} packets) in ${seconds.toFixed(2)} s; first audio after ${firstAudio.toFixed(0)} ms`);
} finally {
  model.dispose();
}
