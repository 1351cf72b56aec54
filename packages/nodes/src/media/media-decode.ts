import { PassThrough } from 'node:stream';
import type { Micros } from '@omniflow/core';
import { FfmpegProcess, MediaError, type MediaInput } from './ffmpeg-process.js';
import type { MediaInfo } from './media-info.js';

/** A single-use, pull-based decode: iterate it once; `info` and `pid` describe the ffmpeg behind it. */
export interface MediaDecode<P> extends AsyncIterable<P> {
  /** Streams ffmpeg reported (inputs and the output it produces); settles when decoding starts or ends. */
  readonly info: Promise<MediaInfo>;
  /** Process id of the running ffmpeg (undefined before the first pull and after it exited). */
  readonly pid: number | undefined;
  /** Stops ffmpeg (also done automatically when the iteration ends early). */
  close(): void;
}

/** The options decodeAudio and decodeVideo share: how ffmpeg reads the input, and the packets' stamps. */
export interface DecodeInputOptions {
  /** Container/codec of the input when ffmpeg cannot guess it (`-f`), e.g. for raw PCM on a pipe. */
  readonly inputFormat?: string;
  /** Extra options before `-i` (e.g. `['-ar', '8000', '-ac', '2']` for raw input). */
  readonly inputOptions?: readonly string[];
  readonly ffmpegPath?: string;
  /** Bytes ffmpeg may run ahead of the consumer before it is paused (plus the OS pipe). Default 64 KiB. */
  readonly highWaterMark?: number;
  readonly session?: string;
  readonly turn?: number;
  /** pts of the first packet, microseconds. Default 0. */
  readonly startPts?: Micros;
}

/** What a decode's packet loop reads from: the running ffmpeg and its raw output. */
export interface DecodeRun {
  readonly proc: FfmpegProcess;
  /** ffmpeg's raw output (stdout). */
  readonly out: PassThrough;
  /** Settles `info` with the streams ffmpeg has reported so far (later calls do nothing). */
  reportInfo(): void;
}

/**
 * Runs one ffmpeg decode behind a {@link MediaDecode} handle: starts ffmpeg on the first pull, lets `packets` turn
 * its raw output into packets, raises ffmpeg's own failure after the last packet, and kills ffmpeg when the loop
 * ends (completed, failed or left early). Internal to the media folder; decodeAudio and decodeVideo are built on it.
 *
 * ```ts
 * const d = mediaDecode('decodeBytes', 'clip.wav', {}, 'audio', ['-f', 'u8'], async function* ({ out }) {
 *   for await (const b of out) yield b as Buffer;
 * });
 * ```
 */
export function mediaDecode<P>(
  caller: string,
  input: MediaInput,
  options: DecodeInputOptions,
  expect: 'audio' | 'video',
  outputOptions: readonly string[],
  packets: (run: DecodeRun) => AsyncGenerator<P>,
): MediaDecode<P> {
  let proc: FfmpegProcess | undefined;
  let resolveInfo!: (i: MediaInfo) => void;
  const info = new Promise<MediaInfo>((r) => (resolveInfo = r));
  let started = false;

  async function* run(): AsyncGenerator<P> {
    if (started) throw new Error(`${caller}: this decode was already iterated; call ${caller}() again to decode again`);
    started = true;
    // autoDestroy off: a PassThrough that closes itself at end of data makes fluent-ffmpeg report 'Output stream
    // closed' when ffmpeg's exit lags the close by over 20 ms (it does on a busy machine); `finally` destroys it.
    const out = new PassThrough({ highWaterMark: options.highWaterMark ?? 64 * 1024, autoDestroy: false });
    try {
      proc = FfmpegProcess.start({
        input,
        expect,
        ffmpegPath: options.ffmpegPath,
        inputOptions: [...(options.inputFormat ? ['-f', options.inputFormat] : []), ...(options.inputOptions ?? [])],
        outputOptions,
        output: out,
      });
    } catch (err) {
      resolveInfo({ inputs: [], outputs: [] });
      throw err;
    }
    const p = proc;
    // Surface ffmpeg's own failure even if it ends stdout first; a rejected `done` must never go unhandled.
    const failed = p.done.then(
      () => undefined,
      (e: MediaError) => e,
    );
    try {
      yield* packets({ proc: p, out, reportInfo: () => resolveInfo(p.stderr.info) });
      const err = await failed;
      if (err) throw err;
    } finally {
      p.kill();
      out.destroy();
    }
  }

  const iterable = run();
  return {
    [Symbol.asyncIterator]: () => iterable,
    info,
    get pid() {
      return proc?.running ? proc.pid : undefined;
    },
    close() {
      proc?.kill();
      void iterable.return(undefined);
    },
  };
}
