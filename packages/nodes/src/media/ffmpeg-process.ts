/**
 * The one module that talks to fluent-ffmpeg (the user's chosen command builder; archived upstream, so its use is
 * kept here and nowhere else). It builds the command line, spawns ffmpeg, parses its stderr as it comes, maps
 * failures to {@link MediaError}s that say what was wrong, and kills the process when asked.
 */
import { existsSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import ffmpeg from 'fluent-ffmpeg';
import { resolveFfmpeg, type FfmpegBinary } from './ffmpeg-binary.js';
import { FfmpegStderrParser } from './media-info.js';

/** A file path, an http(s)/file URL (as string or URL), or a Node Readable carrying a container ffmpeg can read. */
export type MediaInput = string | URL | Readable;

export type MediaErrorCode =
  | 'ffmpeg-missing'
  | 'not-found'
  | 'no-stream'
  | 'unknown-format'
  | 'corrupt'
  | 'io'
  | 'ffmpeg-failed';

/** A media failure with a machine-readable `code` and a message that names the input. */
export class MediaError extends Error {
  override readonly name = 'MediaError';
  constructor(
    readonly code: MediaErrorCode,
    message: string,
    readonly stderr: readonly string[] = [],
  ) {
    super(message);
  }
}

export interface FfmpegSpec {
  readonly input: MediaInput;
  /** Options placed before `-i` (e.g. `['-f', 's16le', '-ar', '8000']`). */
  readonly inputOptions?: readonly string[];
  /** Options placed before the output (codec, filters, `-f`). */
  readonly outputOptions: readonly string[];
  /** A Writable (ffmpeg writes to `pipe:1`) or a file path (overwritten). */
  readonly output: Writable | string;
  readonly ffmpegPath?: string;
  /** What the caller wants from the input, so a missing stream is reported as such. */
  readonly expect?: 'audio' | 'video';
}

const URL_SCHEME = /^[a-z][a-z0-9+.-]*:/i;

/**
 * A printable name for an input, used in every error about it.
 *
 * ```ts
 * describeInput('talk.wav'); // '"talk.wav"'
 * ```
 */
export function describeInput(input: MediaInput): string {
  if (typeof input === 'string') return JSON.stringify(input);
  if (input instanceof URL) return JSON.stringify(input.href);
  return 'input stream';
}

/**
 * One running ffmpeg. `done` settles when the process has exited: it resolves on success (or after
 * {@link FfmpegProcess.kill}) and rejects with a {@link MediaError} otherwise.
 *
 * ```ts
 * const out = new PassThrough();
 * const p = FfmpegProcess.start({ input: 'in.wav', outputOptions: ['-f', 'f32le'], output: out });
 * out.resume(); await p.done;
 * ```
 */
export class FfmpegProcess {
  readonly stderr = new FfmpegStderrParser();
  readonly done: Promise<void>;
  private killed = false;
  private exited = false;
  private readonly command: ffmpeg.FfmpegCommand;

  private constructor(
    readonly binary: FfmpegBinary,
    private readonly spec: FfmpegSpec,
  ) {
    const { input } = spec;
    const fromStream = typeof input !== 'string' && !(input instanceof URL);
    const cmd = ffmpeg({ stdoutLines: 60 });
    cmd.input(typeof input === 'string' ? input : input instanceof URL ? input.href : input);
    // -nostats: no \r progress lines in stderr; -nostdin: a file/URL decode must not read our stdin.
    const global = ['-hide_banner', '-nostats', ...(fromStream ? [] : ['-nostdin'])];
    // Passing options as separate arguments stops fluent-ffmpeg from splitting a token on its space.
    cmd.inputOptions(...global, ...(spec.inputOptions ?? []));
    cmd.output(spec.output as Writable);
    cmd.outputOptions(...spec.outputOptions, '-loglevel', 'info');
    // fluent-ffmpeg caches the binary path and its capability lists in one process-wide object, so two commands with
    // different binaries would race. Pin the path per command and skip its capability probes (extra `ffmpeg -formats`
    // runs): ffmpeg's own errors, mapped below, say the same thing more precisely.
    const internals = cmd as unknown as {
      _getFfmpegPath(cb: (err: Error | null, path: string) => void): void;
      _checkCapabilities(cb: (err?: Error) => void): void;
      availableEncoders(cb: (err: Error | null, encoders: object) => void): void;
    };
    internals._getFfmpegPath = (cb) => cb(null, binary.path);
    internals._checkCapabilities = (cb) => cb();
    internals.availableEncoders = (cb) => cb(null, {});
    cmd.on('stderr', (line: string) => this.stderr.feed(line));
    cmd.on('start', () => {
      if (this.killed) cmd.kill('SIGKILL');
    });
    this.done = new Promise<void>((resolve, reject) => {
      cmd.on('end', () => {
        this.exited = true;
        resolve();
      });
      cmd.on('error', (err: Error & { code?: string }) => {
        this.exited = true;
        if (this.killed) resolve();
        else reject(this.explain(err));
      });
    });
    this.command = cmd;
    cmd.run();
  }

  /**
   * Validates the input and binary, then spawns. Throws a {@link MediaError} at once for a missing ffmpeg or a
   * missing input file; everything ffmpeg itself finds wrong arrives through `done`.
   */
  static start(spec: FfmpegSpec): FfmpegProcess {
    let binary: FfmpegBinary;
    try {
      binary = resolveFfmpeg(spec.ffmpegPath);
    } catch (err) {
      throw new MediaError('ffmpeg-missing', (err as Error).message);
    }
    const { input } = spec;
    if (typeof input === 'string' && !URL_SCHEME.test(input) && !existsSync(input)) {
      throw new MediaError('not-found', `media input not found: no file at ${JSON.stringify(input)}`);
    }
    if (input instanceof URL && input.protocol === 'file:' && !existsSync(input)) {
      throw new MediaError('not-found', `media input not found: no file at ${JSON.stringify(input.href)}`);
    }
    return new FfmpegProcess(binary, spec);
  }

  /** The ffmpeg process id while it runs. */
  get pid(): number | undefined {
    return (this.command as unknown as { ffmpegProc?: { pid?: number } }).ffmpegProc?.pid;
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Stops ffmpeg now (SIGKILL); `done` then resolves. Safe to call at any time, also before it has spawned. */
  kill(): void {
    if (this.exited || this.killed) return;
    this.killed = true;
    this.command.kill('SIGKILL');
  }

  private explain(err: Error & { code?: string }): MediaError {
    const what = describeInput(this.spec.input);
    const lines = [...this.stderr.tail];
    const text = lines.join('\n');
    const last = lines.filter((l) => !/^\s/.test(l)).slice(-2).join(' | ') || err.message;
    if (err.code === 'ENOENT' || err.code === 'EACCES' || /spawn .* (ENOENT|EACCES)/.test(err.message)) {
      return new MediaError('ffmpeg-missing', `ffmpeg could not be started from ${this.binary.path} (from ${this.binary.source}): ${err.message}`);
    }
    if (/No such file or directory/.test(text)) {
      return new MediaError('not-found', `media input not found: ${what} (${last})`, lines);
    }
    const noStream = /Stream map '[^']*' matches no streams|does not contain any stream/.test(text);
    if (noStream) {
      const kind = this.spec.expect ?? 'requested';
      return new MediaError('no-stream', `no ${kind} stream in ${what} (it has: ${this.stderr.describeInputStreams()})`, lines);
    }
    const unknown = /Unknown input format: '([^']*)'|Requested output format '([^']*)' is not a suitable output format|Unknown encoder '([^']*)'/.exec(text);
    if (unknown) {
      return new MediaError('unknown-format', `unknown format for ${what}: ${unknown[0]}`, lines);
    }
    // "Invalid argument" / "End of file" only count when ffmpeg says them about the input itself ("<input>: …"):
    // a bad filter or encoder option fails with the same words.
    const inputName = typeof this.spec.input === 'string' ? this.spec.input : this.spec.input instanceof URL ? this.spec.input.href : 'pipe:0';
    const aboutInput = lines.some((l) => l.startsWith(`${inputName}: `) && /: (Invalid argument|End of file|Invalid data found when processing input)$/.test(l));
    if (aboutInput || /Invalid data found when processing input|could not find codec parameters|moov atom not found|Failed to read frame size|Header missing|EBML header parsing failed/.test(text)) {
      return new MediaError('corrupt', `corrupt or unrecognised media data in ${what}: ${last}`, lines);
    }
    if (/Connection refused|Server returned|Failed to resolve hostname|HTTP error|Input\/output error/.test(text)) {
      return new MediaError('io', `cannot read ${what}: ${last}`, lines);
    }
    if (/Output stream (error|closed)|Input stream error/.test(err.message)) {
      return new MediaError('io', `${err.message} while ffmpeg processed ${what}`, lines);
    }
    return new MediaError('ffmpeg-failed', `ffmpeg failed on ${what}: ${last}`, lines);
  }
}
