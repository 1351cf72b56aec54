import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { readWav } from '@omniflow/nodes';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'omniflow-speech-examples-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const example = (name: string, args: string[]) =>
  run(process.execPath, ['--conditions=source', '--import', 'tsx', `examples/${name}`, ...args], { cwd: root, timeout: 120_000 });

describe('speech examples on the fixture checkpoint', () => {
  it('tts.ts writes a 24 kHz WAV whose length is whole codec frames', async () => {
    const out = join(dir, 'tts.wav');
    const { stderr } = await example('tts.ts', ['hello', '--out', out, '--max-frames', '20']);
    expect(stderr).toMatch(/RANDOM weights/);
    expect(stderr).toMatch(/first audio after \d+ ms/);
    const wav = await readWav(out);
    expect(wav.sampleRate).toBe(24_000);
    expect(wav.channels).toBe(1);
    expect(wav.samples.length).toBeGreaterThan(0);
    expect(wav.samples.length % 24).toBe(0); // 24 samples per frame for the tiny Code2Wav, tail included
  });

  it('voice-answer.ts answers a generated spoken question with a WAV', async () => {
    const out = join(dir, 'answer.wav');
    const { stderr } = await example('voice-answer.ts', ['--out', out, '--seed', '4', '--max-frames', '20']);
    expect(stderr).toMatch(/no file given: generated/);
    expect(stderr).toMatch(/1\.50 s of question/);
    const wav = await readWav(out);
    expect(wav.sampleRate).toBe(24_000);
    expect(wav.samples.length).toBeGreaterThan(0);
  });
});
