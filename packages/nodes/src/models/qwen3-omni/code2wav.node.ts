import { Observable } from 'rxjs';
import { z } from 'zod';
import { audioPacket, defineNode, ports, MICROS_PER_SECOND, type AudioPacket, type CodesPacket, type ControlPacket, type NodeContext } from '@omniflow/core';
import { Checkpoint, initBackend } from '@omniflow/runtime-gpu';
import { Code2Wav, CODE2WAV_SAMPLE_RATE } from './code2wav.js';
import { Code2WavPipeline, Code2WavStream } from './code2wav-stream.js';
import { readQwen3OmniConfig } from './config.js';
import type { WeightDtype } from '../../layers/linear.js';

/*
 * The `code2wav` node: codec frames in, 24 kHz audio out, as they arrive. Each turn gets its own streaming decoder;
 * a turn-end (or flush / end-of-stream) control packet flushes the held-back tail; an interrupt drops the decoder, so
 * nothing more of that turn is emitted.
 */

/** Something that holds a loaded Code2Wav (a model from `loadQwen3Omni`). */
interface HasCode2Wav {
  readonly code2wav: Code2Wav | undefined;
}

export const code2WavParams = z.object({
  /** A Code2Wav, a model from loadQwen3Omni (borrowed), or a checkpoint folder to load when the node opens. */
  model: z.union([
    z.string().min(1),
    z.custom<Code2Wav>((v) => v instanceof Code2Wav),
    z.custom<HasCode2Wav>((v) => typeof v === 'object' && v !== null && 'code2wav' in v, { message: 'expected a checkpoint folder, a Code2Wav or a model from loadQwen3Omni()' }),
  ]),
  /**
   * Frames decoded per call. 1 (default) emits audio the moment each frame arrives (lowest latency); larger values
   * decode several frames in one call (fewer, larger ops: less overhead per second of audio, more latency).
   */
  chunkFrames: z.number().int().positive().default(1),
  /** At turn end, also emit the look-ahead tail (~23 ms) the reference's offline decode drops. */
  tail: z.boolean().default(true),
  /**
   * Decode on two worker threads (Code2WavPipeline: the decoder split in halves that overlap across frames), so
   * Code2Wav can use both cores. Needs `model` to be a checkpoint folder (each worker loads its own weights).
   */
  workers: z.boolean().default(false),
  /**
   * When the node loads a checkpoint folder: keep the transformer's weights as packed bf16 ('bf16'; the release stores
   * bf16, so nothing is lost and a frame reads half the bytes), quantize the matrices and the decoder's wide convs to
   * int8 ('int8': the fastest, about twice float32's speed in the decoder, ~37 dB waveform SNR vs float32 on the
   * fixture; see Code2Wav.load), or float32 (default, exact).
   */
  weights: z.enum(['float32', 'bf16', 'int8']).default('float32'),
});
export type Code2WavParams = z.output<typeof code2WavParams>;

interface Code2WavResource {
  readonly code2wav?: Code2Wav;
  readonly owned: boolean;
  readonly pipeline?: { pipe: Code2WavPipeline; groups: number };
}

/** Instances open synchronously (so a graph starts at once, also in virtual time); a folder is loaded. */
function openCode2Wav(params: Code2WavParams): Code2WavResource | Promise<Code2WavResource> {
  const model = params.model;
  if (params.workers) {
    if (typeof model !== 'string') throw new Error('code2wav: workers: true needs `model` to be a checkpoint folder (each worker loads its own weights)');
    return openPipeline(model, params.weights);
  }
  if (model instanceof Code2Wav) return { code2wav: model, owned: false };
  if (typeof model !== 'string') {
    if (!model.code2wav) throw new Error('code2wav: the model was loaded without Code2Wav (no code2wav.* tensors or not asked for)');
    return { code2wav: model.code2wav, owned: false };
  }
  return loadCode2Wav(model, params.weights);
}

async function openPipeline(dir: string, weights: WeightDtype): Promise<Code2WavResource> {
  const { config } = readQwen3OmniConfig(dir);
  const c = config.code2wav_config;
  if (!c) throw new Error(`code2wav: ${dir}/config.json has no code2wav_config`);
  const pipe = await Code2WavPipeline.start({ checkpoint: dir }, { split: Code2Wav.pipelineSplit(c, weights), groups: c.num_quantizers, weights });
  return { owned: true, pipeline: { pipe, groups: c.num_quantizers } };
}

async function loadCode2Wav(model: string, weights: WeightDtype): Promise<Code2WavResource> {
  await initBackend();
  const { config } = readQwen3OmniConfig(model);
  if (!config.code2wav_config) throw new Error(`code2wav: ${model}/config.json has no code2wav_config`);
  const ckpt = Checkpoint.open(model);
  try {
    return { code2wav: Code2Wav.load(ckpt, config.code2wav_config, 'code2wav', { weights }), owned: true };
  } finally {
    ckpt.close();
  }
}

type Voices = NonNullable<AudioPacket['voices']>;

/** Merges consecutive voice tags (same text source) into one range. */
function mergeVoices(a: Voices | undefined, b: Voices | undefined): Voices | undefined {
  if (!a) return b;
  if (!b) return a;
  return { start: Math.min(a.start, b.start), end: Math.max(a.end, b.end), text: a.end <= b.start ? a.text + b.text : b.text };
}

/**
 * Decodes codec frames (codes packets, any number of frames each) into audio packets as they come, per turn.
 * Audio packets carry the `voices` tags of the frames they complete, and their pts follow the turn's first codes
 * packet sample-exactly.
 *
 * ```ts
 * codes$.pipe(code2wav({ model })).subscribe((a) => speaker.write(a.samples)); // 24 kHz mono
 * ```
 */
export const code2wav = defineNode({
  type: 'code2wav',
  description: 'Qwen3-Omni Code2Wav: codec frames in, streamed 24 kHz audio out (one streaming decoder per turn)',
  inputs: { codes: ports.of(['codes', 'control'], { description: 'codec frames of a turn, then turn-end' }) },
  outputs: { audio: ports.audio({ sampleRate: 24_000, channels: 1 }) },
  params: code2WavParams,
  open: (params) => openCode2Wav(params),
  operator: (params, ctx, resource) => (input$: Observable<CodesPacket | ControlPacket>) => resource.pipeline
    ? pipelineOperator(params, ctx, resource.pipeline)(input$)
    : new Observable<AudioPacket>((subscriber) => {
      const c2w = resource.code2wav!;
      const G = c2w.config.num_quantizers;
      let turn: { session: string; turn: number; pts: number; stream: Code2WavStream; pending: Int32Array[]; voices?: Voices } | undefined;
      const end = () => {
        turn?.stream.dispose();
        turn = undefined;
      };
      const emit = (samples: Float32Array, voices: Voices | undefined) => {
        if (!turn || samples.length === 0) return;
        const before = turn.stream.samplesOut - samples.length;
        subscriber.next(audioPacket({
          session: turn.session, turn: turn.turn, pts: turn.pts + (before * MICROS_PER_SECOND) / c2w.sampleRate,
          samples, sampleRate: c2w.sampleRate, channels: 1, ...(voices ? { voices } : {}),
        }));
      };
      const decodePending = () => {
        if (!turn || turn.pending.length === 0) return;
        const frames = turn.pending.length;
        const codes = new Int32Array(G * frames);
        turn.pending.forEach((frame, f) => frame.forEach((c, g) => (codes[g * frames + f] = c)));
        turn.pending = [];
        const voices = turn.voices;
        turn.voices = undefined;
        emit(turn.stream.push(codes, frames), voices);
      };
      // An interrupt starts a new epoch: drop the old turn's decoder at once, so it emits nothing more.
      const epochs = ctx.turns$.subscribe((epoch) => {
        if (turn && turn.turn < epoch) end();
      });
      const sub = input$.subscribe({
        next: (p) => {
          try {
            if (p.turn < ctx.turn && !p.uninterruptible) return; // a stale packet of an interrupted turn
            if (turn && (turn.turn !== p.turn || turn.session !== p.session)) end();
            if (p.kind === 'control') {
              if (turn && (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream')) {
                decodePending();
                const voices = turn.voices;
                if (params.tail) emit(turn.stream.flush(), voices);
                end();
              }
              return;
            }
            if (p.kind !== 'codes') throw new Error(`${ctx.node}: port 'codes' takes codes and control packets, got a ${(p as { kind: string }).kind} packet`);
            if (p.groups !== G) throw new Error(`${ctx.node}: codes packet has ${p.groups} code groups but this Code2Wav decodes ${G}`);
            turn ??= { session: p.session, turn: p.turn, pts: p.pts, stream: new Code2WavStream(c2w), pending: [] };
            for (let f = 0; f < p.frames; f++) turn.pending.push(Int32Array.from({ length: G }, (_, g) => p.codes[g * p.frames + f]));
            turn.voices = mergeVoices(turn.voices, p.voices);
            if (turn.pending.length >= params.chunkFrames) decodePending();
          } catch (err) {
            end();
            subscriber.error(err);
          }
        },
        error: (e) => {
          end();
          subscriber.error(e);
        },
        complete: () => {
          if (turn) {
            decodePending();
            if (params.tail) emit(turn.stream.flush(), turn.voices);
          }
          end();
          subscriber.complete();
        },
      });
      return () => {
        sub.unsubscribe();
        epochs.unsubscribe();
        end();
      };
    }),
  close: async (resource) => {
    if (resource.owned) resource.code2wav?.dispose();
    await resource.pipeline?.pipe.close();
  },
});

/**
 * The `workers: true` form: the same per-turn contract, decoding on Code2WavPipeline. Pushes are issued as frames
 * arrive (so the two halves overlap) and their audio is emitted in order; results of an interrupted turn are dropped
 * and the pipeline is reset before the next turn.
 */
function pipelineOperator(params: Code2WavParams, ctx: NodeContext, r: { pipe: Code2WavPipeline; groups: number }) {
  return (input$: Observable<CodesPacket | ControlPacket>) =>
    new Observable<AudioPacket>((subscriber) => {
      const G = r.groups, rate = CODE2WAV_SAMPLE_RATE;
      let turn: { id: number; session: string; turn: number; pts: number; samples: number; pending: Int32Array[]; voices?: Voices } | undefined;
      let turnIds = 0;
      let chain: Promise<unknown> = Promise.resolve();
      const dropped = new Set<number>(); // interrupted turns: their in-flight audio is never emitted
      const fail = (err: unknown) => subscriber.error(err);
      const emit = (t: NonNullable<typeof turn>, samples: Float32Array, voices: Voices | undefined) => {
        if (dropped.has(t.id) || samples.length === 0) return;
        subscriber.next(audioPacket({
          session: t.session, turn: t.turn, pts: t.pts + (t.samples * MICROS_PER_SECOND) / rate, samples, sampleRate: rate, channels: 1, ...(voices ? { voices } : {}),
        }));
        t.samples += samples.length;
      };
      const decodePending = () => {
        const t = turn;
        if (!t || t.pending.length === 0) return;
        const frames = t.pending.length;
        const codes = new Int32Array(G * frames);
        t.pending.forEach((frame, f) => frame.forEach((c, g) => (codes[g * frames + f] = c)));
        t.pending = [];
        const voices = t.voices;
        t.voices = undefined;
        const result = r.pipe.push(codes, frames); // issued now: the halves overlap across frames
        chain = chain.then(() => result).then((samples) => emit(t, samples, voices), fail);
      };
      const end = (flush: boolean) => {
        const t = turn;
        turn = undefined;
        if (!t) return;
        if (flush) {
          decodePending();
          const voices = t.voices;
          const tail = r.pipe.flush();
          chain = chain.then(() => tail).then((samples) => params.tail && emit(t, samples, voices), fail);
        } else {
          dropped.add(t.id); // interrupted: whatever is in flight for it is dropped
        }
        const reset = r.pipe.reset();
        chain = chain.then(() => reset, fail);
      };
      const epochs = ctx.turns$.subscribe((epoch) => {
        if (turn && turn.turn < epoch) end(false);
      });
      const sub = input$.subscribe({
        next: (p) => {
          try {
            if (p.turn < ctx.turn && !p.uninterruptible) return;
            if (turn && (turn.turn !== p.turn || turn.session !== p.session)) end(false);
            if (p.kind === 'control') {
              if (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream') end(true);
              return;
            }
            if (p.kind !== 'codes') throw new Error(`${ctx.node}: port 'codes' takes codes and control packets, got a ${(p as { kind: string }).kind} packet`);
            if (p.groups !== G) throw new Error(`${ctx.node}: codes packet has ${p.groups} code groups but this Code2Wav decodes ${G}`);
            turn ??= { id: ++turnIds, session: p.session, turn: p.turn, pts: p.pts, samples: 0, pending: [] };
            for (let f = 0; f < p.frames; f++) turn.pending.push(Int32Array.from({ length: G }, (_, g) => p.codes[g * p.frames + f]));
            turn.voices = mergeVoices(turn.voices, p.voices);
            if (turn.pending.length >= params.chunkFrames) decodePending();
          } catch (err) {
            fail(err);
          }
        },
        error: fail,
        complete: () => {
          end(true);
          chain.then(() => subscriber.complete(), fail);
        },
      });
      return () => {
        sub.unsubscribe();
        epochs.unsubscribe();
      };
    });
}
