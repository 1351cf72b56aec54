import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expandInputs } from './inputs.js';

describe('expandInputs', () => {
  const root = mkdtempSync(join(tmpdir(), 'capinputs-'));
  mkdirSync(join(root, 'a/deep'), { recursive: true });
  mkdirSync(join(root, 'empty'));
  for (const f of ['a/one.wav', 'a/two.MP3', 'a/notes.txt', 'a/deep/three.mp4', 'a/.hidden.wav', 'b.flac', 'c.xyz']) writeFileSync(join(root, f), '');

  it('walks folders for media files, takes named files whatever their extension, expands globs, dedupes and sorts', async () => {
    const { files, unmatched } = await expandInputs(['a', 'c.xyz', '*.flac', 'a/one.wav'], root);
    expect(files).toEqual([join(root, 'a/deep/three.mp4'), join(root, 'a/one.wav'), join(root, 'a/two.MP3'), join(root, 'b.flac'), join(root, 'c.xyz')]);
    expect(unmatched).toEqual(['a/one.wav']); // already found through the folder
  });

  it('keeps a missing named file (it becomes an error line) and reports empty folders and globs', async () => {
    const { files, unmatched } = await expandInputs(['missing.wav', 'empty', 'nothing-*.ogg'], root);
    expect(files).toEqual([join(root, 'missing.wav')]);
    expect(unmatched).toEqual(['empty', 'nothing-*.ogg']);
  });
});
