import * as tf from '@tensorflow/tfjs-core';
import type { TensorToWrite } from '@omniflow/runtime-gpu';
import { audioOutputLength, type AudioEncoder } from '../models/qwen3-omni/audio-encoder.js';
import type { Qwen3OmniModel } from '../models/qwen3-omni/load.js';
import { getRopeIndex, ropeIndexConfigOf } from '../models/qwen3-omni/rope-index.js';
import type { TextModel } from '../models/qwen3-omni/text-model.js';

/*
 * A loaded Qwen3-Omni captioner made trainable in place: every weight tensor of its audio tower and text model is
 * swapped for a tf.Variable holding the same values, so the model's own forward code (AudioEncoder.encode,
 * TextModel.forward) runs under tf.variableGrads and the optimizer updates the very tensors inference reads. The
 * token embedding, which inference keeps on the host, gets a device copy for training and is written back by
 * `syncEmbedding()`. `exportWeights()` turns the inference layout back into the checkpoint's tensors.
 */

/** One trainable tensor and its path inside the module (`audio_tower.layers.0.qkv.weight`, `model.layers.1.mlp.router`). */
export interface TrainableParameter {
  readonly name: string;
  readonly variable: tf.Variable;
}

/** One training example: log-mel features and the caption's token ids (without the closing <|im_end|>). */
export interface CaptionExample {
  /** [num_mel_bins × frames] row-major, as logMelFeatures returns it. */
  readonly features: Float32Array;
  readonly frames: number;
  readonly captionIds: readonly number[];
}

/** How TrainableCaptioner.loss weighs the tokens. */
export interface CaptionLossOptions {
  /** Focal loss: each token's cross-entropy weighted by (1 − p)^γ (default 0: plain cross-entropy). */
  readonly focalGamma?: number;
}

/** What one loss evaluation reports besides the gradients. */
export interface LossStats {
  /** Mean cross-entropy per target token. */
  readonly loss: number;
  readonly tokens: number;
}

export class TrainableCaptioner {
  readonly parameters: TrainableParameter[] = [];
  /** Device copy of thinker.model.embed_tokens, trained; `syncEmbedding()` copies it into the host table inference reads. */
  readonly embedTokens: tf.Variable;
  private readonly encoder: AudioEncoder;
  private readonly thinker: TextModel;

  /**
   * Makes `model` trainable in place (it stays usable for inference; call `syncEmbedding()` first).
   *
   * ```ts
   * const model = await loadQwen3Omni('models/omniflow-captioner-tiny');
   * const trainable = new TrainableCaptioner(model);
   * const { value, grads } = tf.variableGrads(() => trainable.loss(examples).loss);
   * ```
   */
  constructor(readonly model: Qwen3OmniModel) {
    if (!model.audioEncoder) throw new Error('TrainableCaptioner: the model has no audio encoder (thinker.audio_tower)');
    this.encoder = model.audioEncoder;
    this.thinker = model.thinker;
    const V = model.thinker.vocabSize, D = model.thinker.hidden;
    this.embedTokens = tf.variable(tf.tensor2d(model.thinker.embedTokens, [V, D]), true, undefined);
    this.parameters.push({ name: 'model.embed_tokens', variable: this.embedTokens });
    this.adopt(this.encoder as unknown as Record<string, unknown>, 'audio_tower');
    this.adopt(this.thinker as unknown as Record<string, unknown>, 'model');
  }

  /** Replaces every tensor reachable from `node` (plain objects and arrays; not `config`) with a variable of the same values. */
  private adopt(node: Record<string, unknown> | unknown[], path: string): void {
    const entries: Array<[string | number, unknown]> = Array.isArray(node) ? node.map((v, i) => [i, v]) : Object.entries(node);
    for (const [key, value] of entries) {
      if (key === 'config' || value === null || typeof value !== 'object' || ArrayBuffer.isView(value)) continue;
      const name = `${path}.${key}`;
      if (value instanceof tf.Tensor) {
        if (value.dtype !== 'float32') continue;
        const variable = tf.variable(value, true);
        value.dispose();
        (node as Record<string | number, unknown>)[key] = variable;
        this.parameters.push({ name, variable });
      } else {
        this.adopt(value as Record<string, unknown>, name);
      }
    }
  }

  get parameterCount(): number {
    return this.parameters.reduce((a, p) => a + p.variable.size, 0);
  }

  /**
   * Teacher-forced cross-entropy of a batch (or, with `focalGamma` γ > 0, the focal loss −(1 − p)^γ · log p per
   * token): the clips go through the audio tower together, each prompt
   * (`<|im_start|>user <|audio_start|> audio rows <|audio_end|><|im_end|> <|im_start|>assistant`, the chat template the
   * captioner runs) plus its caption and <|im_end|> through the text model, and every caption token and the final
   * <|im_end|> is predicted from the rows before it. Returns a scalar tensor (mean over target tokens) — call inside
   * tf.variableGrads — and the number of target tokens.
   *
   * ```ts
   * const { value, grads } = tf.variableGrads(() => trainable.loss(batch).loss, trainable.parameters.map((p) => p.variable));
   * ```
   */
  loss(batch: readonly CaptionExample[], options: CaptionLossOptions = {}): { loss: tf.Scalar; tokens: number } {
    const gamma = options.focalGamma ?? 0;
    if (!(gamma >= 0)) throw new Error(`TrainableCaptioner.loss: focalGamma must be ≥ 0, got ${gamma}`);
    if (batch.length === 0) throw new Error('TrainableCaptioner.loss: empty batch');
    const mel = this.model.config.thinker_config.audio_config.num_mel_bins;
    const th = this.model.config.thinker_config;
    const tok = this.model.tokenizer;
    const imEnd = tok.specialTokens.imEnd;
    const totalFrames = batch.reduce((a, b) => a + b.frames, 0);
    const flat = new Float32Array(mel * totalFrames);
    // Features of all clips side by side along time: [mel, Σ frames].
    let col = 0;
    for (const ex of batch) {
      if (ex.features.length !== mel * ex.frames) throw new Error(`TrainableCaptioner.loss: an example has ${ex.features.length} feature values, expected ${mel} × ${ex.frames} frames`);
      for (let m = 0; m < mel; m++) flat.set(ex.features.subarray(m * ex.frames, (m + 1) * ex.frames), m * totalFrames + col);
      col += ex.frames;
    }
    // The prompts, captions and positions of every clip, laid end to end: one packed text-model forward for the batch.
    const ids: number[] = [], source: number[] = [], targetRows: number[] = [], targets: number[] = [], segments: number[] = [];
    const positions: [number[], number[], number[]] = [[], [], []];
    const outputLengths = batch.map((b) => audioOutputLength(b.frames, th.audio_config.n_window));
    let audioOffset = 0;
    batch.forEach((ex, i) => {
      const prompt = tok.encodeChat([{ role: 'user', content: [{ type: 'audio', frames: ex.frames }] }], {
        spatialMergeSize: th.vision_config.spatial_merge_size, nWindow: th.audio_config.n_window, positionIdPerSeconds: th.position_id_per_seconds,
      });
      const seq = [...prompt.ids, ...ex.captionIds, imEnd];
      const P = prompt.ids.length;
      const rope = getRopeIndex({ inputIds: [prompt.ids], audioSeqlens: prompt.audioFrames }, ropeIndexConfigOf(th));
      // Answer tokens continue at (row index + ropeDelta), exactly the decode positions generation uses.
      const tail = Array.from({ length: seq.length - P }, (_, j) => P + j + rope.ropeDeltas[0]);
      for (let a = 0; a < 3; a++) positions[a]!.push(...rope.positionIds.subarray(a * P, (a + 1) * P), ...tail);
      const first = seq.indexOf(tok.specialTokens.audioPad);
      const n = outputLengths[i]!;
      if (first < 0 || seq[first + n - 1] !== tok.specialTokens.audioPad || seq[first + n] === tok.specialTokens.audioPad) {
        throw new Error(`TrainableCaptioner.loss: prompt ${i} does not hold ${n} audio placeholders in a row`);
      }
      // Row r of the sequence: its token's row (an index into `ids`) or, for a placeholder, audio row a (stored as −1 − a
      // until the number of token rows, after which the audio rows sit, is known).
      const rowStart = ids.length;
      for (let r = 0; r < seq.length; r++) source.push(r >= first && r < first + n ? -1 - (audioOffset + r - first) : rowStart + r);
      ids.push(...seq);
      audioOffset += n;
      // Row r predicts token r + 1: rows P−1 … end−1 predict the caption and the closing <|im_end|>.
      for (let r = P - 1; r < seq.length - 1; r++) targetRows.push(rowStart + r);
      targets.push(...seq.slice(P));
      segments.push(seq.length);
    });
    const tokens = targets.length;
    const loss = tf.tidy(() => {
      const features = tf.tensor2d(flat, [mel, totalFrames]);
      const { embeds } = this.encoder.encode(features, batch.map((b) => b.frames));
      // One gather builds the packed rows from [token embeddings; audio rows].
      const rows = tf.concat([tf.gather(this.embedTokens, tf.tensor1d(ids, 'int32')), embeds], 0);
      const index = tf.tensor1d(source.map((s) => (s >= 0 ? s : ids.length - 1 - s)), 'int32');
      const inputs = tf.gather(rows, index) as tf.Tensor2D;
      const out = this.thinker.forward(inputs, { positions, segments, logits: 'all', differentiableRouting: true });
      out.lastHiddenState.dispose();
      const logp = tf.logSoftmax(tf.gather(out.logits!, tf.tensor1d(targetRows, 'int32')));
      let picked: tf.Tensor = tf.sum(tf.mul(logp, tf.oneHot(tf.tensor1d(targets, 'int32'), this.thinker.vocabSize)), 1); // log p(target)
      // Focal loss: each token's cross-entropy weighted by (1 − p)^γ, so tokens the model already gets right count less.
      if (gamma > 0) picked = tf.mul(tf.pow(tf.sub(1, tf.exp(picked)), gamma), picked);
      return tf.div(tf.neg(tf.sum(picked)), tokens) as tf.Scalar;
    });
    return { loss, tokens };
  }

  /**
   * Copies the trained embedding into the host table TextModel.embed reads (before captioning with the model).
   *
   * ```ts
   * trainable.syncEmbedding();
   * await captionText(trainable.model, pcm16k);
   * ```
   */
  syncEmbedding(): void {
    this.thinker.embedTokens.set(this.embedTokens.dataSync() as Float32Array);
  }

  /**
   * The weights in the checkpoint's own names and layouts (PyTorch [out, in] Linears, [out, in, kh, kw] convs,
   * separate q/k/v and gate/up projections), ready for writeSafetensors.
   *
   * ```ts
   * writeSafetensors('model.safetensors', trainable.exportWeights(), { format: 'pt' });
   * ```
   */
  exportWeights(): Record<string, TensorToWrite> {
    const out: Record<string, TensorToWrite> = {};
    const put = (name: string, t: tf.Tensor) => {
      out[name] = { dtype: 'F32', shape: t.shape, data: t.dataSync() as Float32Array };
      t.dispose();
    };
    const linearT = (name: string, w: tf.Tensor) => put(`${name}.weight`, tf.transpose(w));
    const a = 'thinker.audio_tower';
    for (const p of this.parameters) {
      const v = p.variable;
      const n = p.name;
      let m: RegExpMatchArray | null;
      if (n === 'model.embed_tokens') put('thinker.model.embed_tokens.weight', tf.clone(v));
      else if ((m = n.match(/^audio_tower\.(conv2d\d)\.filter$/))) put(`${a}.${m[1]}.weight`, tf.transpose(v, [3, 2, 0, 1]));
      else if ((m = n.match(/^audio_tower\.layers\.(\d+)\.qkv\.(weight|bias)$/))) {
        const parts = tf.split(v, 3, m[2] === 'weight' ? 1 : 0);
        ['q_proj', 'k_proj', 'v_proj'].forEach((k, i) => {
          const key = `${a}.layers.${m![1]}.self_attn.${k}`;
          if (m![2] === 'weight') linearT(key, parts[i]!);
          else put(`${key}.bias`, parts[i]!);
        });
        if (m[2] === 'weight') for (const t of parts) t.dispose();
      } else if ((m = n.match(/^audio_tower\.layers\.(\d+)\.out_proj\.(weight|bias)$/))) {
        if (m[2] === 'weight') linearT(`${a}.layers.${m[1]}.self_attn.out_proj`, v);
        else put(`${a}.layers.${m[1]}.self_attn.out_proj.bias`, tf.clone(v));
      } else if ((m = n.match(/^audio_tower\.(.+)\.weight$/)) && v.rank === 2) linearT(`${a}.${m[1]}`, v);
      else if ((m = n.match(/^audio_tower\.(.+)$/))) put(`${a}.${m[1]}`, tf.clone(v));
      else if ((m = n.match(/^model\.layers\.(\d+)\.mlp\.router$/))) put(`thinker.model.layers.${m[1]}.mlp.gate.weight`, tf.transpose(v));
      else if ((m = n.match(/^model\.layers\.(\d+)\.mlp\.(experts\.\d+\.)?gateUp$/))) {
        const [gate, up] = tf.split(v, 2, 1);
        const key = `thinker.model.layers.${m[1]}.mlp.${m[2] ?? ''}`;
        linearT(`${key}gate_proj`, gate!);
        linearT(`${key}up_proj`, up!);
        gate!.dispose();
        up!.dispose();
      } else if ((m = n.match(/^model\.layers\.(\d+)\.mlp\.(experts\.\d+\.)?down$/))) linearT(`thinker.model.layers.${m[1]}.mlp.${m[2] ?? ''}down_proj`, v);
      else if ((m = n.match(/^model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.weight$/))) linearT(`thinker.model.layers.${m[1]}.self_attn.${m[2]}`, v);
      else if (n === 'model.lmHead.weight') linearT('thinker.lm_head', v);
      else if ((m = n.match(/^model\.(.+\.weight)$/))) put(`thinker.model.${m[1]}`, tf.clone(v));
      else throw new Error(`TrainableCaptioner.exportWeights: no checkpoint name for parameter '${n}'`);
    }
    return out;
  }
}
