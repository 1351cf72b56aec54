/**
 * What a node sees of the world while it runs: its session and turn, the current turn's AbortSignal,
 * the media clock, demand, disposers and metrics hooks. The graph runtime and the standalone operator
 * form both hand nodes a {@link NodeContext}.
 */
import { BehaviorSubject, from, Observable, asyncScheduler, type ObservableInput, type OperatorFunction, type SchedulerLike, type Subscription } from 'rxjs';
import type { Demand } from './demand.js';
import { disposePacket, type Micros, type Packet } from './packets.js';

export type RunMode = 'realtime' | 'batch' | 'standalone';

/** Counters and observations a node may report; they show up in the session's metrics report. */
export interface MetricsHooks {
  /** Adds `n` (default 1) to the node's custom counter `name`. */
  count(name: string, n?: number): void;
  /** Records `value` into the node's custom histogram `name` (e.g. milliseconds of a model step). */
  observe(name: string, value: number): void;
}

export interface NodeContext {
  /** Node id in the graph (the node type when used as a plain operator). */
  readonly node: string;
  /** Node type, e.g. 'melFeatures'. */
  readonly type: string;
  /** Session id. */
  readonly session: string;
  /** Current turn epoch of the session; bumped by every interrupt. */
  readonly turn: number;
  /** AbortSignal of the current turn: aborted when the turn is interrupted or the session ends. */
  readonly signal: AbortSignal;
  /** Turn epochs, starting with the current one. */
  readonly turns$: Observable<number>;
  readonly mode: RunMode;
  /** Scheduler for timers; a virtual-time scheduler under the test harness. */
  readonly scheduler: SchedulerLike;
  /** Media clock: microseconds since the session started (virtual under the test harness). */
  now(): Micros;
  /** Room downstream (graph only): sources pull their next item only while `demand.ready`. */
  readonly demand: Demand | undefined;
  /** Registers cleanup that runs once when the node stops (complete, error or unsubscribe). */
  onDispose(fn: () => void): void;
  /**
   * Pauses delivery of further input packets to this node until the returned release function is
   * called. This is how a node that works asynchronously applies backpressure upstream.
   */
  hold(): () => void;
  /**
   * Like RxJS `mergeMap(fn, concurrency)`, but lossless backpressure-aware inside a graph: while
   * `concurrency` calls are in flight the node holds its input, so nothing piles up inside it. A call
   * started in a turn that is then interrupted is aborted (`signal`), whatever its value is (a packet, or
   * a node's own turn object), unless the value is a packet marked `uninterruptible`; input packets of an
   * aborted call are disposed if nothing was emitted for them yet. Each call gets its own AbortSignal when `fn` declares the second
   * parameter; otherwise it is handed the turn's signal and nothing is allocated for it.
   */
  mapAsync<A, B>(fn: (value: A, signal: AbortSignal) => ObservableInput<B>, options?: { concurrency?: number }): OperatorFunction<A, B>;
  readonly metrics: MetricsHooks;
}

/** Reason carried by the AbortSignal of an interrupted turn. */
export class TurnInterruptedError extends Error {
  constructor(
    readonly session: string,
    readonly turn: number,
    reason?: string,
  ) {
    super(`turn ${turn} of session ${session} was interrupted${reason ? `: ${reason}` : ''}`);
    this.name = 'TurnInterruptedError';
  }
}

/** The turn epochs of one session. */
export class TurnState {
  epoch = 0;
  private controller = new AbortController();
  readonly turns: BehaviorSubject<number> = new BehaviorSubject(0);
  constructor(readonly session: string) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Starts a new turn: aborts the current turn's signal, then announces the new epoch. */
  bump(reason?: string): number {
    const old = this.controller;
    this.controller = new AbortController();
    this.epoch++;
    old.abort(new TurnInterruptedError(this.session, this.epoch - 1, reason));
    this.turns.next(this.epoch);
    return this.epoch;
  }

  close(reason = 'session ended'): void {
    this.controller.abort(new TurnInterruptedError(this.session, this.epoch, reason));
    this.turns.complete();
  }
}

const noMetrics: MetricsHooks = { count: () => undefined, observe: () => undefined };

/** True when `value` is a packet marked to survive interrupts. */
function isUninterruptible(value: unknown): boolean {
  return typeof value === 'object' && value !== null && (value as { uninterruptible?: unknown }).uninterruptible === true;
}

/** True when `value` is a packet of a turn older than `epoch` that an interrupt may discard. */
export function isStale(value: unknown, epoch: number): boolean {
  const p = value as Packet;
  return typeof p === 'object' && p !== null && typeof p.turn === 'number' && typeof p.kind === 'string' && p.turn < epoch && !p.uninterruptible;
}

export interface ContextOptions {
  node: string;
  type: string;
  turns: TurnState;
  mode: RunMode;
  scheduler?: SchedulerLike;
  /** Scheduler time (ms) that maps to media time 0 (default: when the context is made). */
  clockOrigin?: number;
  /** Media clock to use instead (the session's, which starts at `start()`). */
  clock?: () => Micros;
  demand?: Demand;
  metrics?: MetricsHooks;
  /** Releases a packet the node gives up (the runtime counts shares of fanned-out packets). */
  release?: (p: Packet) => void;
}

/** The runtime's implementation of {@link NodeContext}. */
export class RunContext implements NodeContext {
  readonly node: string;
  readonly type: string;
  readonly mode: RunMode;
  readonly scheduler: SchedulerLike;
  readonly demand: Demand | undefined;
  readonly metrics: MetricsHooks;
  /** Number of outstanding holds; the node receives input only while it is 0. */
  holds = 0;
  /** Called when the last hold is released (the runtime re-drains the node's inputs). */
  onRelease: (() => void) | undefined;
  private readonly turnState: TurnState;
  private readonly clockOrigin: number;
  private readonly clock: (() => Micros) | undefined;
  private readonly release: (p: Packet) => void;
  private disposers: Array<() => void> = [];
  private disposed = false;

  constructor(o: ContextOptions) {
    this.node = o.node;
    this.type = o.type;
    this.turnState = o.turns;
    this.mode = o.mode;
    this.scheduler = o.scheduler ?? asyncScheduler;
    this.clockOrigin = o.clockOrigin ?? this.scheduler.now();
    this.clock = o.clock;
    this.demand = o.demand;
    this.metrics = o.metrics ?? noMetrics;
    this.release = o.release ?? disposePacket;
  }

  /** Gives up a value the node owns: packets are released (disposed unless shared by a fan-out). */
  private drop(value: unknown): void {
    const p = value as Packet;
    if (typeof p === 'object' && p !== null && typeof p.kind === 'string') this.release(p);
  }

  get session(): string {
    return this.turnState.session;
  }
  get turn(): number {
    return this.turnState.epoch;
  }
  get signal(): AbortSignal {
    return this.turnState.signal;
  }
  get turns$(): Observable<number> {
    return this.turnState.turns;
  }
  now(): Micros {
    return this.clock ? this.clock() : Math.round((this.scheduler.now() - this.clockOrigin) * 1000);
  }

  onDispose(fn: () => void): void {
    if (this.disposed) fn();
    else this.disposers.push(fn);
  }

  hold(): () => void {
    this.holds++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds === 0) this.onRelease?.();
    };
  }

  mapAsync<A, B>(fn: (value: A, signal: AbortSignal) => ObservableInput<B>, options: { concurrency?: number } = {}): OperatorFunction<A, B> {
    const concurrency = options.concurrency ?? 1;
    if (!(concurrency >= 1)) throw new Error(`${this.node}: mapAsync concurrency must be >= 1, got ${concurrency}`);
    const wantsSignal = fn.length >= 2;
    return (source) =>
      new Observable<B>((subscriber) => {
        interface Job {
          value: A;
          /** Turn epoch when the job started: an interrupt past it aborts the job, whatever `value` is. */
          turn: number;
          /** Only when `fn` declares the signal parameter. */
          controller: AbortController | undefined;
          emitted: boolean;
          sub?: Subscription;
          done: boolean;
        }
        const active = new Set<Job>();
        let release: (() => void) | undefined;
        let sourceDone = false;

        const finish = (job: Job): void => {
          if (job.done) return;
          job.done = true;
          active.delete(job);
          if (release && active.size < concurrency) {
            const r = release;
            release = undefined;
            r();
          }
          if (sourceDone && active.size === 0) subscriber.complete();
        };
        const abort = (job: Job): void => {
          job.controller?.abort(this.signal.reason);
          job.sub?.unsubscribe();
          if (!job.emitted) this.drop(job.value);
          finish(job);
        };

        const turnSub = this.turns$.subscribe((epoch) => {
          for (const job of [...active]) if (job.turn < epoch && !isUninterruptible(job.value)) abort(job);
        });
        const outer = source.subscribe({
          next: (value) => {
            if (isStale(value, this.turn)) {
              this.drop(value);
              return;
            }
            // An AbortController per call only when fn takes the signal: it is the costliest allocation here.
            const controller = wantsSignal ? new AbortController() : undefined;
            const job: Job = { value, turn: this.turn, controller, emitted: false, done: false };
            active.add(job);
            if (active.size >= concurrency && !release) release = this.hold();
            let inner$: Observable<B>;
            try {
              inner$ = from(fn(value, controller ? controller.signal : this.signal));
            } catch (e) {
              subscriber.error(e);
              return;
            }
            const sub = inner$.subscribe({
              next: (b) => {
                job.emitted = true;
                subscriber.next(b);
              },
              error: (e) => subscriber.error(e),
              complete: () => finish(job),
            });
            if (!job.done) job.sub = sub;
          },
          error: (e) => subscriber.error(e),
          complete: () => {
            sourceDone = true;
            if (active.size === 0) subscriber.complete();
          },
        });
        return () => {
          outer.unsubscribe();
          turnSub.unsubscribe();
          for (const job of [...active]) {
            job.controller?.abort(new Error(`${this.node}: stopped`));
            job.sub?.unsubscribe();
            if (!job.emitted) this.drop(job.value);
            job.done = true;
          }
          active.clear();
          const r = release;
          release = undefined;
          r?.();
        };
      });
  }

  /** Runs the disposers (last registered first), once. Errors are collected and rethrown together. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const errors: unknown[] = [];
    for (const fn of this.disposers.reverse()) {
      try {
        fn();
      } catch (e) {
        errors.push(e);
      }
    }
    this.disposers = [];
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${this.node}: ${errors.length} disposers failed`);
  }
}
