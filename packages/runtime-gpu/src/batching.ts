import * as tf from '@tensorflow/tfjs-core';
import type { NodeContext, Packet, TensorPacket } from '@omniflow/core';
import { asyncScheduler, Observable, of, type OperatorFunction, type SchedulerLike, type Subscription } from 'rxjs';
import { forwardTensor } from './ownership.js';

/** Interactive sessions (a live conversation) are served before batch jobs (captioning files). */
export type SessionPriority = 'interactive' | 'batch';

/** Room downstream; core's `Demand` (a node's `ctx.demand`) has exactly this shape. */
export interface DownstreamDemand {
  readonly ready: boolean;
  whenReady(fn: () => void): void;
}

export interface BatchSchedulerOptions<I, O> {
  /** Most items in one run. */
  readonly maxBatch: number;
  /** How long the first waiting item may wait for others before a smaller batch runs (ms). */
  readonly maxWaitMs: number;
  /** Runs one batch; must return one output per item, in the same order. */
  readonly run: (items: I[], sessions: string[]) => O[] | Promise<O[]>;
  /** Most items one session may put in a batch (default: no limit). */
  readonly perSessionLimit?: number;
  /** A batch starts only while this is ready (the stage's downstream has room). */
  readonly demand?: DownstreamDemand;
  /** Timers; a virtual-time scheduler under test (default asyncScheduler). */
  readonly scheduler?: SchedulerLike;
  /** Name used in errors. */
  readonly name?: string;
}

interface Pending<I, O> {
  readonly item: I;
  readonly since: number;
  resolve(o: O): void;
  reject(e: Error): void;
}

interface SessionQueue<I, O> {
  priority: SessionPriority;
  items: Pending<I, O>[];
}

/** Counters of what a scheduler has done. */
export interface BatchStats {
  readonly batches: number;
  readonly items: number;
  readonly largestBatch: number;
  readonly waitingForDemand: number;
}

/**
 * Gathers work items from many sessions into batches: a batch runs when `maxBatch` items wait or
 * the oldest has waited `maxWaitMs`, one batch at a time, and only while `demand` is ready. Batches
 * are filled interactive sessions first, then batch jobs, round-robin across sessions, and each
 * session's items are taken first-in first-out, so every session gets its results in order.
 *
 * ```ts
 * const sched = new BatchScheduler({ maxBatch: 8, maxWaitMs: 5, run: (xs) => decodeStep(xs) });
 * const next = await sched.submit('alice', tokenState);           // interactive
 * await sched.submit('job-17', chunk, 'batch');                   // served after interactive work
 * ```
 */
export class BatchScheduler<I, O> {
  private readonly sessions = new Map<string, SessionQueue<I, O>>();
  private readonly scheduler: SchedulerLike;
  private timer: Subscription | undefined;
  private running = false;
  private waitingDemand = false;
  private closed = false;
  private counts = { batches: 0, items: 0, largestBatch: 0, waitingForDemand: 0 };

  constructor(private readonly options: BatchSchedulerOptions<I, O>) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1) throw new Error(`BatchScheduler${this.label}: maxBatch must be a positive integer, got ${options.maxBatch}`);
    if (!(options.maxWaitMs >= 0)) throw new Error(`BatchScheduler${this.label}: maxWaitMs must be >= 0, got ${options.maxWaitMs}`);
    this.scheduler = options.scheduler ?? asyncScheduler;
  }

  private get label(): string {
    return this.options.name ? ` '${this.options.name}'` : '';
  }

  /**
   * Queues one item for `session`; resolves with its output once its batch has run. An aborted
   * `signal` (an interrupted turn) withdraws the item if its batch has not started, and rejects.
   */
  submit(session: string, item: I, priority: SessionPriority = 'interactive', signal?: AbortSignal): Promise<O> {
    if (this.closed) return Promise.reject(new Error(`BatchScheduler${this.label} is closed`));
    if (signal?.aborted) return Promise.reject(new Error(`BatchScheduler${this.label}: aborted before it was queued`));
    return new Promise<O>((resolve, reject) => {
      let q = this.sessions.get(session);
      if (!q) this.sessions.set(session, (q = { priority, items: [] }));
      // A session's class is what it last asked for: a job turning interactive moves up at once.
      q.priority = priority;
      const onAbort = () => {
        const queue = this.sessions.get(session);
        const at = queue ? queue.items.indexOf(pending) : -1;
        if (at < 0) return; // already running: its result is delivered, the caller drops it
        queue!.items.splice(at, 1);
        reject(new Error(`BatchScheduler${this.label}: aborted while waiting`));
      };
      const pending: Pending<I, O> = {
        item,
        since: this.scheduler.now(),
        resolve: (o) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(o);
        },
        reject: (e) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      q.items.push(pending);
      this.poke();
    });
  }

  /** Items waiting (not yet in a running batch). */
  get pending(): number {
    let n = 0;
    for (const q of this.sessions.values()) n += q.items.length;
    return n;
  }

  get stats(): BatchStats {
    return { ...this.counts };
  }

  /** Rejects everything still waiting and accepts nothing more; a running batch still completes. */
  close(reason = 'closed'): void {
    this.closed = true;
    this.timer?.unsubscribe();
    for (const q of this.sessions.values()) for (const p of q.items) p.reject(new Error(`BatchScheduler${this.label}: ${reason}`));
    this.sessions.clear();
  }

  /** Decides whether to run now, later (timer) or when downstream has room. */
  private poke(): void {
    if (this.running || this.closed) return;
    const waiting = this.pending;
    if (waiting === 0) return;
    const oldest = Math.min(...[...this.sessions.values()].filter((q) => q.items.length).map((q) => q.items[0].since));
    const waited = this.scheduler.now() - oldest;
    if (waiting < this.options.maxBatch && waited < this.options.maxWaitMs) {
      if (!this.timer || this.timer.closed) {
        this.timer = this.scheduler.schedule(() => {
          this.timer = undefined;
          this.poke();
        }, this.options.maxWaitMs - waited);
      }
      return;
    }
    const demand = this.options.demand;
    if (demand && !demand.ready) {
      if (!this.waitingDemand) {
        this.waitingDemand = true;
        this.counts.waitingForDemand++;
        demand.whenReady(() => {
          this.waitingDemand = false;
          this.poke();
        });
      }
      return;
    }
    this.timer?.unsubscribe();
    this.timer = undefined;
    void this.runBatch(this.take());
  }

  /** Up to maxBatch items: interactive sessions first, round-robin, FIFO within a session. */
  private take(): Array<{ session: string; p: Pending<I, O> }> {
    const out: Array<{ session: string; p: Pending<I, O> }> = [];
    const limit = this.options.perSessionLimit ?? Infinity;
    for (const cls of ['interactive', 'batch'] as const) {
      const queues = [...this.sessions.entries()].filter(([, q]) => q.priority === cls && q.items.length);
      const taken = new Map<string, number>();
      let progress = true;
      while (out.length < this.options.maxBatch && progress) {
        progress = false;
        for (const [session, q] of queues) {
          if (out.length >= this.options.maxBatch) break;
          const t = taken.get(session) ?? 0;
          if (!q.items.length || t >= limit) continue;
          out.push({ session, p: q.items.shift()! });
          taken.set(session, t + 1);
          progress = true;
        }
      }
    }
    for (const [s, q] of this.sessions) if (!q.items.length) this.sessions.delete(s);
    return out;
  }

  private async runBatch(batch: Array<{ session: string; p: Pending<I, O> }>): Promise<void> {
    this.running = true;
    this.counts.batches++;
    this.counts.items += batch.length;
    this.counts.largestBatch = Math.max(this.counts.largestBatch, batch.length);
    try {
      const outs = await this.options.run(
        batch.map((b) => b.p.item),
        batch.map((b) => b.session),
      );
      if (!Array.isArray(outs) || outs.length !== batch.length) throw new Error(`run returned ${Array.isArray(outs) ? outs.length : typeof outs} outputs for a batch of ${batch.length}`);
      batch.forEach((b, i) => b.p.resolve(outs[i]));
    } catch (err) {
      const e = new Error(`BatchScheduler${this.label}: batch of ${batch.length} (sessions ${[...new Set(batch.map((b) => b.session))].join(', ')}) failed: ${(err as Error).message}`, { cause: err });
      for (const b of batch) b.p.reject(e);
    } finally {
      this.running = false;
      this.poke();
    }
  }
}

/** Options of {@link tensorBatchScheduler}. */
export interface TensorBatchSchedulerOptions extends Omit<BatchSchedulerOptions<tf.Tensor, tf.Tensor>, 'run'> {
  /**
   * The batched computation: `x` stacks the items on a new axis 0 (`[B, ...shape]`); return `[B, ...]`.
   * Runs inside one tf.tidy.
   */
  readonly run: (x: tf.Tensor) => tf.Tensor;
}

/**
 * A BatchScheduler over tensors: items (all of one shape) are stacked, run once, and unstacked; each
 * caller gets its own row as a fresh tensor it owns. Inputs are not disposed.
 *
 * ```ts
 * const shared = tensorBatchScheduler({ maxBatch: 8, maxWaitMs: 5, run: (x) => tf.matMul(x, w) });
 * const y = await shared.submit('alice', h); // h: [2048] -> y: [out]
 * ```
 */
export function tensorBatchScheduler(options: TensorBatchSchedulerOptions): BatchScheduler<tf.Tensor, tf.Tensor> {
  return new BatchScheduler<tf.Tensor, tf.Tensor>({
    ...options,
    run: (xs) => {
      const shape = xs[0].shape;
      const bad = xs.findIndex((x) => x.shape.length !== shape.length || x.shape.some((d, i) => d !== shape[i]));
      if (bad >= 0) throw new Error(`tensors in one batch must share a shape: [${shape}] vs [${xs[bad].shape}]`);
      return tf.tidy(() => {
        const y = options.run(tf.stack(xs));
        if (y.shape[0] !== xs.length) throw new Error(`run returned shape [${y.shape}] for a batch of ${xs.length}`);
        return tf.unstack(y);
      });
    },
  });
}

/**
 * The body of a graph node whose sessions share one batch scheduler: each tensor packet of this
 * node's session is submitted (one at a time, through `ctx.mapAsync`, so the node holds its input
 * while it waits — lossless backpressure), and the result is forwarded in the same envelope. A packet
 * of an interrupted turn is withdrawn from the queue, or its result dropped. Other packets pass in order.
 *
 * ```ts
 * const shared = tensorBatchScheduler({ maxBatch: 8, maxWaitMs: 5, run: (x) => tf.matMul(x, w) });
 * const step = defineNode({ type: 'step', inputs, outputs, operator: (_p, ctx) => batchedTensors(shared, ctx) });
 * ```
 */
export function batchedTensors<P extends Packet = Packet>(scheduler: BatchScheduler<tf.Tensor, tf.Tensor>, ctx: Pick<NodeContext, 'session' | 'mapAsync'>, priority: SessionPriority = 'interactive'): OperatorFunction<P, P> {
  return ctx.mapAsync<P, P>((p, signal) => {
    if (p.kind !== 'tensor') return of(p);
    return new Observable<P>((sub) => {
      scheduler.submit(ctx.session, p.tensor as unknown as tf.Tensor, priority, signal).then(
        (y) => {
          if (signal.aborted) y.dispose();
          else sub.next(forwardTensor(p as TensorPacket, y) as Packet as P);
          sub.complete();
        },
        (err: Error) => (signal.aborted ? sub.complete() : sub.error(err)),
      );
    });
  });
}

export interface TensorBatchOptions {
  readonly maxBatch: number;
  readonly maxWaitMs: number;
  /**
   * The batched computation: `x` stacks the packets' tensors on a new axis 0 (`[B, ...shape]`); return
   * `[B, ...]`. Runs inside one tf.tidy.
   */
  readonly run: (x: tf.Tensor) => tf.Tensor;
  /** Class of each session (default: every session is interactive). */
  readonly priority?: (session: string) => SessionPriority;
  readonly perSessionLimit?: number;
  readonly demand?: DownstreamDemand;
  readonly scheduler?: SchedulerLike;
  readonly name?: string;
}

/**
 * An RxJS stage that batches tensor packets across sessions: packets from many sessions (merged into
 * one stream) are stacked, run once, split back, and emitted in each session's own order — other
 * packets of a session (control, text) keep their place among its tensor packets. Input tensors are
 * disposed; outputs are owned by the emitted packets.
 *
 * ```ts
 * merge(alice$, bob$).pipe(tensorBatchStage({ maxBatch: 8, maxWaitMs: 5, run: (x) => tf.matMul(x, w) }));
 * ```
 */
export function tensorBatchStage(options: TensorBatchOptions): OperatorFunction<Packet, Packet> {
  return (input$) =>
    new Observable<Packet>((subscriber) => {
      const sched = tensorBatchScheduler({
        maxBatch: options.maxBatch,
        maxWaitMs: options.maxWaitMs,
        perSessionLimit: options.perSessionLimit,
        demand: options.demand,
        scheduler: options.scheduler,
        name: options.name,
        run: options.run,
      });
      // Per session: results in arrival order, whatever order their promises settle in.
      const order = new Map<string, Array<{ done: boolean; out?: Packet }>>();
      let inFlight = 0;
      let inputDone = false;
      const flush = (session: string) => {
        const q = order.get(session)!;
        while (q.length && q[0].done) subscriber.next(q.shift()!.out!);
        if (!q.length) order.delete(session);
        if (inputDone && inFlight === 0) subscriber.complete();
      };
      const sub = input$.subscribe({
        next: (p) => {
          let q = order.get(p.session);
          if (!q) order.set(p.session, (q = []));
          const slot: { done: boolean; out?: Packet } = { done: false };
          q.push(slot);
          if (p.kind !== 'tensor') {
            slot.done = true;
            slot.out = p;
            flush(p.session);
            return;
          }
          inFlight++;
          sched.submit(p.session, p.tensor as unknown as tf.Tensor, options.priority?.(p.session) ?? 'interactive').then(
            (y) => {
              inFlight--;
              slot.done = true;
              slot.out = forwardTensor(p as TensorPacket, y);
              flush(p.session);
            },
            (err: Error) => {
              inFlight--;
              p.tensor.dispose();
              subscriber.error(err);
            },
          );
        },
        error: (e) => subscriber.error(e),
        complete: () => {
          inputDone = true;
          if (inFlight === 0) subscriber.complete();
        },
      });
      return () => {
        sub.unsubscribe();
        sched.close('stage unsubscribed');
      };
    });
}
