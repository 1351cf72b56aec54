import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'main.ts');

/**
 * Starts the `omniflow` command from source in a child process (node --conditions=source --import tsx), as a
 * user would run it, so tests see real exit codes, signals and stdout/stderr.
 *
 * ```ts
 * const cli = startCli(['caption', dir, '--out', out]);
 * const { code } = await cli.exited;
 * ```
 */
export function startCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): { proc: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>; stdout: () => string; stderr: () => string } {
  const proc = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve, reject) => {
    proc.once('error', reject);
    proc.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { proc, exited, stdout: () => stdout, stderr: () => stderr };
}

/** Resolves once `check()` is true (polled every 50 ms); rejects after `timeoutMs` naming `what` (a function: evaluated then). */
export async function waitFor(check: () => boolean, what: string | (() => string), timeoutMs = 60_000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
