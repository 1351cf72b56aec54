/**
 * Regenerates the demo clips in this folder from the scene generator (seed 7, a seed training never used):
 * `node --conditions=source --import tsx examples/audio/generate.ts`. The scenes are chosen to cover one to four
 * events, with and without an overlap; their reference captions are in README.md.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wavefile from 'wavefile';
import { generateScene } from '@omniflow/nodes';
import { DEMO_INDICES, DEMO_SEED, demoFileName } from './scenes.js';

for (const [k, index] of DEMO_INDICES.entries()) {
  const s = generateScene(DEMO_SEED, index);
  const pcm = Int16Array.from(s.pcm, (v) => Math.max(-32768, Math.min(32767, Math.round(v * 32767))));
  const wav = new wavefile.WaveFile();
  wav.fromScratch(1, s.sampleRate, '16', pcm);
  const name = demoFileName(k);
  writeFileSync(fileURLToPath(new URL(name, import.meta.url)), wav.toBuffer());
  console.log(`${name}  ${(s.pcm.length / s.sampleRate).toFixed(2)} s  ${s.caption}`);
}
