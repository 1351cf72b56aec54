import * as tf from '@tensorflow/tfjs-core';
import { Checkpoint, SafetensorsFile, fixtureDir, fixturePath } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig, type Qwen3OmniConfig } from './config.js';
import { Talker } from './talker.js';
import { CodecHead, GREEDY } from './codec-head.js';
import { CodePredictor } from './code-predictor.js';
import { Sampler } from './sampler.js';
import type { TalkerParts } from './talker.node.js';

/** Fixture setup shared by the Qwen3-Omni model tests (not exported from the package). */

/** The fixture checkpoint's talker parts, with the cases file the parity tests read. */
export interface TalkerFixture {
  readonly config: Qwen3OmniConfig;
  readonly ckpt: Checkpoint;
  readonly cases: SafetensorsFile;
  readonly parts: TalkerParts;
  /** Disposes the talker, codec head and code predictor (their tensors), leaving the files open. */
  dispose(): void;
  /** Closes the checkpoint and cases files. */
  close(): void;
}

/**
 * Loads the talker, codec head and code predictor from the tiny fixture checkpoint (after `initBackend()`), and
 * runs the predictor once so that its reusable per-frame KV cache is allocated before the tests count leaks.
 *
 * ```ts
 * const fx = loadTalkerFixture();
 * console.log(fx.parts.talker.ttsSpecialEmbeds.shape);
 * fx.dispose(); fx.close();
 * ```
 */
export function loadTalkerFixture(): TalkerFixture {
  const config = readQwen3OmniConfig(fixtureDir()).config;
  const ckpt = Checkpoint.open(fixturePath('model.safetensors'));
  const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
  const parts: TalkerParts = {
    talker: Talker.load(ckpt, config),
    codecHead: CodecHead.load(ckpt, config.talker_config!),
    codePredictor: CodePredictor.load(ckpt, config.talker_config!.code_predictor_config),
  };
  const z = tf.zeros([1, 24]) as tf.Tensor2D;
  parts.codePredictor.predict(z, z, new Sampler(GREEDY)).embeddingSum.dispose();
  z.dispose();
  return {
    config,
    ckpt,
    cases,
    parts,
    dispose() {
      parts.talker.dispose();
      parts.codecHead.dispose();
      parts.codePredictor.dispose();
    },
    close() {
      ckpt.close();
      cases.close();
    },
  };
}
