import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, extname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { LogMel } from '../media/log-mel.js';
import { mixChannels } from '../media/mixdown.js';
import { resample } from '../media/resampler.js';
import { readWav } from '../media/wav.js';
import type { Qwen3OmniTokenizer } from '../models/qwen3-omni/tokenizer.js';
import { generateScene, SceneRandom } from './scenes.js';
import type { CaptionExample } from './trainable-captioner.js';

/*
 * Where training examples come from: generated scenes (seed → endless deterministic stream), or a folder of WAV files
 * each with a caption in a .txt file of the same name. Example i of a source is always the same example, so a
 * training run is reproducible and resumes at an index.
 */

export type CaptionDataSource =
  | { readonly kind: 'scenes'; readonly seed: number }
  | { readonly kind: 'folder'; readonly dir: string; readonly seed: number };

/** A labelled clip: 16 kHz mono samples and its caption. */
export interface LabelledClip {
  readonly pcm: Float32Array;
  readonly caption: string;
  readonly name: string;
}

/**
 * The (audio, caption) pairs of a folder: every `*.wav` with a `*.txt` beside it, sorted by name. Throws naming the
 * folder when it has none, and lists WAVs without captions.
 *
 * ```ts
 * listCaptionFolder('data/my-sounds'); // [{ audio: 'data/my-sounds/door.wav', caption: 'a door slams' }, …]
 * ```
 */
export function listCaptionFolder(dir: string): Array<{ audio: string; caption: string }> {
  if (!existsSync(dir)) throw new Error(`caption data ${dir}: no such folder`);
  const files = readdirSync(dir).sort();
  const wavs = files.filter((f) => extname(f).toLowerCase() === '.wav');
  const pairs: Array<{ audio: string; caption: string }> = [];
  const missing: string[] = [];
  for (const w of wavs) {
    const txt = join(dir, `${basename(w, extname(w))}.txt`);
    if (!existsSync(txt)) missing.push(w);
    else pairs.push({ audio: join(dir, w), caption: readFileSync(txt, 'utf8').trim() });
  }
  if (missing.length) throw new Error(`caption data ${dir}: ${missing.length} WAV file(s) have no caption .txt: ${missing.slice(0, 5).join(', ')}`);
  if (!pairs.length) throw new Error(`caption data ${dir}: no .wav files with .txt captions`);
  return pairs;
}

/**
 * Every clip of a folder source, decoded to 16 kHz mono and held in memory (fine-tuning sets are small; a training
 * step then never waits on the disk).
 *
 * ```ts
 * const clips = await loadCaptionFolder('data/my-sounds');
 * ```
 */
export async function loadCaptionFolder(dir: string): Promise<LabelledClip[]> {
  const clips: LabelledClip[] = [];
  for (const pair of listCaptionFolder(dir)) {
    const wav = await readWav(pair.audio);
    let pcm = wav.channels === 1 ? wav.samples : mixChannels(wav.samples, wav.channels, 1);
    if (wav.sampleRate !== 16_000) pcm = resample(pcm, wav.sampleRate, 16_000);
    clips.push({ pcm, caption: pair.caption, name: basename(pair.audio) });
  }
  return clips;
}

/**
 * Clip `index` of a source: scene `index` of the seed, or for a folder (its clips from loadCaptionFolder) the clips
 * in a fresh seeded order every epoch.
 *
 * ```ts
 * const clip = labelledClip({ kind: 'scenes', seed: 1 }, 0);
 * ```
 */
export function labelledClip(source: CaptionDataSource, index: number, folderClips?: readonly LabelledClip[]): LabelledClip {
  if (source.kind === 'scenes') {
    const s = generateScene(source.seed, index);
    return { pcm: s.pcm, caption: s.caption, name: `scene-${source.seed}-${index}` };
  }
  if (!folderClips?.length) throw new Error(`labelledClip: folder source ${source.dir} needs its clips (loadCaptionFolder)`);
  const epoch = Math.floor(index / folderClips.length);
  const order = shuffled(folderClips.length, new SceneRandom(source.seed, epoch));
  return folderClips[order[index % folderClips.length]!]!;
}

function shuffled(n: number, rng: SceneRandom): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/**
 * A clip as the model trains on it: log-mel features on the host and the caption's token ids. Words the tokenizer
 * does not know are an error (a caption the model could never produce).
 *
 * ```ts
 * const ex = captionExample(labelledClip({ kind: 'scenes', seed: 1 }, 0), model.tokenizer, new LogMel());
 * ex.frames; // mel frames (100 per second)
 * ```
 */
export function captionExample(clip: LabelledClip, tokenizer: Qwen3OmniTokenizer, logMel: LogMel): CaptionExample {
  const features = tf.tidy(() => logMel.features(tf.tensor1d(clip.pcm)));
  const frames = features.shape[1]!;
  const data = features.dataSync() as Float32Array;
  features.dispose();
  const captionIds = tokenizer.encode(clip.caption);
  const unk = tokenizer.tokenToId('<unk>');
  if (unk !== undefined && captionIds.includes(unk)) throw new Error(`caption of ${clip.name} has words outside the tokenizer's vocabulary: "${clip.caption}"`);
  return { features: data, frames, captionIds };
}
