/**
 * Caption every audio/video file in a folder to JSONL, with a progress bar, resumable: run it again and it skips
 * what is done. The same as `omniflow caption <folder>`, written out with the library API so you can change it.
 *
 *   node --conditions=source --import tsx examples/caption-folder.ts                  # generated demo files
 *   node --conditions=source --import tsx examples/caption-folder.ts ~/recordings --out recordings.jsonl
 *   node --conditions=source --import tsx examples/caption-folder.ts ~/recordings --model ~/models/Qwen3-Omni-30B-A3B-Captioner
 *
 * Without --model it uses OMNIFLOW_MODEL or the built-in captioner when there is one, else the tiny golden-fixture
 * checkpoint (random weights: the captions are nonsense text, but every stage is the real one).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseCaptionOptions } from '@omniflow/nodes';
import { builtinModelDir, captionFiles, CaptionProgress, CaptionStore, expandInputs, loadCaptionModel } from '@omniflow/cli';
import { fixtureModelFolder } from '../packages/cli/src/testing/fixture-model.js';
import { makeMediaFolder } from '../packages/cli/src/testing/media-folder.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string', default: 'captions.jsonl' },
    model: { type: 'string' },
    concurrency: { type: 'string', default: '4' },
    'max-new-tokens': { type: 'string' },
  },
});

const scratch = mkdtempSync(join(tmpdir(), 'omniflow-caption-folder-'));
let folder = positionals[0];
if (!folder) {
  folder = join(scratch, 'demo');
  makeMediaFolder(folder, { seconds: 4 });
  console.error(`no folder given: captioning generated demo files in ${folder}`);
}
let modelDir = values.model ? resolve(values.model) : builtinModelDir();
if (!modelDir) {
  modelDir = fixtureModelFolder(scratch);
  console.error('no model given and no built-in captioner: using the tiny fixture checkpoint (random weights, nonsense captions)');
}

const options = parseCaptionOptions({ maxNewTokens: values['max-new-tokens'] ? Number(values['max-new-tokens']) : undefined });
const { files } = await expandInputs([folder]);
const model = await loadCaptionModel(modelDir);
const store = CaptionStore.open(resolve(values.out!));
const progress = new CaptionProgress({ total: files.length, verbose: true });
try {
  const s = await captionFiles(files, store, { model, options, concurrency: Number(values.concurrency), batchSize: 8, onFile: (e) => progress.update(e) });
  progress.stop();
  console.error(`${s.captioned} captioned, ${s.failed} failed, ${s.skipped} already done; ${(s.audioSeconds / 3600).toFixed(3)} h of audio in ${s.wallSeconds.toFixed(1)} s; ${s.batches} model calls for ${s.requests} captions`);
  console.error(`output: ${store.file}`);
  process.exitCode = s.failed + s.failedBefore > 0 ? 1 : 0;
} finally {
  progress.stop();
  store.close();
  model.dispose();
}
