import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));

describe('examples/ask-media.ts', () => {
  it('answers a question about a generated video clip on the fixture checkpoint, out of the box', async () => {
    const { stdout, stderr } = await run(process.execPath, ['--conditions=source', '--import', 'tsx', 'examples/ask-media.ts', '--max-tokens', '4'], { cwd: root, timeout: 120_000 });
    expect(stderr).toMatch(/RANDOM weights/);
    expect(stderr).toMatch(/with video/);
    expect(stderr).toMatch(/video: 4 frames at 2 fps → \d+x\d+, grid \[2,\d+,\d+\], \d+ tokens/);
    expect(stderr).toMatch(/\n4 tokens in [\d.]+ s/);
    expect(stdout.length).toBeGreaterThan(0);
  });
});
