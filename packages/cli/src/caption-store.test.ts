import { appendFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseCaptionOptions } from '@omniflow/nodes';
import { CaptionStore, type CaptionRecord } from './caption-store.js';

const options = parseCaptionOptions();
const rec = (path: string, optionsHash = 'h1', status: 'ok' | 'error' = 'ok'): CaptionRecord =>
  status === 'ok'
    ? { path, status, duration: 1.5, segments: [{ start: 0, end: 1.5, text: 'a tone' }], summary: 'a tone', model: 'm@1', options, optionsHash, elapsed: 0.1, finishedAt: '2026-01-01T00:00:00.000Z', by: 'test' }
    : { path, status, error: { reason: 'corrupt', message: 'bad' }, model: 'm@1', options, optionsHash, elapsed: 0.1, finishedAt: '2026-01-01T00:00:00.000Z', by: 'test' };

describe('CaptionStore', () => {
  it('reads back what it appended, keyed by path and options hash', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'capstore-')), 'out.jsonl');
    const a = CaptionStore.open(file);
    a.append(rec('/x/a.wav'));
    a.append(rec('/x/b.wav', 'h1', 'error'));
    a.close();
    const b = CaptionStore.open(file);
    expect(b.size).toBe(2);
    expect(b.get('/x/a.wav', 'h1')?.status).toBe('ok');
    expect(b.get('/x/b.wav', 'h1')?.status).toBe('error');
    expect(b.get('/x/a.wav', 'other-options')).toBeUndefined();
    b.close();
    expect(readFileSync(file, 'utf8').split('\n').filter(Boolean)).toHaveLength(2);
  });

  it('cuts a torn last line so the next record starts on its own line', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'capstore-')), 'out.jsonl');
    writeFileSync(file, JSON.stringify(rec('/x/a.wav')) + '\n' + JSON.stringify(rec('/x/b.wav')).slice(0, 40));
    const s = CaptionStore.open(file);
    expect(s.repairedBytes).toBe(40);
    expect(s.size).toBe(1);
    expect(s.get('/x/b.wav', 'h1')).toBeUndefined();
    s.append(rec('/x/b.wav'));
    s.close();
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    expect(lines.map((l) => JSON.parse(l).path)).toEqual(['/x/a.wav', '/x/b.wav']);
  });

  it('counts lines that are not records and keeps them', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'capstore-')), 'out.jsonl');
    writeFileSync(file, 'not json\n{"path":"/x"}\n' + JSON.stringify(rec('/x/a.wav')) + '\n');
    const s = CaptionStore.open(file);
    expect(s.skippedLines).toBe(2);
    expect(s.size).toBe(1);
    s.close();
  });

  it('refuses a second writer while the first is alive, and takes over the lock of a dead one', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'capstore-')), 'out.jsonl');
    const first = CaptionStore.open(file);
    // A live pid that is not ours: the parent of this test process.
    writeFileSync(`${file}.lock`, String(process.ppid));
    expect(() => CaptionStore.open(file)).toThrow(`another omniflow run (pid ${process.ppid}) is writing it`);
    first.close(); // the lock no longer holds our pid, so close leaves it alone
    expect(existsSync(`${file}.lock`)).toBe(true);
    const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    writeFileSync(`${file}.lock`, dead.stdout.trim());
    const next = CaptionStore.open(file);
    expect(readFileSync(`${file}.lock`, 'utf8')).toBe(String(process.pid));
    next.close();
    expect(existsSync(`${file}.lock`)).toBe(false);
  });

  it('a later record for the same file and options wins (retry of an error)', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'capstore-')), 'out.jsonl');
    appendFileSync(file, JSON.stringify(rec('/x/a.wav', 'h1', 'error')) + '\n' + JSON.stringify(rec('/x/a.wav', 'h1', 'ok')) + '\n');
    const s = CaptionStore.open(file);
    expect(s.get('/x/a.wav', 'h1')?.status).toBe('ok');
    s.close();
  });
});
