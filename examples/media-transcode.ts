/**
 * Any media file → speech-ready audio file, as a graph: decode with ffmpeg, keep the speech (energy VAD marks it,
 * silence trim drops the edges), resample to 16 kHz mono, and encode with ffmpeg or write WAV.
 *
 *   node --conditions=source --import tsx examples/media-transcode.ts talk.mp4 talk.opus
 *   node --conditions=source --import tsx examples/media-transcode.ts talk.mp4 talk.wav
 *
 * Without arguments it generates a clip with silence around a tone and writes generated.mp3 next to it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join } from 'node:path';
import { graph } from '@omniflow/core';
import { describeStream, ffmpegAudioSource, ffmpegEncoderSink, mixdown, probeMedia, resampleAudio, resolveFfmpeg, silenceTrim, wavFileSink, type AudioOutputFormat } from '@omniflow/nodes';

let [input, output] = process.argv.slice(2);
if (!input) {
  const dir = mkdtempSync(join(tmpdir(), 'omniflow-transcode-'));
  input = join(dir, 'generated.wav');
  output = join(dir, 'generated.mp3');
  execFileSync(resolveFfmpeg().path, ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i',
    "aevalsrc='0.4*sin(2*PI*440*t)*between(t,1,3)':s=48000:d=5", '-ac', '2', input]);
  console.log(`no input given: generated ${input} (1 s silence, 2 s tone, 2 s silence, 48 kHz stereo)`);
}
if (!output) throw new Error('usage: media-transcode.ts <input> <output.(mp3|opus|m4a|flac|wav)>');
const format = extname(output).slice(1).toLowerCase();

const g = graph('transcode')
  .add('decode', ffmpegAudioSource, { input, sampleRate: 48_000, channels: 2, chunkMs: 50 })
  .add('mono', mixdown, { channels: 1 })
  .add('trim', silenceTrim, { thresholdDb: -40, paddingMs: 100 })
  .add('resample', resampleAudio, { sampleRate: 16_000 })
  .connect('decode.audio', 'mono.audio', { capacity: 8, policy: 'block' })
  .connect('mono.audio', 'trim.audio')
  .connect('trim.audio', 'resample.audio');
const withSink =
  format === 'wav'
    ? g.add('sink', wavFileSink, { path: output, format: 's16' }).connect('resample.audio', 'sink.audio')
    : g.add('sink', ffmpegEncoderSink, { output, format: format as AudioOutputFormat }).connect('resample.audio', 'sink.audio');

console.log(withSink.plan().text());
const t0 = performance.now();
const session = await withSink.run();
const written = await probeMedia(output);
console.log(`wrote ${output}: ${statSync(output).size} bytes, ${written.durationSeconds?.toFixed(2)} s, ${written.streams.map(describeStream).join(', ')}, in ${(performance.now() - t0).toFixed(0)} ms`);
console.log(session.report());
