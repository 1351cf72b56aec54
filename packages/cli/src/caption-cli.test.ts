import { appendFileSync, copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import type { CaptionErrorRecord, CaptionOkRecord, CaptionRecord } from './caption-store.js';
import { fixtureModelFolder } from './testing/fixture-model.js';
import { makeMediaFolder, type GeneratedMedia } from './testing/media-folder.js';
import { startCli, waitFor } from './testing/run-cli.js';
import { main } from './program.js';

// The real caption path end to end on the tiny fixture checkpoint (random weights: the text is noise, so the tests
// check structure, counts, determinism and resumption, never wording).
const root = mkdtempSync(join(tmpdir(), 'omniflow-caption-cli-'));
let model: string;
let media: GeneratedMedia[];
const fast = ['--max-new-tokens', '6', '--segment-seconds', '2'];
const readLines = (file: string): CaptionRecord[] =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as CaptionRecord);

beforeAll(() => {
  model = fixtureModelFolder(root);
  media = makeMediaFolder(join(root, 'media'), { seconds: 3 });
});

describe('omniflow caption', () => {
  it('captions a folder of wav/mp3/mp4/silent/corrupt/no-audio files to one JSONL line each, and exits 1 for the bad ones', async () => {
    const out = join(root, 'folder.jsonl');
    const { code, stderr } = await startCli(['caption', join(root, 'media'), '--model', model, '--out', out, '--concurrency', '3', ...fast]).exited;
    expect(code, stderr).toBe(1);
    const lines = readLines(out);
    expect(lines.map((l) => l.path).sort()).toEqual(media.map((m) => m.path));
    const hashes = new Set(lines.map((l) => l.optionsHash));
    expect(hashes.size).toBe(1);
    for (const m of media) {
      const rec = lines.find((l) => l.path === m.path)!;
      if (m.expect !== 'ok') {
        expect(rec.status, m.path).toBe('error');
        expect((rec as CaptionErrorRecord).error.reason).toBe(m.expect);
        continue;
      }
      expect(rec.status, JSON.stringify(rec)).toBe('ok');
      const ok = rec as CaptionOkRecord;
      expect(ok.model).toMatch(/^qwen3-omni-tiny@[0-9a-f]{12}$/);
      // Decoded length agrees with what ffmpeg was asked for (AAC/MP3 add a few ms of codec padding).
      expect(Math.abs(ok.duration - m.seconds)).toBeLessThan(0.1);
      // Segments tile the file: 2 s each, a tail under 1 s folded into the last one.
      expect(ok.segments[0].start).toBe(0);
      expect(ok.segments.at(-1)!.end).toBe(ok.duration);
      ok.segments.forEach((s, i) => {
        if (i > 0) expect(s.start).toBe(ok.segments[i - 1].end);
        expect(typeof s.text).toBe('string');
      });
      expect(ok.segments.length).toBe(m.seconds - 2 >= 1 ? 2 : 1);
      expect(typeof ok.summary).toBe('string');
    }
    expect(stderr).toContain('4 captioned, 2 failed, 0 already done');
  }, 180_000);

  it('resumes after SIGKILL: the restarted run skips what was written, repairs a torn last line, and ends with one line per file', async () => {
    const dir = join(root, 'many');
    const files: string[] = [];
    const tone = media.find((m) => m.path.endsWith('tone-440.wav'))!.path;
    for (let i = 0; i < 6; i++) {
      const p = join(root, `many-${i}.wav`);
      copyFileSync(tone, p);
      files.push(p);
    }
    const out = join(dir + '.jsonl');
    const first = startCli(['caption', ...files, '--model', model, '--out', out, '--concurrency', '1', '--batch-size', '1', '-v', ...fast]);
    await waitFor(() => (first.stderr().match(/\] .*: ok /g) ?? []).length >= 2, 'two files captioned by the first run');
    first.proc.kill('SIGKILL');
    const killed = await first.exited;
    expect(killed.signal).toBe('SIGKILL');
    const before = readLines(out);
    expect(before.length).toBeGreaterThanOrEqual(2);
    expect(before.length).toBeLessThan(files.length);
    // As if the kill had landed in the middle of a write.
    appendFileSync(out, '{"path":"' + files[5] + '","status":"ok","dur');

    const second = await startCli(['caption', ...files, '--model', model, '--out', out, '--concurrency', '2', ...fast]).exited;
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain('removed a torn last line');
    expect(second.stderr).toContain(`${files.length - before.length} captioned, 0 failed, ${before.length} already done`);
    const after = readLines(out);
    expect(after.map((r) => r.path).sort()).toEqual([...files].sort());
    // The lines of the first run are kept as they were, not redone.
    expect(after.slice(0, before.length)).toEqual(before);
    expect(new Set(after.map((r) => r.by)).size).toBe(2);
  }, 180_000);

  it('refuses bad options, missing models, empty inputs and an unreachable Redis with exit code 2 and a message naming them', async () => {
    const run = async (args: string[]) => {
      let stderr = '';
      const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => ((stderr += String(chunk)), true));
      try {
        return { code: await main(args), stderr };
      } finally {
        spy.mockRestore();
      }
    };
    const bad = await run(['caption', join(root, 'media'), '--model', model, '--segment-seconds', '0']);
    expect(bad).toEqual({ code: 2, stderr: expect.stringContaining('caption options: segmentSeconds: Too small') });
    const noModel = await run(['caption', join(root, 'media'), '--model', join(root, 'no-such-model'), '--out', join(root, 'x.jsonl')]);
    expect(noModel).toEqual({ code: 2, stderr: expect.stringContaining(`model folder ${join(root, 'no-such-model')}: no such folder`) });
    const noInput = await run(['caption', join(root, 'empty-*.wav'), '--model', model, '--out', join(root, 'y.jsonl')]);
    expect(noInput).toEqual({ code: 2, stderr: expect.stringContaining('no input files') });
    const noRedis = await run(['status', '--queue', 'redis://127.0.0.1:1']);
    expect(noRedis).toEqual({ code: 2, stderr: expect.stringContaining('cannot reach Redis at redis://127.0.0.1:1: connect ECONNREFUSED') });
    const badFlag = await run(['caption', join(root, 'media'), '--concurrency', 'many']);
    expect(badFlag).toEqual({ code: 2, stderr: expect.stringContaining("--concurrency must be an integer >= 1, got 'many'") });
  });
});
