import * as tf from '@tensorflow/tfjs-core';
import { filter, map, Observable, share } from 'rxjs';
import { z } from 'zod';
import {
  audioPacket, controlPacket, defineNode, disposePacket, ports, textPacket, MICROS_PER_SECOND,
  type AudioPacket, type ControlPacket, type Packet, type TextPacket,
} from '@omniflow/core';
import {
  Code2WavStream, generate, preprocessImage, prepareThinkerPrompt, Qwen3OmniModel, SpeechTurn,
  type ThinkerContentPart, type ThinkerMessage,
} from '@omniflow/nodes';
import { Conversation } from './conversation.js';

/*
 * The `respond` node: the assistant's side of a turn. When a user message is committed (and the settings say to
 * answer) or the client asks for a response, it runs thinker → talker → streaming Code2Wav over the conversation as the
 * context holds it — earlier answers cut to what the user heard — and streams the answer: text deltas and 24 kHz
 * audio, each audio packet tagged with the text it voices (recorded in the conversation's ledger as it leaves).
 *
 * Real-time: the talker runs at most `leadFrames` codec frames (80 ms each) ahead of the wall clock, so an interrupt
 * (barge-in or response.cancel → session.interrupt()) wastes little work and the audio in flight is short. The turn's
 * AbortSignal stops the thinker between tokens and the talker between frames; an interrupted answer keeps in the
 * context only what its audio voiced.
 *
 * The context is prefilled whole for every answer (no KV cache kept across turns): the price of cutting an earlier
 * answer to an arbitrary heard prefix. On the fixture checkpoint that is microseconds; with a real checkpoint it is
 * one prefill of the conversation per turn.
 */

export const respondParams = z.object({
  model: z.custom<Qwen3OmniModel>((v) => v instanceof Qwen3OmniModel, { message: 'expected a model from loadQwen3Omni() with thinker, talker and Code2Wav' }),
  conversation: z.custom<Conversation>((v) => v instanceof Conversation, { message: 'expected a Conversation' }),
  seed: z.number().int().default(0),
  /** Most codec frames per answer (the talker stops at its EOS before that). */
  maxFrames: z.number().int().positive().default(4096),
  /** Frames the talker may run ahead of real time. */
  leadFrames: z.number().int().min(1).default(4),
  /** Wall-clock pacing per codec frame, ms (the model's 12.5 Hz); 0 runs as fast as possible (batch). */
  frameMs: z.number().min(0).default(80),
  /** Emit Code2Wav's look-ahead tail at the end of an answer. */
  tail: z.boolean().default(true),
});
export type RespondParams = z.output<typeof respondParams>;

/**
 * A response to run: a control packet of the turn that asked for it (not uninterruptible), so that ctx.mapAsync aborts
 * the answer as soon as that turn is interrupted; `reason` carries response.create's instructions.
 */
type ResponseJob = ControlPacket;

type Out = { port: 'text'; packet: TextPacket | ControlPacket } | { port: 'audio'; packet: AudioPacket };

/**
 * Answers the conversation aloud, one response at a time.
 *
 * Input `requests`: 'turn-end' control packets (a user message was committed; answered when the settings'
 * turn detection has `createResponse`) and 'flush' (response.create: answer now; `reason` may carry instructions); the
 * latest camera frame comes from the conversation (`setFrame`). Outputs: `text` — a 'turn-start' control packet (reason
 * `<response id> <item id>`), text deltas (the last one `final`), and a 'turn-end' (reason 'completed'); `audio` —
 * 24 kHz mono packets with `voices`.
 *
 * ```ts
 * const { text, audio } = respond({ model, conversation })(requests$);
 * audio.subscribe((a) => speaker.write(a.samples));
 * ```
 */
export const respond = defineNode({
  type: 'respond',
  description: 'assistant answer over the conversation: thinker → talker → streaming Code2Wav, paced to real time',
  inputs: { requests: ports.control({ description: "'turn-end' (user message committed), 'flush' (response.create)" }) },
  outputs: {
    text: ports.of(['text', 'control'], { description: "'turn-start' (reason: response id and item id), deltas, 'turn-end'" }),
    audio: ports.audio({ sampleRate: 24_000, channels: 1 }),
  },
  params: respondParams,
  operator: (params, ctx) => (requests$: Observable<Packet>) => {
    const { model, conversation } = params;
    if (!model.talker || !model.code2wav) throw new Error(`${ctx.node}: the model has no talker or no Code2Wav (speech needs an Instruct checkpoint with both loaded)`);
    const jobs$ = new Observable<ResponseJob>((sub) =>
      requests$.subscribe({
        next: (p) => {
          if (p.kind !== 'control') return disposePacket(p);
          const answer = p.signal === 'flush' || (p.signal === 'turn-end' && conversation.settings.turnDetection?.createResponse);
          if (answer) sub.next(controlPacket({ signal: 'turn-start', session: p.session, turn: ctx.turn, pts: p.pts, ...(p.signal === 'flush' && p.reason ? { reason: p.reason } : {}) }));
        },
        error: (e) => sub.error(e),
        complete: () => sub.complete(),
      }),
    );
    const out$ = jobs$.pipe(
      ctx.mapAsync((job, signal) => answer(params, ctx.metrics, job, signal), { concurrency: 1 }),
      share(),
    );
    return {
      text: out$.pipe(filter((o) => o.port === 'text'), map((o) => o.packet as TextPacket | ControlPacket)),
      audio: out$.pipe(filter((o) => o.port === 'audio'), map((o) => o.packet as AudioPacket)),
    };
  },
});

/**
 * Lets the event loop run I/O between model steps, one step per loop turn across every answer in the process. The
 * steps resolve as microtasks, so without this one answer would hold the thread until it ends or sleeps; and a plain
 * setImmediate per step would still run one step of *every* busy answer before the loop reads a socket again. Here the
 * waiting answers take turns, one released per event-loop iteration (an immediate queued from an immediate runs in the
 * next iteration, after the poll phase), so an append or a barge-in waits for at most one model step.
 */
const stepQueue: (() => void)[] = [];
let releasing = false;
function releaseNext(): void {
  const next = stepQueue.shift();
  if (stepQueue.length) setImmediate(releaseNext);
  else releasing = false;
  next?.();
}
const yieldToIo = () =>
  new Promise<void>((resolve) => {
    stepQueue.push(resolve);
    if (!releasing) {
      releasing = true;
      setImmediate(releaseNext);
    }
  });

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });

/** Adds the latest camera frame to the last user message (its rows then belong to the conversation). */
function attachFrame(model: Qwen3OmniModel, conversation: Conversation): number {
  const frame = conversation.frame;
  const vit = model.visionEncoder;
  const last = conversation.items.findLast((i) => i.role === 'user');
  if (!frame || !vit || !last || last.parts.some((p) => p.type === 'image')) return 0;
  const t0 = performance.now();
  const cfg = vit.config;
  const input = preprocessImage(frame, { patchSize: cfg.patch_size, temporalPatchSize: cfg.temporal_patch_size, mergeSize: cfg.spatial_merge_size });
  const { embeds, deepstack } = tf.tidy(() => {
    const pixels = tf.tensor2d(input.pixelValues, [input.shape[0], input.shape[1]]);
    const e = vit.encode(pixels, [input.gridThw]);
    return { embeds: e.embeds, deepstack: e.deepstack };
  });
  last.parts.unshift({ type: 'image', embeds, deepstack, gridThw: input.gridThw } as ThinkerContentPart);
  return performance.now() - t0;
}

async function* answer(params: RespondParams, metrics: { observe(n: string, v: number): void }, job: ResponseJob, signal: AbortSignal): AsyncGenerator<Out> {
  const { model, conversation } = params;
  const settings = conversation.settings;
  const stamp = { session: job.session, turn: job.turn };
  const t0 = performance.now();
  const visionMs = settings.video ? attachFrame(model, conversation) : 0;
  const messages: ThinkerMessage[] = conversation.messages();
  if (job.reason) messages.unshift({ role: 'system', content: job.reason });
  const responseId = conversation.newId('resp');
  const item = conversation.beginAssistant();
  const timing: Record<string, number> = { startedAt: t0, visionMs, thinkerMs: 0, talkerMs: 0, code2wavMs: 0, tokens: 0, frames: 0, pacedMs: 0 };
  item.timing = timing;
  yield { port: 'text', packet: controlPacket({ ...stamp, pts: job.pts, signal: 'turn-start', reason: `${responseId} ${item.id}` }) };

  const speaking = settings.modality === 'audio';
  const prompt = prepareThinkerPrompt(model, messages);
  const speech = speaking
    ? new SpeechTurn(model.talker!, model.config, { speaker: settings.voice, seed: params.seed, maxFrames: params.maxFrames, tokenizer: model.tokenizer })
    : undefined;
  const stream = speaking ? new Code2WavStream(model.code2wav!) : undefined;
  const rate = model.code2wav!.sampleRate;
  const detok = model.tokenizer.detokenizer();
  let firstAudioAt = 0;
  let status: 'completed' | 'incomplete' = 'incomplete';

  const audio = (samples: Float32Array, voices?: AudioPacket['voices']): Out => {
    conversation.voiced(item, samples.length, voices);
    if (!firstAudioAt) timing.firstAudioAt = firstAudioAt = performance.now();
    return { port: 'audio', packet: audioPacket({ ...stamp, pts: job.pts + ((stream!.samplesOut - samples.length) * MICROS_PER_SECOND) / rate, samples, sampleRate: rate, channels: 1, ...(voices ? { voices } : {}) }) };
  };
  /** Frames the talker can make now, each decoded at once; paced to `leadFrames` ahead of the wall clock. */
  async function* frames(): AsyncGenerator<Out> {
    while (speech!.ready && !signal.aborted) {
      const ahead = params.frameMs > 0 && firstAudioAt ? firstAudioAt + (timing.frames - params.leadFrames) * params.frameMs - performance.now() : 0;
      if (ahead > 0) {
        timing.pacedMs += ahead;
        await sleep(ahead, signal);
      } else await yieldToIo();
      if (signal.aborted) return;
      let t = performance.now();
      const f = speech!.next();
      timing.talkerMs += performance.now() - t;
      if (!f) break;
      timing.frames++;
      timing.firstFrameAt ??= performance.now();
      t = performance.now();
      const samples = stream!.push(f.codes, 1);
      timing.code2wavMs += performance.now() - t;
      if (samples.length) yield audio(samples, f.voices);
    }
  }

  try {
    const ids = prompt.prompt.ids;
    let previous = -1;
    let t = performance.now();
    const steps = generate(model.thinker, {
      inputIds: ids, inputsEmbeds: prompt.inputsEmbeds, positions: prompt.positions, ropeDelta: prompt.ropeDelta, deepstack: prompt.deepstack,
      sampler: { greedy: true }, maxNewTokens: settings.maxOutputTokens, stopTokens: model.tokenizer.stopTokenIds, signal,
      ...(speaking ? { talkerHiddenLayer: model.config.talker_config!.accept_hidden_layer } : {}),
    });
    for await (const step of steps) {
      timing.thinkerMs += performance.now() - t;
      timing.tokens++;
      if (step.index === 0) timing.prefillMs = performance.now() - t0;
      if (speech) speech.feed(step.index === 0 ? ids : [previous], step.fed!.embeds, step.fed!.hidden);
      previous = step.token;
      let text = detok.push(step.token);
      if (step.finishReason) {
        text += detok.flush();
        speech?.endText();
      }
      if (text) {
        timing.firstTextAt ??= performance.now();
        conversation.appendText(item, text);
        yield { port: 'text', packet: textPacket({ ...stamp, pts: job.pts, text, role: 'assistant' }) };
      }
      if (speech) yield* frames();
      await yieldToIo();
      if (signal.aborted) return;
      t = performance.now();
    }
    if (signal.aborted) return;
    yield { port: 'text', packet: textPacket({ ...stamp, pts: job.pts, text: '', role: 'assistant', final: true }) };
    if (speech) {
      speech.endText();
      while (!speech.done && !signal.aborted) {
        const before = speech.frames;
        yield* frames();
        if (speech.frames === before) break;
      }
      if (signal.aborted) return;
      if (params.tail) {
        const tail = stream!.flush();
        if (tail.length) yield audio(tail);
      }
    }
    status = 'completed';
    timing.endedAt = performance.now();
    yield { port: 'text', packet: controlPacket({ ...stamp, pts: job.pts, signal: 'turn-end', reason: 'completed' }) };
  } catch (err) {
    if (!signal.aborted) throw err; // interrupted: stop quietly
  } finally {
    timing.endedAt ??= performance.now();
    conversation.finishAssistant(item, status);
    metrics.observe('thinker_ms', timing.thinkerMs);
    metrics.observe('talker_ms', timing.talkerMs);
    metrics.observe('code2wav_ms', timing.code2wavMs);
    speech?.dispose();
    stream?.dispose();
    prompt.dispose();
  }
}

