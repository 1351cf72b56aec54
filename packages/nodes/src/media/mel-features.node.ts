import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { defineNode, ports, samplesToMicros, tensorPacket, type AudioPacket, type Micros, type TensorPacket } from '@omniflow/core';
import { LogMel, LogMelStream } from './log-mel.js';
import { transformOperator, type PacketTransform } from './packet-pipe.js';

export const melFeaturesParams = z.object({
  nMels: z.number().int().positive().default(128),
  /**
   * 'clip': one `input_features` packet per clip, exactly the extractor's batch output (a clip ends at the end of the
   * stream, every `clipSeconds`, or when the turn changes). 'stream': frames as soon as their windows are complete.
   */
  mode: z.enum(['clip', 'stream']).default('clip'),
  /** Clip mode: cut clips of at most this many seconds (long files stay bounded in memory). */
  clipSeconds: z.number().positive().optional(),
  /** Stream mode: the dynamic-range floor reference: 'running-max' or a fixed log10 value. */
  reference: z.union([z.literal('running-max'), z.number()]).default('running-max'),
});

type Params = z.output<typeof melFeaturesParams>;

function clipTransform(p: Params, node: string): PacketTransform<AudioPacket, TensorPacket> {
  const mel = new LogMel({ nMels: p.nMels });
  let parts: Float32Array[] = [];
  let length = 0;
  let first: AudioPacket | undefined;
  const limit = p.clipSeconds ? Math.round(p.clipSeconds * 16_000) : Infinity;
  const emit = (): TensorPacket[] => {
    if (!first || length === 0) return [];
    const pcm = new Float32Array(length);
    let o = 0;
    for (const part of parts) { pcm.set(part, o); o += part.length; }
    const head = first;
    parts = [];
    length = 0;
    first = undefined;
    if (pcm.length <= 200) return []; // too short for the reflect padding: no frame to give
    return [tensorPacket({ name: 'input_features', tensor: mel.features(pcm), session: head.session, turn: head.turn, pts: head.pts })];
  };
  return {
    push: (a) => {
      check(a, node);
      const out = first && a.turn !== first.turn ? emit() : [];
      first ??= a;
      let s = a.samples;
      while (s.length) {
        const take = Math.min(s.length, limit - length);
        parts.push(s.subarray(0, take));
        length += take;
        s = s.subarray(take);
        if (length >= limit) {
          const pts: Micros = first!.pts + samplesToMicros(length, 16_000);
          out.push(...emit());
          if (s.length) first = { ...a, pts } as AudioPacket;
        }
      }
      return out;
    },
    flush: () => emit(),
    dispose: () => mel.dispose(),
  };
}

function streamTransform(p: Params, node: string): PacketTransform<AudioPacket, TensorPacket> {
  const stream = new LogMelStream({ nMels: p.nMels, reference: p.reference === 'running-max' ? 'running-max' : { fixed: p.reference } });
  let origin: AudioPacket | undefined;
  const wrap = (t: tf.Tensor2D | undefined, before: number): TensorPacket[] =>
    t ? [tensorPacket({ name: 'input_features', tensor: t, session: origin!.session, turn: origin!.turn, pts: origin!.pts + before * 10_000 })] : [];
  return {
    push: (a) => {
      check(a, node);
      origin ??= a;
      const before = stream.frames;
      return wrap(stream.push(a.samples), before);
    },
    flush: () => {
      const before = stream.frames;
      return origin ? wrap(stream.flush(), before) : [];
    },
    dispose: () => stream.dispose(),
  };
}

function check(a: AudioPacket, node: string): void {
  if (a.sampleRate !== 16_000 || a.channels !== 1) {
    throw new Error(`${node}: port 'audio' needs 16000 Hz mono (the feature extractor's only rate), got ${a.sampleRate} Hz ${a.channels} ch at pts ${a.pts}; resample and mix down first`);
  }
}

/**
 * Log-mel features node (Qwen3-Omni / Whisper extractor): 16 kHz mono audio → `input_features` [nMels, frames]
 * tensor packets, one per clip (exact batch output) or incrementally (stream mode, 10 ms per frame, pts of the
 * first frame). The output tensors belong to the packets.
 *
 * ```ts
 * ffmpegAudioSource({ input: 'talk.mp3' }).pipe(melFeatures()).subscribe((p) => console.log(p.tensor.shape)); // [128, frames]
 * ```
 */
export const melFeatures = defineNode({
  type: 'melFeatures',
  description: 'Whisper-style 128-bin log-mel features of 16 kHz mono audio (Qwen3-Omni feature extractor)',
  inputs: { audio: ports.audio({ sampleRate: 16_000, channels: 1 }) },
  outputs: { features: ports.tensor({ name: 'input_features', dtype: 'float32', description: '[nMels, frames]' }) },
  params: melFeaturesParams,
  operator: (p, ctx) => transformOperator<AudioPacket, TensorPacket>(() => (p.mode === 'clip' ? clipTransform(p, ctx.node) : streamTransform(p, ctx.node))),
});

export const logMelParams = z.object({ nMels: z.number().int().positive().default(128) });

/**
 * The log-mel kernel as a tensor node: a pcm tensor [samples] (16 kHz mono) → `input_features` [nMels, frames].
 * Pure tensor math, so the runtime may fuse it with the audio encoder's kernels.
 *
 * ```ts
 * pcm$.pipe(logMel()).subscribe((p) => console.log(p.tensor.shape)); // [128, floor(samples / 160)]
 * ```
 */
export const logMel = defineNode({
  type: 'logMel',
  description: 'log-mel kernel: pcm tensor [samples] -> input_features [nMels, frames]',
  inputs: { pcm: ports.tensor({ name: 'pcm', dtype: 'float32' }) },
  outputs: { features: ports.tensor({ name: 'input_features', dtype: 'float32' }) },
  params: logMelParams,
  kernel: (p) => (x) => {
    const mel = new LogMel({ nMels: p.nMels });
    try {
      return mel.features(x as tf.Tensor1D);
    } finally {
      mel.dispose();
    }
  },
});
