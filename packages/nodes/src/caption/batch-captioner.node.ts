import { Observable } from 'rxjs';
import { z } from 'zod';
import { defineNode, ports, samplesToMicros, textPacket, type AudioPacket, type ControlPacket, type TextPacket } from '@omniflow/core';
import { CaptionBatcher } from './caption-batcher.js';
import { CAPTION_SAMPLE_RATE, type CaptionModel } from './caption-model.js';
import { Qwen3OmniCaptioner } from './qwen3-omni-captioner.js';

const isCaptionModel = (v: unknown): v is CaptionModel => typeof v === 'object' && v !== null && typeof (v as CaptionModel).caption === 'function';

export const batchCaptionerParams = z.object({
  /** A Qwen3-Omni checkpoint folder, or a loaded CaptionModel (shared, not disposed by the node). */
  model: z.union([z.string().min(1), z.custom<CaptionModel>(isCaptionModel, 'a CaptionModel (id, caption(), dispose())')]),
  /** Text after each segment's audio; '' sends the audio alone. */
  prompt: z.string().default(''),
  /** Caption every this many seconds of a session's audio (the rest at the end of its turn). */
  segmentSeconds: z.number().positive().default(30),
  maxNewTokens: z.number().int().positive().default(64),
  temperature: z.number().min(0).default(0),
  topK: z.number().int().min(0).default(0),
  topP: z.number().gt(0).max(1).default(1),
  seed: z.number().int().min(0).default(0),
  /** Most segments (of any sessions) in one model call. */
  maxBatch: z.number().int().positive().default(8),
  /** Shortest wait of a partial batch for other sessions' segments (see CaptionBatcher). */
  maxWaitMs: z.number().nonnegative().default(20),
});

interface Pending {
  session: string;
  turn: number;
  pts: number;
  chunks: Float32Array[];
  samples: number;
}

/**
 * Batch-mode captioning across sessions: every session's 16 kHz mono audio is cut into `segmentSeconds` segments
 * (and a last one at the end of its turn), and segments of ALL sessions going through this node share model batches
 * (`CaptionBatcher` + `generateBatch`), so a graph that runs one session per file captions many files per model call.
 * Each caption is one final text packet stamped with its session, turn and the pts of its first sample.
 *
 * ```ts
 * merge(...files.map((f, i) => from(decodeAudio(f, { session: `file-${i}` }))))
 *   .pipe(batchCaptioner({ model: 'models/captioner', segmentSeconds: 30, maxBatch: 16 }))
 *   .subscribe((p) => console.log(p.session, p.pts / 1e6, p.text));
 * ```
 */
export const batchCaptioner = defineNode({
  type: 'batchCaptioner',
  description: 'Captions 16 kHz mono audio of many sessions in shared batches: one final text packet per segment',
  inputs: { audio: ports.of(['audio', 'control'], { description: '16 kHz mono audio; turn-end/flush/end-of-stream cut the last segment' }) },
  outputs: { text: ports.text({ description: 'one caption per segment, final: true' }) },
  params: batchCaptionerParams,
  open: async (params) => {
    const owned = typeof params.model === 'string';
    const model = typeof params.model === 'string' ? await Qwen3OmniCaptioner.load(params.model) : params.model;
    const generation = { maxNewTokens: params.maxNewTokens, temperature: params.temperature, topK: params.topK, topP: params.topP, seed: params.seed };
    return { model, owned, batcher: new CaptionBatcher(model, { maxBatch: params.maxBatch, maxWaitMs: params.maxWaitMs, generation }) };
  },
  close: (r) => {
    r.batcher.dispose();
    if (r.owned) r.model.dispose();
  },
  operator: (params, ctx, r) => (input$: Observable<AudioPacket | ControlPacket>) =>
    new Observable<TextPacket>((subscriber) => {
      const segmentSamples = Math.round(params.segmentSeconds * CAPTION_SAMPLE_RATE);
      const pending = new Map<string, Pending>();
      let inFlight = 0;
      let inputDone = false;
      const finishIfDone = () => {
        if (inputDone && inFlight === 0 && !subscriber.closed) subscriber.complete();
      };
      const cut = (seg: Pending) => {
        if (seg.samples === 0) return;
        const pcm = new Float32Array(seg.samples);
        let o = 0;
        for (const c of seg.chunks) {
          pcm.set(c, o);
          o += c.length;
        }
        const stamp = { session: seg.session, turn: seg.turn, pts: seg.pts };
        seg.pts += samplesToMicros(seg.samples, CAPTION_SAMPLE_RATE);
        seg.chunks = [];
        seg.samples = 0;
        inFlight += 1;
        const release = ctx.hold();
        r.batcher
          .caption({ prompt: params.prompt, audio: pcm })
          .then(
            (text) => {
              if (!subscriber.closed) subscriber.next(textPacket({ ...stamp, text, role: 'assistant', final: true }));
            },
            (err: unknown) => subscriber.error(err),
          )
          .finally(() => {
            release();
            inFlight -= 1;
            finishIfDone();
          });
      };
      const sub = input$.subscribe({
        next: (p) => {
          const s = pending.get(p.session);
          if (p.kind === 'control') {
            if (s && (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream')) cut(s);
            return;
          }
          if (p.kind !== 'audio') {
            subscriber.error(new Error(`batchCaptioner: input port 'audio' takes audio and control packets, got a ${(p as { kind: string }).kind} packet`));
            return;
          }
          if (p.sampleRate !== CAPTION_SAMPLE_RATE || p.channels !== 1) {
            subscriber.error(new Error(`batchCaptioner: input port 'audio' takes 16000 Hz mono, got ${p.sampleRate} Hz with ${p.channels} channel(s) (session ${p.session}); resample first`));
            return;
          }
          let seg = s;
          if (seg && seg.turn !== p.turn) {
            cut(seg);
            seg = undefined;
          }
          if (!seg) {
            seg = { session: p.session, turn: p.turn, pts: p.pts, chunks: [], samples: 0 };
            pending.set(p.session, seg);
          }
          let at = 0;
          while (at < p.samples.length) {
            const n = Math.min(segmentSamples - seg.samples, p.samples.length - at);
            seg.chunks.push(p.samples.slice(at, at + n));
            seg.samples += n;
            at += n;
            if (seg.samples === segmentSamples) cut(seg);
          }
        },
        error: (err) => subscriber.error(err),
        complete: () => {
          for (const s of pending.values()) cut(s);
          inputDone = true;
          finishIfDone();
        },
      });
      return () => sub.unsubscribe();
    }),
});
