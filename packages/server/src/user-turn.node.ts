import * as tf from '@tensorflow/tfjs-core';
import { merge, Observable, share, filter, map } from 'rxjs';
import { z } from 'zod';
import { controlPacket, defineNode, ports, type AudioPacket, type ControlPacket, type Micros, type Packet } from '@omniflow/core';
import { EnergyVad, logMelFeatures, Qwen3OmniModel } from '@omniflow/nodes';
import { Conversation, type TurnDetection } from './conversation.js';

/*
 * The `userTurn` node: turn detection and the user's side of a turn. 16 kHz audio comes in; with server VAD an
 * energy VAD (attack, hangover) marks speech-start / speech-end, and the speech — with `prefixPaddingMs` of audio from
 * before the detected start — becomes the user's message when the hangover ends it. Without VAD (push-to-talk) the
 * audio accumulates until the client commits. A committed message is encoded at once (log-mel → audio encoder) and
 * added to the conversation; the node then says so on both outputs.
 *
 * Control input (from the connection): 'turn-end' = input_audio_buffer.commit, 'flush' = input_audio_buffer.clear.
 * Outputs: `user` — a 'turn-end' packet per committed message, `reason` = its item id (the respond node answers it);
 * `events` — 'speech-start' / 'speech-end' (pts = audio time of the detected edge), 'turn-end' (reason: item id, or ''
 * when a commit found no audio) and 'flush' (buffer cleared). All are uninterruptible: a barge-in must not lose them.
 */

export const userTurnParams = z.object({
  model: z.custom<Qwen3OmniModel>((v) => v instanceof Qwen3OmniModel, { message: 'expected a model from loadQwen3Omni() with its audio encoder' }),
  conversation: z.custom<Conversation>((v) => v instanceof Conversation, { message: 'expected a Conversation' }),
  /** Buffer limit: push-to-talk drops older audio (counted) beyond it; with server VAD, speech this long ends the turn. */
  maxBufferSeconds: z.number().positive().default(60),
  /** Shortest audio a commit accepts (the Realtime API's 100 ms). */
  minCommitMs: z.number().min(0).default(100),
});

const RATE = 16_000;

/**
 * Detects the user's turns in 16 kHz audio (server VAD or client commits) and adds each one, encoded, to the
 * conversation.
 *
 * ```ts
 * const { user, events } = userTurn({ model, conversation })({ audio: mic16k$, control: commits$ });
 * events.subscribe((p) => console.log(p.signal, p.reason ?? ''));
 * ```
 */
export const userTurn = defineNode({
  type: 'userTurn',
  description: 'turn detection (energy VAD or client commit) and audio encoding of each user message',
  inputs: {
    audio: ports.audio({ sampleRate: RATE, channels: 1 }),
    control: ports.control({ description: "'turn-end' commits the buffer, 'flush' clears it" }),
  },
  outputs: {
    user: ports.control({ description: "'turn-end' per committed user message (reason: item id)" }),
    events: ports.control({ description: 'speech-start / speech-end / turn-end / flush' }),
  },
  params: userTurnParams,
  operator: (params, ctx) => (inputs: { audio: Observable<AudioPacket>; control: Observable<ControlPacket> }) => {
    const conversation = params.conversation;
    const encoder = params.model.audioEncoder;
    if (!encoder) throw new Error(`${ctx.node}: the model was loaded without its audio encoder (thinker.audio_tower)`);
    const nMels = params.model.config.thinker_config.audio_config.num_mel_bins;

    const out$ = new Observable<ControlPacket>((sub) => {
      const chunks: { pts: Micros; samples: Float32Array }[] = [];
      let buffered = 0;
      let vad: EnergyVad | undefined;
      let vadFor: TurnDetection | null = null;
      let speechFrom: Micros | undefined; // server VAD: start of the message being spoken (prefix included)
      let pendingId: string | undefined; // the id speech-start announced for the message being spoken
      const control = (signal: ControlPacket['signal'], pts: Micros, reason?: string): ControlPacket =>
        controlPacket({ signal, session: ctx.session, turn: ctx.turn, pts, uninterruptible: true, ...(reason !== undefined ? { reason } : {}) });
      const emit = (p: ControlPacket) => sub.next(p);

      const trim = (keepFrom: Micros) => {
        while (chunks.length && chunks[0].pts + (chunks[0].samples.length * 1e6) / RATE <= keepFrom) buffered -= chunks.shift()!.samples.length;
      };
      const commit = (pts: Micros, from?: Micros) => {
        const parts = from === undefined ? chunks : chunks.filter((c) => c.pts + (c.samples.length * 1e6) / RATE > from);
        const n = parts.reduce((s, c) => s + c.samples.length, 0);
        chunks.length = 0;
        buffered = 0;
        if ((n * 1000) / RATE < params.minCommitMs) {
          pendingId = undefined;
          return emit(control('turn-end', pts, ''));
        }
        const pcm = new Float32Array(n);
        parts.reduce((o, c) => (pcm.set(c.samples, o), o + c.samples.length), 0);
        const t0 = performance.now();
        const { features, frames } = logMelFeatures(pcm, { nMels });
        let embeds: tf.Tensor2D;
        try {
          embeds = encoder.encode(features, [frames]).embeds;
        } finally {
          features.dispose();
        }
        const encodeMs = performance.now() - t0;
        ctx.metrics.observe('encode_ms', encodeMs);
        const item = conversation.addUser([{ type: 'audio', embeds, frames }], pendingId);
        pendingId = undefined;
        item.timing = { committedAt: t0, encodeMs, audioMs: (n * 1000) / RATE };
        const done = control('turn-end', pts, item.id);
        emit(done);
      };

      const onAudio = (a: AudioPacket) => {
        const td = conversation.settings.turnDetection;
        chunks.push({ pts: a.pts, samples: a.samples });
        buffered += a.samples.length;
        if (!td) {
          // Push-to-talk: keep everything up to the limit.
          const limit = params.maxBufferSeconds * RATE;
          while (buffered > limit && chunks.length > 1) {
            buffered -= chunks.shift()!.samples.length;
            ctx.metrics.count('buffer_dropped');
          }
          return;
        }
        if (!vad || vadFor !== td) {
          vad = new EnergyVad({ thresholdDb: td.thresholdDb, minSpeechMs: td.minSpeechMs, hangoverMs: td.silenceMs });
          vadFor = td;
        }
        for (const p of vad.push(a)) {
          if (p.kind !== 'control') continue;
          if (p.signal === 'speech-start') {
            speechFrom = p.pts - td.prefixPaddingMs * 1000;
            pendingId = conversation.newId('item');
            emit(control('speech-start', p.pts, pendingId));
          } else if (p.signal === 'speech-end') {
            emit(control('speech-end', p.pts));
            commit(p.pts, speechFrom);
            speechFrom = undefined;
          }
        }
        // Not speaking: keep only what a prefix (and the VAD's attack) may need.
        if (speechFrom === undefined) trim(a.pts - (td.prefixPaddingMs + td.minSpeechMs + 100) * 1000);
        else if (buffered > params.maxBufferSeconds * RATE) {
          // Speech (or noise over the threshold) that never pauses: end the turn here rather than buffer without bound.
          const end = a.pts + (a.samples.length * 1e6) / RATE;
          ctx.metrics.count('forced_turn_end');
          emit(control('speech-end', end));
          commit(end, speechFrom);
          speechFrom = undefined;
          vad = undefined;
        }
      };
      const onControl = (c: ControlPacket) => {
        if (c.signal === 'turn-end') commit(c.pts, speechFrom);
        else if (c.signal === 'flush') {
          chunks.length = 0;
          buffered = 0;
          speechFrom = undefined;
          vad = undefined;
          emit(control('flush', c.pts, 'cleared'));
        }
        speechFrom = undefined;
      };
      const s = merge(inputs.audio, inputs.control).subscribe({
        next: (p: Packet) => {
          try {
            if (p.kind === 'audio') onAudio(p);
            else if (p.kind === 'control') onControl(p);
          } catch (e) {
            sub.error(e);
          }
        },
        error: (e) => sub.error(e),
        complete: () => sub.complete(),
      });
      return () => s.unsubscribe();
    }).pipe(share());
    return {
      user: out$.pipe(filter((p) => p.signal === 'turn-end' && !!p.reason), map((p) => p)),
      events: out$,
    };
  },
});
