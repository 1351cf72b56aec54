import cliProgress from 'cli-progress';
import type { CaptionProgressEvent } from './caption-run.js';

export interface ProgressOptions {
  readonly total: number;
  /** Draw the bar (default: when stderr is a terminal). Off, a line per file goes to stderr instead when `verbose`. */
  readonly enabled?: boolean;
  readonly verbose?: boolean;
  readonly stream?: NodeJS.WriteStream;
}

/**
 * The caption progress bar: files done of total, hours of audio done, speed as a multiple of real time
 * (audio seconds captioned per wall second) and ETA, drawn with cli-progress on stderr. Files skipped
 * on resume count as done but not towards speed, so the ETA reflects this run's pace.
 *
 * ```ts
 * const progress = new CaptionProgress({ total: files.length });
 * await captionFiles(files, store, { ...run, onFile: (e) => progress.update(e) });
 * progress.stop();
 * ```
 */
export class CaptionProgress {
  private readonly bar: cliProgress.SingleBar | undefined;
  private readonly started = performance.now();
  private done = 0;
  private failed = 0;
  private audioSeconds = 0;
  private readonly stream: NodeJS.WriteStream;
  private barStarted = false;

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
    const enabled = options.enabled ?? Boolean(this.stream.isTTY);
    if (enabled) {
      this.bar = new cliProgress.SingleBar(
        {
          format: 'captioning {bar} {value}/{total} files | {hours} h audio | {speed}x real time | ETA {eta_formatted} | {failed} failed',
          stream: this.stream,
          hideCursor: true,
          etaBuffer: 20,
          fps: 5,
          noTTYOutput: !this.stream.isTTY,
          notTTYSchedule: 5000,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  // Started at the first file this run really works on, so files skipped on resume do not skew the ETA.
  private ensureStarted(): void {
    if (this.bar && !this.barStarted) {
      this.barStarted = true;
      this.bar.start(this.options.total, this.done, this.payload());
    }
  }

  update(event: CaptionProgressEvent): void {
    this.done += 1;
    if (event.record.status === 'error') this.failed += 1;
    if (!event.skipped && event.record.status === 'ok') this.audioSeconds += event.record.duration;
    if (this.bar) {
      if (!event.skipped) this.ensureStarted();
      if (this.barStarted) this.bar.update(this.done, this.payload());
    }
    else if (this.options.verbose) {
      const r = event.record;
      const what = event.skipped ? 'skipped (done before)' : r.status === 'ok' ? `ok ${r.duration.toFixed(1)} s audio` : `error: ${r.error.message}`;
      this.stream.write(`[${this.done}/${this.options.total}] ${r.path}: ${what}\n`);
    }
  }

  /** Audio hours done, and speed as a multiple of real time, so far in this run. */
  get figures(): { hours: number; speed: number } {
    const wall = (performance.now() - this.started) / 1000;
    return { hours: this.audioSeconds / 3600, speed: wall > 0 ? this.audioSeconds / wall : 0 };
  }

  stop(): void {
    this.ensureStarted();
    this.bar?.stop();
  }

  private payload() {
    const { hours, speed } = this.figures;
    return { hours: hours.toFixed(hours < 10 ? 3 : 1), speed: speed.toFixed(1), failed: this.failed };
  }
}
