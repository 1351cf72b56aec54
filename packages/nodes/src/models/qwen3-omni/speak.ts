import * as tf from '@tensorflow/tfjs-core';
import { filter, map, Observable, share } from 'rxjs';
import { z } from 'zod';
import {
  audioPacket, defineNode, disposePacket, graph, ports, textPacket, MICROS_PER_SECOND,
  type AudioPacket, type Packet, type TensorPacket, type TextPacket,
} from '@omniflow/core';
import { Code2WavStream } from './code2wav-stream.js';
import { generate } from './generate.js';
import { Qwen3OmniModel } from './load.js';
import { samplerOptionsSchema } from './sampler.js';
import { GREEDY } from './codec-head.js';
import { SpeechTurn, talkerParams } from './talker.node.js';
import { framesForAudioTokens, openModel, thinker } from './thinker.js';
import { talker } from './talker.node.js';
import { code2wav } from './code2wav.node.js';
import { prepareThinkerPrompt, type ThinkerContentPart, type ThinkerMessage } from './thinker-prompt.js';

/*
 * The `speak` node: a user turn in, the spoken answer out — thinker → talker → code2wav for one turn, streamed. The
 * thinker's fed rows go to the talker as they are made (the talker starts at the first answer token), each codec frame
 * goes to a streaming Code2Wav at once, so the first audio follows the first words, not the whole answer. Text deltas
 * come out beside the audio; every audio packet says which part of the text it voices.
 */

export const speakParams = z.object({
  /** A model from loadQwen3Omni with its talker and Code2Wav loaded, or an Instruct checkpoint folder. */
  model: z.union([z.string().min(1), z.custom<Qwen3OmniModel>((v) => v instanceof Qwen3OmniModel, { message: 'expected a checkpoint folder or a model from loadQwen3Omni()' })]),
  tokenizer: z.string().optional(),
  system: z.string().optional(),
  maxNewTokens: z.number().int().positive().default(256),
  /** The thinker's sampling (default greedy). */
  sampler: samplerOptionsSchema.partial().default({ greedy: true }),
  speaker: talkerParams.shape.speaker,
  /** Talker / code-predictor sampling (default generate()'s); `talkerGreedy` for raw argmax. */
  talkerSampling: talkerParams.shape.sampling,
  predictorSampling: talkerParams.shape.predictorSampling,
  talkerGreedy: z.boolean().default(false),
  seed: z.number().int().default(0),
  maxFrames: z.number().int().positive().default(4096),
  /** Emit Code2Wav's look-ahead tail at the end of the answer. */
  tail: z.boolean().default(true),
});
export type SpeakParams = z.output<typeof speakParams>;

type SpeakEvent = { port: 'text'; packet: TextPacket } | { port: 'audio'; packet: AudioPacket };

/**
 * Answers each user turn aloud. Input: text packets (the last of a turn `final: true`) and 'audio_embeds' tensor
 * packets (an audioEncoder's output) in content order, or a turn-end control packet. Outputs: `text` (answer deltas)
 * and `audio` (24 kHz mono, tagged with `voices`). An interrupt stops the thinker and the talker between steps.
 *
 * ```ts
 * const { audio } = speak({ model, speaker: 'chelsie' })(of(textPacket({ text: 'Say hello.', final: true })));
 * await writeWav(audio, 'hello.wav');
 * ```
 */
export const speak = defineNode({
  type: 'speak',
  description: 'Qwen3-Omni spoken answer: thinker → talker → streaming Code2Wav for each user turn',
  inputs: { input: ports.of(['text', 'tensor', 'control'], { description: "user text (final ends the turn) and 'audio_embeds' rows" }) },
  outputs: { text: ports.text(), audio: ports.audio({ sampleRate: 24_000, channels: 1 }) },
  params: speakParams,
  open: async (params) => {
    const r = await openModel(params.model, params.tokenizer);
    if (!r.model.talker || !r.model.code2wav) {
      if (r.owned) r.model.dispose();
      throw new Error('speak: the model has no talker or no Code2Wav (speech needs an Instruct checkpoint with both loaded)');
    }
    return r;
  },
  operator: (params, ctx, resource) => (input$: Observable<Packet>) => {
    const events$ = new Observable<{ session: string; turn: number; pts: number; parts: ThinkerContentPart[]; packets: TensorPacket[] }>((sub) => {
      let cur: { session: string; turn: number; pts: number; parts: ThinkerContentPart[]; packets: TensorPacket[] } | undefined;
      const drop = () => {
        cur?.packets.forEach(disposePacket);
        cur = undefined;
      };
      const emit = () => {
        if (cur?.parts.length) sub.next(cur);
        else drop();
        cur = undefined;
      };
      const s = input$.subscribe({
        next: (p) => {
          if (p.turn < ctx.turn && !p.uninterruptible) return disposePacket(p);
          cur ??= { session: p.session, turn: p.turn, pts: p.pts, parts: [], packets: [] };
          if (p.kind === 'text') {
            if (p.text) cur.parts.push({ type: 'text', text: p.text });
            if (p.final) emit();
          } else if (p.kind === 'tensor' && p.name === 'audio_embeds') {
            const t = p.tensor as unknown as tf.Tensor2D;
            cur.packets.push(p);
            cur.parts.push({ type: 'audio', embeds: t, frames: framesForAudioTokens(t.shape[0]) });
          } else if (p.kind === 'control') {
            if (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream') emit();
          } else {
            disposePacket(p);
            drop();
            sub.error(new Error(`${ctx.node}: input takes text, 'audio_embeds' tensor and control packets, got ${p.kind}${p.kind === 'tensor' ? ` '${p.name}'` : ''}`));
          }
        },
        error: (e) => {
          drop();
          sub.error(e);
        },
        complete: () => {
          emit();
          sub.complete();
        },
      });
      return () => {
        s.unsubscribe();
        drop();
      };
    }).pipe(
      ctx.mapAsync((turn, signal) => speakTurn(resource.model, params, turn, signal), { concurrency: 1 }),
      share(),
    );
    return {
      text: events$.pipe(filter((e) => e.port === 'text'), map((e) => e.packet as TextPacket)),
      audio: events$.pipe(filter((e) => e.port === 'audio'), map((e) => e.packet as AudioPacket)),
    };
  },
  close: (resource) => {
    if (resource.owned) resource.model.dispose();
  },
});

export interface SpeakGraphOptions {
  /** A model from loadQwen3Omni with its talker and Code2Wav loaded. */
  model: Qwen3OmniModel;
  speaker?: string;
  system?: string;
  maxNewTokens?: number;
  seed?: number;
  maxFrames?: number;
  /** Frames the talker may run ahead of playback in real-time mode. */
  leadFrames?: number;
}

/**
 * The same chain as the `speak` node, as a graph of the separate nodes — thinker (talkerHidden) → talker → code2wav —
 * with exported input `input` (user turns, as the thinker takes them) and outputs `text` and `audio`. Each edge is a
 * bounded queue; the thinker keeps the conversation across turns; an interrupt fences every node's old turn.
 *
 * ```ts
 * const session = speakGraph({ model, speaker: 'chelsie' }).session({ mode: 'realtime' });
 * session.output('audio').subscribe(play);
 * void session.start();
 * session.input('input').push(textPacket({ text: 'Hello!', final: true }));
 * ```
 */
export function speakGraph(o: SpeakGraphOptions) {
  if (!o.model.talker || !o.model.code2wav) throw new Error('speakGraph: the model has no talker or no Code2Wav (speech needs an Instruct checkpoint with both loaded)');
  const speech = { talker: o.model.talker, config: o.model.config, tokenizer: o.model.tokenizer };
  return graph('speak')
    .add('thinker', thinker, { model: o.model, talkerHidden: true, ...(o.system ? { system: o.system } : {}), ...(o.maxNewTokens ? { maxNewTokens: o.maxNewTokens } : {}) })
    .add('talker', talker, {
      model: speech, speaker: o.speaker ?? 'ethan', seed: o.seed ?? 0, maxFrames: o.maxFrames ?? 4096, leadFrames: o.leadFrames ?? 4,
    })
    .add('code2wav', code2wav, { model: o.model })
    .connect('thinker.hidden', 'talker.thinker', { capacity: 64, policy: 'block' })
    .connect('talker.codes', 'code2wav.codes', { capacity: 64, policy: 'block' })
    .input('input', 'thinker.input')
    .output('text', 'thinker.text')
    .output('audio', 'code2wav.audio');
}

/** One spoken turn: thinker steps feed the talker, frames go to Code2Wav as soon as they exist. */
async function* speakTurn(
  model: Qwen3OmniModel, params: SpeakParams,
  turn: { session: string; turn: number; pts: number; parts: ThinkerContentPart[]; packets: TensorPacket[] }, signal: AbortSignal,
): AsyncGenerator<SpeakEvent> {
  const stamp = { session: turn.session, turn: turn.turn };
  const messages: ThinkerMessage[] = [...(params.system ? [{ role: 'system' as const, content: params.system }] : []), { role: 'user', content: turn.parts }];
  const prompt = prepareThinkerPrompt(model, messages);
  const speech = new SpeechTurn(model.talker!, model.config, {
    speaker: params.speaker, seed: params.seed, maxFrames: params.maxFrames, tokenizer: model.tokenizer,
    ...(params.talkerGreedy ? { sampling: GREEDY, predictorSampling: GREEDY } : { sampling: params.talkerSampling, predictorSampling: params.predictorSampling }),
  });
  const stream = new Code2WavStream(model.code2wav!);
  const sampleRate = model.code2wav!.sampleRate;
  const detok = model.tokenizer.detokenizer();
  const audio = (samples: Float32Array, voices?: AudioPacket['voices']): SpeakEvent => ({
    port: 'audio',
    packet: audioPacket({ ...stamp, pts: turn.pts + ((stream.samplesOut - samples.length) * MICROS_PER_SECOND) / sampleRate, samples, sampleRate, channels: 1, ...(voices ? { voices } : {}) }),
  });
  function* frames(): Generator<SpeakEvent> {
    while (speech.ready && !signal.aborted) {
      const f = speech.next();
      if (!f) break;
      const samples = stream.push(f.codes, 1);
      if (samples.length) yield audio(samples, f.voices);
    }
  }
  try {
    const ids = prompt.prompt.ids;
    let previous = -1;
    const steps = generate(model.thinker, {
      inputIds: ids, inputsEmbeds: prompt.inputsEmbeds, positions: prompt.positions, ropeDelta: prompt.ropeDelta, deepstack: prompt.deepstack,
      sampler: params.sampler, maxNewTokens: params.maxNewTokens, stopTokens: model.tokenizer.stopTokenIds, signal,
      talkerHiddenLayer: model.config.talker_config!.accept_hidden_layer,
    });
    for await (const step of steps) {
      // The rows fed at this step: the prompt for the first token, then the previous token.
      speech.feed(step.index === 0 ? ids : [previous], step.fed!.embeds, step.fed!.hidden);
      previous = step.token;
      let text = detok.push(step.token);
      if (step.finishReason) {
        text += detok.flush();
        speech.endText();
      }
      if (text || step.finishReason) yield { port: 'text', packet: textPacket({ ...stamp, pts: turn.pts, text, role: 'assistant', ...(step.finishReason ? { final: true } : {}) }) };
      yield* frames();
    }
    speech.endText();
    while (!speech.done && !signal.aborted) {
      const before = speech.frames;
      yield* frames();
      if (speech.frames === before) break;
    }
    if (!signal.aborted && params.tail) {
      const tail = stream.flush();
      if (tail.length) yield audio(tail);
    }
  } catch (err) {
    if (!signal.aborted) throw err; // interrupted: stop quietly
  } finally {
    speech.dispose();
    stream.dispose();
    prompt.dispose();
    turn.packets.forEach(disposePacket);
  }
}
