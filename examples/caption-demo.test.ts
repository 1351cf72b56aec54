import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('npm start (examples/caption-demo.ts)', () => {
  it('captions every demo clip with the built-in captioner and prints captions, references and timing', () => {
    const out = execFileSync(process.execPath, ['--conditions=source', '--import', 'tsx', 'examples/caption-demo.ts'], { cwd: root, encoding: 'utf8' });
    const clips = [...out.matchAll(/^(scene-\d\d\.wav) {2}([\d.]+) s {2}[✓✗]\n {2}caption: {3}(.+)\n {2}reference: (.+)$/gm)];
    expect(clips.map((m) => m[1])).toEqual(['scene-01.wav', 'scene-02.wav', 'scene-03.wav', 'scene-04.wav', 'scene-05.wav']);
    for (const m of clips) {
      expect(Number(m[2])).toBeGreaterThan(0.5);
      expect(m[3].length).toBeGreaterThan(0);
    }
    const exact = clips.filter((m) => m[3] === m[4]).length;
    expect(out).toContain(`${exact}/5 captions match their reference exactly`);
    expect(out).toMatch(/5 files, [\d.]+ s of audio captioned in [\d.]+ s \([\d.]+x real time\)/);
    expect(out).toContain('models/omniflow-captioner');
  });
});
