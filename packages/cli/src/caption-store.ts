import { closeSync, existsSync, fsyncSync, ftruncateSync, openSync, readFileSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import type { CaptionJobOptions, CaptionSegment } from '@omniflow/nodes';

/** One line of a caption JSONL file: a captioned file, or a file that could not be captioned. */
export type CaptionRecord = CaptionOkRecord | CaptionErrorRecord;

interface RecordBase {
  /** Absolute path of the input file. */
  readonly path: string;
  /** Model id (`name@hash`) that wrote it. */
  readonly model: string;
  readonly options: CaptionJobOptions;
  /** `captionOptionsHash(options, model)`: the resume key together with `path`. */
  readonly optionsHash: string;
  /** Wall-clock seconds spent on this file. */
  readonly elapsed: number;
  readonly finishedAt: string;
  /** Which process wrote it: `host:pid`, or the BullMQ job id for queue runs. */
  readonly by: string;
}

export interface CaptionOkRecord extends RecordBase {
  readonly status: 'ok';
  /** Seconds of audio. */
  readonly duration: number;
  readonly segments: readonly CaptionSegment[];
  readonly summary: string;
}

export interface CaptionErrorRecord extends RecordBase {
  readonly status: 'error';
  readonly error: { readonly reason: string; readonly message: string };
}

const keyOf = (path: string, optionsHash: string) => `${optionsHash}\u0000${path}`;

/**
 * An append-only JSONL file of caption records that a killed run can resume from. Opening it reads every
 * complete line; a torn last line (the process died mid-write) is cut off, so the next record starts on a
 * line of its own. Each record is written with one `write` and flushed to disk before the file counts as
 * done. A lock file (`<file>.lock`, holding the pid) stops two runs from appending to one file; the lock of
 * a dead process is taken over.
 *
 * ```ts
 * const store = CaptionStore.open('captions.jsonl');
 * if (!store.get('/data/a.wav', hash)) store.append(record);
 * store.close();
 * ```
 */
export class CaptionStore {
  private readonly done = new Map<string, CaptionRecord>();
  private fd: number | undefined;
  /** Lines that were not valid records (kept in the file, ignored for resuming). */
  readonly skippedLines: number;
  /** Bytes of a torn last line removed when the file was opened. */
  readonly repairedBytes: number;

  private constructor(
    readonly file: string,
    private readonly lockFile: string,
  ) {
    let text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    let repaired = 0;
    const lastNewline = text.lastIndexOf('\n');
    if (text.length > 0 && lastNewline !== text.length - 1) {
      repaired = Buffer.byteLength(text.slice(lastNewline + 1));
      text = text.slice(0, lastNewline + 1);
    }
    let skipped = 0;
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const rec = parseRecord(line);
      if (rec) this.done.set(keyOf(rec.path, rec.optionsHash), rec);
      else skipped += 1;
    }
    this.skippedLines = skipped;
    this.repairedBytes = repaired;
    this.fd = openSync(file, 'a');
    if (repaired > 0) ftruncateSync(this.fd, Buffer.byteLength(text));
  }

  /** Opens (or creates) `file` for appending, after taking its lock. */
  static open(file: string): CaptionStore {
    const lockFile = `${file}.lock`;
    takeLock(lockFile, file);
    try {
      return new CaptionStore(file, lockFile);
    } catch (err) {
      releaseLock(lockFile);
      throw err;
    }
  }

  /** The record already written for this file with these options, if any. */
  get(path: string, optionsHash: string): CaptionRecord | undefined {
    return this.done.get(keyOf(path, optionsHash));
  }

  /** Number of distinct (file, options) records. */
  get size(): number {
    return this.done.size;
  }

  append(record: CaptionRecord): void {
    if (this.fd === undefined) throw new Error(`caption output ${this.file}: already closed`);
    writeSync(this.fd, JSON.stringify(record) + '\n');
    fsyncSync(this.fd);
    this.done.set(keyOf(record.path, record.optionsHash), record);
  }

  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
    releaseLock(this.lockFile);
  }
}

function parseRecord(line: string): CaptionRecord | undefined {
  try {
    const r = JSON.parse(line) as Partial<CaptionRecord>;
    if (typeof r.path === 'string' && typeof r.optionsHash === 'string' && (r.status === 'ok' || r.status === 'error')) return r as CaptionRecord;
  } catch {
    // not JSON: counted as a skipped line
  }
  return undefined;
}

function takeLock(lockFile: string, file: string): void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(lockFile, String(process.pid), { flag: 'wx' });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`caption output ${file}: cannot create lock ${lockFile}: ${(err as Error).message}`, { cause: err });
    }
    const pid = Number(readFileSync(lockFile, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
      throw new Error(`caption output ${file}: another omniflow run (pid ${pid}) is writing it (lock ${lockFile})`);
    }
    unlinkSync(lockFile); // left by a process that died: take it over
  }
  throw new Error(`caption output ${file}: could not take lock ${lockFile}`);
}

function releaseLock(lockFile: string): void {
  try {
    if (readFileSync(lockFile, 'utf8').trim() === String(process.pid)) unlinkSync(lockFile);
  } catch {
    // already gone
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
