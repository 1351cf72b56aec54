import { existsSync, readdirSync, statSync } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { glob, isDynamicPattern } from 'tinyglobby';

/** Extensions picked up when a folder is given (explicit files are taken whatever their name). */
export const MEDIA_EXTENSIONS = new Set(['.wav', '.mp3', '.flac', '.ogg', '.oga', '.opus', '.m4a', '.aac', '.wma', '.aif', '.aiff', '.caf', '.amr', '.mp4', '.m4v', '.mkv', '.mov', '.webm', '.avi']);

export interface ExpandedInputs {
  /** Absolute paths, sorted, each once. A named file that does not exist stays in, to be reported as an error line. */
  readonly files: string[];
  /** Arguments that matched nothing (empty folders, globs without a match). */
  readonly unmatched: string[];
}

/**
 * Turns the command line's `<files|dirs|globs...>` into a file list: folders are walked recursively for
 * media files, glob patterns (`"data/**\/*.mp3"`, quoted so the shell leaves them alone) are expanded.
 *
 * ```ts
 * const { files } = await expandInputs(['talks/', 'extra/*.wav', 'one.mp4']);
 * ```
 */
export async function expandInputs(args: readonly string[], cwd = process.cwd()): Promise<ExpandedInputs> {
  const found = new Set<string>();
  const unmatched: string[] = [];
  for (const arg of args) {
    const abs = resolve(cwd, arg);
    const before = found.size;
    if (existsSync(abs)) {
      if (statSync(abs).isDirectory()) walk(abs, found);
      else found.add(abs);
    } else if (isDynamicPattern(arg)) {
      for (const p of await glob(arg, { cwd, absolute: true, onlyFiles: true, dot: false })) found.add(resolve(p));
    } else {
      found.add(abs); // a missing file is the user's to hear about, as an error line of its own
    }
    if (found.size === before) unmatched.push(arg);
  }
  return { files: [...found].sort(), unmatched };
}

function walk(dir: string, into: Set<string>): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue;
    const p = join(dir, entry.name);
    if (entry.isDirectory()) walk(p, into);
    else if (entry.isFile() && MEDIA_EXTENSIONS.has(extname(entry.name).toLowerCase())) into.add(p);
  }
}
