import { once } from 'node:events';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { AudioPacket } from '@omniflow/core';
import { FfmpegProcess, MediaError } from './ffmpeg-process.js';
import { encodePcm } from './wav.js';

/** Containers the ffmpeg encoder sink writes, each with the codec it uses. */
export const AUDIO_OUTPUT_FORMATS = {
  mp3: { codec: 'libmp3lame', muxer: 'mp3', bitrate: '128k' },
  opus: { codec: 'libopus', muxer: 'ogg', bitrate: '64k' },
  m4a: { codec: 'aac', muxer: 'ipod', bitrate: '128k' },
  wav: { codec: 'pcm_s16le', muxer: 'wav', bitrate: undefined },
  flac: { codec: 'flac', muxer: 'flac', bitrate: undefined },
} as const;
export type AudioOutputFormat = keyof typeof AUDIO_OUTPUT_FORMATS;

// libopus only encodes these rates; anything else is resampled to 48 kHz by ffmpeg.
const OPUS_RATES = new Set([8000, 12000, 16000, 24000, 48000]);

export interface EncodeAudioOptions {
  readonly format: AudioOutputFormat;
  /** Encoder bitrate, e.g. '96k' (lossy formats). */
  readonly bitrate?: string;
  readonly ffmpegPath?: string;
  /** End the Writable when done (default true). */
  readonly end?: boolean;
}

/**
 * Encodes audio packets with ffmpeg into mp3, opus (Ogg), m4a (AAC), wav or flac — to a file path or a Node
 * Writable. The sample rate and channels come from the first packet. PCM flows into ffmpeg's stdin through a
 * pipe, so a slow encoder slows the producer instead of buffering. m4a to a Writable is fragmented MP4 (a pipe
 * cannot be seeked to write the index at the front).
 *
 * ```ts
 * await encodeAudio(decodeAudio('talk.wav'), 'talk.mp3', { format: 'mp3', bitrate: '96k' });
 * ```
 */
export async function encodeAudio(
  packets: AsyncIterable<AudioPacket> | Iterable<AudioPacket>,
  output: string | Writable,
  options: EncodeAudioOptions,
): Promise<{ frames: number; sampleRate: number; channels: number }> {
  const spec = AUDIO_OUTPUT_FORMATS[options.format];
  if (!spec) {
    throw new MediaError('unknown-format', `encodeAudio: unknown output format ${JSON.stringify(options.format)}; use one of ${Object.keys(AUDIO_OUTPUT_FORMATS).join(', ')}`);
  }
  const it = (Symbol.asyncIterator in packets ? packets[Symbol.asyncIterator]() : (packets as Iterable<AudioPacket>)[Symbol.iterator]()) as AsyncIterator<AudioPacket> | Iterator<AudioPacket>;
  const first = await it.next();
  if (first.done) {
    throw new Error(`encodeAudio: no audio packets to encode into ${typeof output === 'string' ? JSON.stringify(output) : 'the output stream'}`);
  }
  const { sampleRate, channels } = first.value;
  let frames = 0;
  async function* pcm(): AsyncGenerator<Uint8Array> {
    let p: AudioPacket = first.value;
    for (;;) {
      if (p.sampleRate !== sampleRate || p.channels !== channels) {
        throw new Error(`encodeAudio: packet at pts ${p.pts} is ${p.sampleRate} Hz ${p.channels} ch, the stream started as ${sampleRate} Hz ${channels} ch`);
      }
      frames += p.samples.length / channels;
      yield encodePcm(p.samples, 'f32le');
      const r = await it.next();
      if (r.done) return;
      p = r.value;
    }
  }
  const input = Readable.from(pcm(), { objectMode: false, highWaterMark: 64 * 1024 });
  let inputError: Error | undefined;
  input.on('error', (e) => (inputError = e));
  const toStream = typeof output !== 'string';
  const outputOptions = [
    '-c:a', spec.codec,
    ...(spec.bitrate ? ['-b:a', options.bitrate ?? spec.bitrate] : []),
    ...(options.format === 'opus' && !OPUS_RATES.has(sampleRate) ? ['-ar', '48000'] : []),
    ...(options.format === 'm4a' && toStream ? ['-movflags', 'frag_keyframe+empty_moov'] : []),
    '-f', spec.muxer,
  ];
  // ffmpeg writes into our own PassThrough that never emits 'close' (fluent-ffmpeg reports a closed output as an error
  // when ffmpeg's exit arrives more than 20 ms later, as on a busy event loop); it is piped on to the caller's Writable.
  const relay = toStream ? new PassThrough({ emitClose: false }) : undefined;
  if (relay) relay.pipe(output as Writable, { end: options.end !== false });
  const proc = FfmpegProcess.start({
    input,
    inputOptions: ['-f', 'f32le', '-ar', String(sampleRate), '-ac', String(channels)],
    outputOptions,
    output: relay ?? (output as string),
    ffmpegPath: options.ffmpegPath,
  });
  try {
    await proc.done;
  } catch (err) {
    throw inputError ?? err;
  } finally {
    proc.kill();
  }
  if (inputError) throw inputError;
  if (toStream && options.end !== false && !(output as Writable).writableFinished) await finished(output as Writable);
  return { frames, sampleRate, channels };
}

export interface WritePcmOptions {
  /** Byte format written: 'f32le' (default) or 's16le'. */
  readonly format?: 'f32le' | 's16le';
  /** End the Writable afterwards (default false: stdout and sockets usually stay open). */
  readonly end?: boolean;
}

/**
 * Raw PCM sink: writes each packet's interleaved samples to a Node Writable, waiting for 'drain' when its
 * buffer is full (backpressure reaches the producer). Resolves with the frames written.
 *
 * ```ts
 * await writePcm(decodeAudio('talk.mp3'), process.stdout, { format: 's16le' }); // | aplay -f S16_LE -r 16000
 * ```
 */
export async function writePcm(packets: AsyncIterable<AudioPacket> | Iterable<AudioPacket>, target: Writable, options: WritePcmOptions = {}): Promise<{ frames: number }> {
  const format = options.format ?? 'f32le';
  if (format !== 'f32le' && format !== 's16le') throw new RangeError(`writePcm: format must be 'f32le' or 's16le', got ${JSON.stringify(format)}`);
  let frames = 0;
  for await (const p of packets) {
    if (target.destroyed) throw new Error('writePcm: the target stream was destroyed');
    if (!target.write(encodePcm(p.samples, format))) await once(target, 'drain');
    frames += p.samples.length / p.channels;
  }
  if (options.end) {
    target.end();
    await finished(target);
  }
  return { frames };
}
