import type { Writable } from 'node:stream';
import type { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, type AudioPacket } from '@omniflow/core';
import { AUDIO_OUTPUT_FORMATS, encodeAudio, type AudioOutputFormat } from './encode-audio.js';
import { sinkObservable } from './packet-pipe.js';

export const ffmpegEncoderSinkParams = z.object({
  output: z.union([
    z.string().min(1),
    z.custom<Writable>((v) => typeof v === 'object' && v !== null && typeof (v as Writable).write === 'function', { message: 'expected a file path or a Node Writable' }),
  ]),
  format: z.enum(Object.keys(AUDIO_OUTPUT_FORMATS) as [AudioOutputFormat, ...AudioOutputFormat[]]),
  bitrate: z.string().regex(/^\d+k?$/, 'a bitrate like "96k"').optional(),
  ffmpegPath: z.string().optional(),
});

/**
 * Sink node: encodes the audio stream with ffmpeg to mp3 / opus / m4a / wav / flac, into a file or a Writable.
 * Emits `{ frames, sampleRate, channels }` when the file is complete.
 *
 * ```ts
 * speech$.pipe(ffmpegEncoderSink({ output: 'reply.mp3', format: 'mp3', bitrate: '96k' })).subscribe();
 * ```
 */
export const ffmpegEncoderSink = defineNode({
  type: 'ffmpegEncoderSink',
  description: 'encodes audio packets with ffmpeg (mp3, opus, m4a, wav, flac) to a file or stream',
  inputs: { audio: ports.audio() },
  params: ffmpegEncoderSinkParams,
  operator: (p, ctx) => (audio$: Observable<AudioPacket>) =>
    sinkObservable(audio$, ctx, (packets) => encodeAudio(packets, p.output, { format: p.format, bitrate: p.bitrate, ffmpegPath: p.ffmpegPath })),
});
