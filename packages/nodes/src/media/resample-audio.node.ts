import { z } from 'zod';
import { audioPacket, defineNode, ports, samplesToMicros, type AudioPacket, type Micros } from '@omniflow/core';
import { transformOperator } from './packet-pipe.js';
import { Resampler } from './resampler.js';

export const resampleAudioParams = z.object({
  /** Output sample rate, Hz. */
  sampleRate: z.number().int().positive(),
  /** Stopband attenuation, dB. */
  attenuationDb: z.number().min(20).default(80),
  /** Passband edge as a fraction of the lower Nyquist. */
  passband: z.number().gt(0).lt(1).default(0.9),
});

/**
 * Band-limited resampling node (Kaiser windowed-sinc, streaming). Packets already at `sampleRate` pass through;
 * otherwise output pts continue from the first packet's pts by counting output samples.
 *
 * ```ts
 * wavFileSource({ path: 'talk-48k.wav' }).pipe(resampleAudio({ sampleRate: 16_000 })).subscribe(send);
 * ```
 */
export const resampleAudio = defineNode({
  type: 'resampleAudio',
  description: 'band-limited sample-rate conversion (polyphase Kaiser windowed sinc)',
  inputs: { audio: ports.audio() },
  outputs: { audio: ports.audio() },
  params: resampleAudioParams,
  operator: (p) =>
    transformOperator<AudioPacket, AudioPacket>(() => {
      let r: Resampler | undefined;
      let start: Micros = 0;
      let last: AudioPacket | undefined;
      const emit = (samples: Float32Array): AudioPacket[] => {
        if (!samples.length || !r || !last) return [];
        const pts = start + samplesToMicros(r.produced - samples.length / r.channels, p.sampleRate);
        return [audioPacket({ samples, sampleRate: p.sampleRate, channels: r.channels, pts, session: last.session, turn: last.turn })];
      };
      return {
        push: (a) => {
          if (a.sampleRate === p.sampleRate && !r) return [a];
          if (!r) {
            r = new Resampler({ inputRate: a.sampleRate, outputRate: p.sampleRate, channels: a.channels, attenuationDb: p.attenuationDb, passband: p.passband });
            start = a.pts;
          } else if (a.sampleRate !== r.inputRate || a.channels !== r.channels) {
            throw new Error(`resampleAudio: packet at pts ${a.pts} is ${a.sampleRate} Hz ${a.channels} ch, the stream started as ${r.inputRate} Hz ${r.channels} ch`);
          }
          last = a;
          return emit(r.push(a.samples));
        },
        flush: () => (r ? emit(r.flush()) : []),
      };
    }),
});
