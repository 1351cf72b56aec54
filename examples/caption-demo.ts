/**
 * The README's main job (`npm start`): caption the demo clips in examples/audio with the built-in captioner
 * (models/omniflow-captioner, trained by omniflow itself) and print each caption next to the scene's reference
 * caption, with the timing. It runs the same pipeline as `omniflow caption`: ffmpeg/WAV decode → 16 kHz
 * segments → log-mel → audio encoder → MoE thinker, batched across files.
 *
 *   npm start
 *   npm start -- --model ~/models/Qwen3-Omni-30B-A3B-Captioner     # a real checkpoint instead
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { builtinCaptionerDir, generateScene, parseCaptionOptions } from '@omniflow/nodes';
import { activeBackend } from '@omniflow/runtime-gpu';
import { CaptionStore, captionFiles, loadCaptionModel, type CaptionRecord } from '@omniflow/cli';
import { DEMO_INDICES, DEMO_SEED, demoFileName } from './audio/scenes.js';

const { values } = parseArgs({ options: { model: { type: 'string', short: 'm' } } });
const audioDir = fileURLToPath(new URL('./audio/', import.meta.url));
const files = DEMO_INDICES.map((_, k) => join(audioDir, demoFileName(k)));
const references = new Map(DEMO_INDICES.map((index, k) => [demoFileName(k), generateScene(DEMO_SEED, index).caption]));
const modelDir = values.model ? resolve(values.model) : builtinCaptionerDir();

const t0 = performance.now();
const model = await loadCaptionModel(modelDir);
const loadMs = performance.now() - t0;
const scratch = mkdtempSync(join(tmpdir(), 'omniflow-caption-demo-'));
const store = CaptionStore.open(join(scratch, 'captions.jsonl'));
try {
  const summary = await captionFiles(files, store, { model, options: parseCaptionOptions({}), concurrency: 4, batchSize: 8 });
  const records = readFileSync(store.file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as CaptionRecord);
  console.log(`model: ${modelDir} (loaded in ${loadMs.toFixed(0)} ms, backend ${activeBackend()?.name ?? '?'})\n`);
  let exact = 0;
  for (const file of files) {
    const r = records.find((x) => x.path === file);
    const name = basename(file);
    if (!r || r.status !== 'ok') {
      console.log(`${name}: FAILED ${r && r.status === 'error' ? r.error.message : 'no record'}`);
      continue;
    }
    const reference = references.get(name)!;
    const same = r.summary === reference;
    if (same) exact++;
    console.log(`${name}  ${r.duration.toFixed(2)} s  ${same ? '✓' : '✗'}\n  caption:   ${r.summary}\n  reference: ${reference}`);
  }
  const audio = summary.audioSeconds;
  console.log(`\n${exact}/${files.length} captions match their reference exactly`);
  console.log(`${files.length} files, ${audio.toFixed(1)} s of audio captioned in ${summary.wallSeconds.toFixed(2)} s (${(audio / summary.wallSeconds).toFixed(1)}x real time), ${summary.batches} batched model calls`);
  process.exitCode = summary.failed > 0 ? 1 : 0;
} finally {
  store.close();
  model.dispose();
  rmSync(scratch, { recursive: true, force: true });
}
