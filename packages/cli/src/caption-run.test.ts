import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCaptionOptions, type CaptionModel } from '@omniflow/nodes';
import { loadCaptionModel } from './caption-model-loader.js';
import { captionFiles, type CaptionProgressEvent } from './caption-run.js';
import { CaptionStore, type CaptionOkRecord } from './caption-store.js';
import { fixtureModelFolder } from './testing/fixture-model.js';
import { makeMediaFolder, type GeneratedMedia } from './testing/media-folder.js';

const root = mkdtempSync(join(tmpdir(), 'omniflow-caption-run-'));
const options = parseCaptionOptions({ maxNewTokens: 6, segmentSeconds: 2 });
let model: CaptionModel;
let media: GeneratedMedia[];

beforeAll(async () => {
  model = await loadCaptionModel(fixtureModelFolder(root));
  media = makeMediaFolder(join(root, 'media'), { seconds: 3 });
});
afterAll(() => model.dispose());

const run = async (name: string, concurrency: number, batchSize: number, signal?: AbortSignal) => {
  const store = CaptionStore.open(join(root, name));
  const events: CaptionProgressEvent[] = [];
  try {
    const summary = await captionFiles(
      media.map((m) => m.path),
      store,
      { model, options, concurrency, batchSize, onFile: (e) => events.push(e), signal },
    );
    return { summary, events };
  } finally {
    store.close();
  }
};

describe('captionFiles', () => {
  it('writes the same captions one file at a time as batched across files, in fewer model calls, without leaking tensors', async () => {
    const before = tf.memory().numTensors;
    const one = await run('one.jsonl', 1, 1);
    const many = await run('many.jsonl', 6, 8);
    expect(tf.memory().numTensors).toBe(before);
    const texts = (events: CaptionProgressEvent[]) =>
      Object.fromEntries(events.filter((e) => e.record.status === 'ok').map((e) => [e.record.path, [...(e.record as CaptionOkRecord).segments.map((s) => s.text), (e.record as CaptionOkRecord).summary]]));
    expect(texts(many.events)).toEqual(texts(one.events));
    expect(Object.keys(texts(one.events))).toHaveLength(4);
    // 4 good files: 2 segments each and a summary pass each = 12 requests either way.
    expect(one.summary).toMatchObject({ files: 6, captioned: 4, failed: 2, skipped: 0, requests: 12, batches: 12 });
    expect(many.summary).toMatchObject({ files: 6, captioned: 4, failed: 2, skipped: 0, requests: 12 });
    expect(many.summary.batches).toBeLessThan(6);
    const audio = media.filter((m) => m.expect === 'ok').reduce((a, m) => a + m.seconds, 0);
    expect(Math.abs(many.summary.audioSeconds - audio)).toBeLessThan(0.2);
  });

  it('skips what the output already holds for the same options, and redoes everything for other options', async () => {
    const again = await run('many.jsonl', 6, 8);
    expect(again.summary).toMatchObject({ captioned: 0, failed: 0, skipped: 6, failedBefore: 2, requests: 0 });
    expect(again.events.every((e) => e.skipped)).toBe(true);
    const store = CaptionStore.open(join(root, 'many.jsonl'));
    try {
      const other = await captionFiles([media[0].path], store, { model, options: { ...options, prompt: 'What is it?' }, concurrency: 1, batchSize: 1 });
      expect(other).toMatchObject({ captioned: media[0].expect === 'ok' ? 1 : 0, skipped: 0 });
    } finally {
      store.close();
    }
  });

  it('stops taking new files once aborted and does not record the files in flight', async () => {
    const stop = new AbortController();
    const store = CaptionStore.open(join(root, 'aborted.jsonl'));
    try {
      const s = await captionFiles(
        media.map((m) => m.path),
        store,
        { model, options, concurrency: 1, batchSize: 1, signal: stop.signal, onFile: () => stop.abort() },
      );
      expect(s.captioned + s.failed).toBe(1);
      expect(store.size).toBe(1);
    } finally {
      store.close();
    }
  });
});
