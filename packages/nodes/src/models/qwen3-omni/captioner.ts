import { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, samplesToMicros, textPacket, type AudioPacket, type ControlPacket, type TextPacket } from '@omniflow/core';
import { logMelFeatures } from '../../media/log-mel.js';
import type { Qwen3OmniModel } from './load.js';
import { samplerOptionsSchema, type SamplerOptions } from './sampler.js';
import { openModel, thinkerParams } from './thinker.js';
import { runThinkerTurn, type ThinkerDelta } from './thinker-turn.js';

/*
 * The `captioner` preset: 16 kHz mono audio in, a caption out. The Qwen3-Omni Captioner checkpoint is the thinker
 * without a talker, prompted with the audio alone (no text); any Qwen3-Omni checkpoint works with an instruction.
 */

export interface CaptionOptions {
  /** Text after the audio in the user turn (the Captioner checkpoint is used without one). */
  readonly prompt?: string;
  readonly maxNewTokens?: number;
  readonly sampler?: SamplerOptions;
  readonly signal?: AbortSignal;
}

/**
 * Captions one mono 16 kHz clip: log-mel → audio encoder → thinker, yielding the caption as it is generated.
 *
 * ```ts
 * let caption = '';
 * for await (const d of captionAudio(model, pcm16k, { maxNewTokens: 64 })) caption += d.text;
 * ```
 */
export async function* captionAudio(model: Qwen3OmniModel, pcm: Float32Array, options: CaptionOptions = {}): AsyncGenerator<ThinkerDelta> {
  const encoder = model.audioEncoder;
  if (!encoder) throw new Error('captioner: the model was loaded without its audio encoder (thinker.audio_tower)');
  if (pcm.length < 160) throw new Error(`captioner: ${pcm.length} samples is shorter than one 10 ms mel frame`);
  const { features, frames } = logMelFeatures(pcm, { nMels: model.config.thinker_config.audio_config.num_mel_bins });
  let embeds;
  try {
    embeds = encoder.encode(features, [frames]).embeds;
  } finally {
    features.dispose();
  }
  try {
    const content = [{ type: 'audio' as const, embeds, frames }, ...(options.prompt ? [{ type: 'text' as const, text: options.prompt }] : [])];
    yield* runThinkerTurn(model, [{ role: 'user', content }], options);
  } finally {
    embeds.dispose();
  }
}

/**
 * Captions one clip and returns the whole caption.
 *
 * ```ts
 * const text = await captionText(model, pcm16k);
 * ```
 */
export async function captionText(model: Qwen3OmniModel, pcm: Float32Array, options: CaptionOptions = {}): Promise<string> {
  let text = '';
  for await (const d of captionAudio(model, pcm, options)) text += d.text;
  return text;
}

export const captionerParams = z.object({
  model: thinkerParams.shape.model,
  tokenizer: z.string().optional(),
  /** Instruction after the audio; none for the Captioner checkpoint. */
  prompt: z.string().optional(),
  /** Caption every this many seconds of audio; 0 captions each turn whole. */
  segmentSeconds: z.number().nonnegative().default(0),
  maxNewTokens: z.number().int().positive().default(256),
  sampler: samplerOptionsSchema.partial().default({ greedy: true }),
});

/**
 * Captions audio: each turn (or each `segmentSeconds` of it) becomes one streamed caption, stamped with the pts of
 * its first sample. A turn ends at a 'turn-end', 'flush' or 'end-of-stream' control packet, a packet of a new turn,
 * or the end of the input.
 *
 * ```ts
 * from(decodeAudio('talk.mp3')).pipe(captioner({ model, segmentSeconds: 30 }))
 *   .subscribe((p) => process.stdout.write(p.final ? `${p.text}\n` : p.text));
 * ```
 */
export const captioner = defineNode({
  type: 'captioner',
  description: 'Qwen3-Omni captioner: 16 kHz mono audio in, streamed caption text out',
  inputs: { audio: ports.of(['audio', 'control'], { description: '16 kHz mono audio, control packets end a turn' }) },
  outputs: { text: ports.text({ description: 'caption deltas; the last of each caption has final: true' }) },
  params: captionerParams,
  open: (params) => openModel(params.model, params.tokenizer),
  operator: (params, ctx, resource) => (input$: Observable<AudioPacket | ControlPacket>) =>
    new Observable<TextPacket>((subscriber) => {
      const { model } = resource;
      const segmentSamples = Math.round(params.segmentSeconds * 16_000);
      let pending: { session: string; turn: number; pts: number; chunks: Float32Array[]; samples: number } | undefined;
      // Captions run one after another, in input order; the input keeps flowing into `pending` meanwhile.
      let chain: Promise<void> = Promise.resolve();
      const torn = new AbortController();
      const cut = () => {
        if (!pending || pending.samples === 0) return;
        const seg = pending;
        pending = { ...seg, pts: seg.pts + samplesToMicros(seg.samples, 16_000), chunks: [], samples: 0 };
        const pcm = new Float32Array(seg.samples);
        let o = 0;
        for (const c of seg.chunks) {
          pcm.set(c, o);
          o += c.length;
        }
        chain = chain.then(async () => {
          if (torn.signal.aborted || subscriber.closed || seg.turn < ctx.turn) return;
          // Aborted by an interrupt of this turn (the current turn's signal) or by unsubscribing.
          const stop = AbortSignal.any([ctx.signal, torn.signal]);
          const stamp = { session: seg.session, turn: seg.turn, pts: seg.pts };
          const release = ctx.hold();
          try {
            for await (const d of captionAudio(model, pcm, { prompt: params.prompt, maxNewTokens: params.maxNewTokens, sampler: params.sampler, signal: stop })) {
              if (d.text || d.finishReason) subscriber.next(textPacket({ ...stamp, text: d.text, role: 'assistant', ...(d.finishReason ? { final: true } : {}) }));
            }
          } catch (err) {
            if (!stop.aborted) subscriber.error(err);
          } finally {
            release();
          }
        });
      };
      const sub = input$.subscribe({
        next: (p) => {
          if (p.turn < ctx.turn && !p.uninterruptible) return;
          if (pending && (pending.turn !== p.turn || pending.session !== p.session)) {
            cut();
            pending = undefined;
          }
          if (p.kind === 'control') {
            if (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream') cut();
            return;
          }
          if (p.kind !== 'audio') {
            subscriber.error(new Error(`captioner: input port 'audio' takes audio and control packets, got a ${(p as { kind: string }).kind} packet`));
            return;
          }
          if (p.sampleRate !== 16_000 || p.channels !== 1) {
            subscriber.error(new Error(`captioner: input port 'audio' needs 16 kHz mono, got ${p.sampleRate} Hz × ${p.channels} channels (resample first)`));
            return;
          }
          pending ??= { session: p.session, turn: p.turn, pts: p.pts, chunks: [], samples: 0 };
          let samples = p.samples;
          while (samples.length) {
            const room = segmentSamples > 0 ? segmentSamples - pending.samples : samples.length;
            const piece = samples.subarray(0, room);
            pending.chunks.push(piece);
            pending.samples += piece.length;
            samples = samples.subarray(piece.length);
            if (segmentSamples > 0 && pending.samples >= segmentSamples) cut();
          }
        },
        error: (e) => subscriber.error(e),
        complete: () => {
          cut();
          void chain.then(() => subscriber.complete());
        },
      });
      return () => {
        torn.abort(new Error('captioner: unsubscribed'));
        sub.unsubscribe();
      };
    }),
  close: (resource) => {
    if (resource.owned) resource.model.dispose();
  },
});
