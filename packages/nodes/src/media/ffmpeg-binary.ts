import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, join } from 'node:path';

/** Where the ffmpeg binary came from, in the order they are tried. */
export type FfmpegBinarySource = 'option' | 'FFMPEG_PATH' | 'PATH' | '@ffmpeg-installer/ffmpeg';

export interface FfmpegBinary {
  readonly path: string;
  readonly source: FfmpegBinarySource;
}

const isExecutable = (p: string): boolean => {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

const onPath = (name: string): string | undefined => {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
};

const bundled = (): string | undefined => {
  try {
    // Optional dependency: it ships a static (2018, FFmpeg 4.1-era) binary inside the npm package, so it works offline.
    const require = createRequire(import.meta.url);
    const path = (require('@ffmpeg-installer/ffmpeg') as { path: string }).path;
    return isExecutable(path) ? path : undefined;
  } catch {
    return undefined;
  }
};

/**
 * Finds the ffmpeg binary: `explicit` (an option), then `FFMPEG_PATH`, then `ffmpeg` on `PATH`, then the
 * bundled `@ffmpeg-installer/ffmpeg`. An explicit path or `FFMPEG_PATH` that does not exist is an error,
 * not a silent fallback: the user asked for that binary.
 *
 * ```ts
 * const { path, source } = resolveFfmpeg();
 * console.log(`using ${path} (from ${source})`);
 * ```
 */
export function resolveFfmpeg(explicit?: string): FfmpegBinary {
  if (explicit !== undefined) {
    if (!isExecutable(explicit)) {
      throw new Error(`ffmpeg binary not found: option ffmpegPath=${JSON.stringify(explicit)} ${existsSync(explicit) ? 'is not an executable file' : 'does not exist'}`);
    }
    return { path: explicit, source: 'option' };
  }
  const env = process.env.FFMPEG_PATH;
  if (env) {
    if (!isExecutable(env)) {
      throw new Error(`ffmpeg binary not found: FFMPEG_PATH=${JSON.stringify(env)} ${existsSync(env) ? 'is not an executable file' : 'does not exist'}`);
    }
    return { path: env, source: 'FFMPEG_PATH' };
  }
  const path = onPath('ffmpeg');
  if (path) return { path, source: 'PATH' };
  const pkg = bundled();
  if (pkg) return { path: pkg, source: '@ffmpeg-installer/ffmpeg' };
  throw new Error(
    'ffmpeg binary not found: no ffmpegPath option, no FFMPEG_PATH, no ffmpeg on PATH, and the optional ' +
      'dependency @ffmpeg-installer/ffmpeg is not installed (install it, or apt-get install ffmpeg)',
  );
}
