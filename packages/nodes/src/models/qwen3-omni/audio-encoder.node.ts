import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { Observable } from 'rxjs';
import { defineNode, disposePacket, ports, tensorPacket, type ControlPacket, type NodeContext, type TensorPacket } from '@omniflow/core';
import { Checkpoint, initBackend } from '@omniflow/runtime-gpu';
import { AudioEncoder } from './audio-encoder.js';
import { AudioEncoderStream } from './audio-encoder-stream.js';
import { readQwen3OmniConfig } from './config.js';

/*
 * The `audioEncoder` node: one clip's log-mel features in, its audio-token embeddings out — the rows the thinker
 * splices over `<|audio_pad|>`.
 */

/** Something that holds a loaded audio encoder (a model from `loadQwen3Omni`). */
interface HasAudioEncoder {
  readonly audioEncoder: AudioEncoder | undefined;
}

export const audioEncoderParams = z.object({
  /**
   * An `AudioEncoder`, a model from `loadQwen3Omni` (its audio encoder is borrowed), or a checkpoint folder whose
   * `thinker.audio_tower` is loaded when the node opens and freed when it closes.
   */
  model: z.union([
    z.string().min(1),
    z.custom<AudioEncoder>((v) => v instanceof AudioEncoder),
    z.custom<HasAudioEncoder>((v) => typeof v === 'object' && v !== null && 'audioEncoder' in v, {
      message: 'expected a checkpoint folder, an AudioEncoder or a model from loadQwen3Omni()',
    }),
  ]),
  /**
   * 'clip': each `input_features` packet is one clip. 'stream': consecutive packets of one session and turn are the
   * pieces of one clip (melFeatures in stream mode); complete attention windows are encoded as they arrive and the
   * clip's `audio_embeds` is emitted when a control packet ('turn-end', 'flush', 'end-of-stream') or a packet of
   * another turn arrives, or the input completes.
   */
  mode: z.enum(['clip', 'stream']).default('clip'),
});
export type AudioEncoderParams = z.output<typeof audioEncoderParams>;

interface EncoderResource {
  readonly encoder: AudioEncoder;
  readonly owned: boolean;
}

/** Resolves the `model` param: instances are borrowed, a folder is loaded (and owned). */
async function openAudioEncoder(model: AudioEncoderParams['model']): Promise<EncoderResource> {
  if (model instanceof AudioEncoder) return { encoder: model, owned: false };
  if (typeof model !== 'string') {
    if (!model.audioEncoder) throw new Error('audioEncoder: the model was loaded without its audio encoder (thinker.audio_tower)');
    return { encoder: model.audioEncoder, owned: false };
  }
  await initBackend();
  const { config } = readQwen3OmniConfig(model);
  const ckpt = Checkpoint.open(model);
  try {
    return { encoder: AudioEncoder.load(ckpt, config.thinker_config.audio_config), owned: true };
  } finally {
    ckpt.close();
  }
}

/** Encodes one `input_features` packet; the input tensor is consumed. */
function featuresOf(p: TensorPacket, node: string): tf.Tensor2D {
  const x = p.tensor as tf.Tensor;
  if (p.name !== 'input_features' || x.rank !== 2) {
    throw new Error(`${node}: port 'features' expects 'input_features' [mel, frames] tensors, got '${p.name}' [${x.shape}]`);
  }
  return x as tf.Tensor2D;
}

function encodePacket(encoder: AudioEncoder, p: TensorPacket, node: string): TensorPacket {
  try {
    const x = featuresOf(p, node);
    const { embeds } = encoder.encode(x, [x.shape[1]]);
    return tensorPacket({ session: p.session, turn: p.turn, pts: p.pts, uninterruptible: p.uninterruptible, name: 'audio_embeds', tensor: embeds });
  } finally {
    disposePacket(p);
  }
}

/** Stream mode: pieces of one clip per (session, turn), encoded window by window, emitted when the clip ends. */
function streamClips(encoder: AudioEncoder, ctx: NodeContext) {
  return (input$: Observable<TensorPacket | ControlPacket>) =>
    new Observable<TensorPacket>((subscriber) => {
      let clip: { stream: AudioEncoderStream; first: TensorPacket } | undefined;
      const drop = () => {
        clip?.stream.dispose();
        clip = undefined;
      };
      const emit = () => {
        if (!clip) return;
        const { stream, first } = clip;
        clip = undefined;
        try {
          // A clip of an interrupted turn is fenced off: freed, never encoded to the end.
          if (first.turn < ctx.turn) return;
          const { embeds } = stream.finish();
          subscriber.next(tensorPacket({ session: first.session, turn: first.turn, pts: first.pts, name: 'audio_embeds', tensor: embeds }));
        } finally {
          stream.dispose();
        }
      };
      const sub = input$.subscribe({
        next: (p) => {
          try {
            if (p.kind === 'control') {
              if (p.signal === 'turn-end' || p.signal === 'flush' || p.signal === 'end-of-stream') emit();
              return;
            }
            if (clip && (clip.first.session !== p.session || clip.first.turn !== p.turn)) emit();
            if (p.turn < ctx.turn) return; // a piece of an interrupted turn
            clip ??= { stream: new AudioEncoderStream(encoder), first: p };
            clip.stream.push(featuresOf(p, ctx.node));
          } catch (err) {
            drop();
            subscriber.error(err);
          } finally {
            if (p.kind === 'tensor') disposePacket(p);
          }
        },
        error: (err) => {
          drop();
          subscriber.error(err);
        },
        complete: () => {
          try {
            emit();
            subscriber.complete();
          } catch (err) {
            subscriber.error(err);
          }
        },
      });
      return () => {
        sub.unsubscribe();
        drop();
      };
    });
}

/**
 * Encodes each clip's log-mel features (`input_features` [num_mel_bins, frames], one clip per packet) into
 * `audio_embeds` [audio tokens, output_dim] with the same session, turn and pts. Clips of an interrupted turn are
 * dropped (and freed) without being encoded. With `mode: 'stream'` the packets are pieces of a clip, encoded window by
 * window as they arrive (see `AudioEncoderStream`); control packets end the clip (in clip mode they are ignored).
 *
 * ```ts
 * features$.pipe(audioEncoder({ model: '/models/Qwen3-Omni-30B-A3B-Captioner' }))
 *   .subscribe((p) => console.log(p.name, p.tensor.shape)); // audio_embeds [20, 2048] for 1.5 s
 * ```
 */
export const audioEncoder = defineNode({
  type: 'audioEncoder',
  description: 'Qwen3-Omni audio encoder (AuT): log-mel features of one clip in, audio-token embeddings out',
  inputs: {
    features: ports.of(['tensor', 'control'], {
      description: "'input_features' [num_mel_bins, frames]: one clip per packet, or (mode 'stream') pieces of a clip ended by turn-end/flush/end-of-stream",
    }),
  },
  outputs: { embeds: ports.tensor({ name: 'audio_embeds', dtype: 'float32', description: '[audio tokens, output_dim]' }) },
  params: audioEncoderParams,
  open: (params) => openAudioEncoder(params.model),
  operator: (params, ctx, resource) => (features$: Observable<TensorPacket | ControlPacket>) =>
    params.mode === 'stream'
      ? streamClips(resource.encoder, ctx)(features$)
      : features$.pipe(ctx.mapAsync((p: TensorPacket | ControlPacket) => (p.kind === 'control' ? [] : [encodePacket(resource.encoder, p, ctx.node)]))),
  close: (resource) => {
    if (resource.owned) resource.encoder.dispose();
  },
});
