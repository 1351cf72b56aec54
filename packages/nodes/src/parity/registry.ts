import type { ParityRunner } from './types.js';
import { audioEncoderRunner } from './cases/audio-encoder.js';
import { visionEncoderRunner } from './cases/vision-encoder.js';
import { ropeIndexRunner } from './cases/rope-index.js';
import { code2WavRunner } from './cases/code2wav.js';
import { talkerRunner } from './cases/talker.js';
import { moeRunner } from './cases/moe.js';
import { thinkerRunner } from './cases/thinker.js';
import { audioFeaturesRunner } from './cases/audio-features.js';

/**
 * Every parity runner, one line each. A runner handles one kind of case (see `ParityRunner.matches`); several may
 * match one case, and their outputs are merged.
 */
export const parityRunners: ParityRunner[] = [
  audioEncoderRunner,
  visionEncoderRunner,
  ropeIndexRunner,
  code2WavRunner,
  talkerRunner,
  moeRunner,
  thinkerRunner,
  audioFeaturesRunner,
];
