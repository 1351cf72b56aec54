import type { NodeContext } from '@omniflow/core';
import { Observable } from 'rxjs';

/**
 * Bridges a pushed Observable into a pull-based AsyncIterable with a bounded buffer, for sinks that consume with
 * `for await` (WAV writer, encoder, PCM writer). When `capacity` items are waiting, the node's input is held
 * (`ctx.hold()`), so in a graph the upstream `block` queue fills and pausable sources stop; outside a graph the
 * buffer still bounds nothing (RxJS cannot be paused), which is why graphs are the place for slow sinks.
 *
 * ```ts
 * const { iterable } = pipeToIterable(audio$, ctx);
 * for await (const p of iterable) await writer.write(p.samples);
 * ```
 */
export function pipeToIterable<T>(input$: Observable<T>, ctx: Pick<NodeContext, 'hold'>, capacity = 8): { iterable: AsyncIterable<T>; cancel(): void } {
  const queue: T[] = [];
  let done = false;
  let failure: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  let release: (() => void) | undefined;
  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const subscription = input$.subscribe({
    next: (v) => {
      queue.push(v);
      if (queue.length >= capacity && !release) release = ctx.hold();
      notify();
    },
    error: (e) => {
      failure = { error: e };
      notify();
    },
    complete: () => {
      done = true;
      notify();
    },
  });
  async function* pull(): AsyncGenerator<T> {
    try {
      for (;;) {
        if (queue.length) {
          const v = queue.shift()!;
          if (release && queue.length < capacity / 2) {
            const r = release;
            release = undefined;
            r();
          }
          yield v;
          continue;
        }
        if (failure) throw failure.error;
        if (done) return;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      subscription.unsubscribe();
      release?.();
    }
  }
  return {
    iterable: pull(),
    cancel: () => {
      subscription.unsubscribe();
      release?.();
      release = undefined;
    },
  };
}

/**
 * Runs `consume` over the input as an AsyncIterable; the returned Observable emits its result and completes.
 *
 * ```ts
 * operator: (p, ctx) => (audio$) => sinkObservable(audio$, ctx, (packets) => writeWav(packets, p.path)),
 * ```
 */
export function sinkObservable<T, R>(input$: Observable<T>, ctx: Pick<NodeContext, 'hold'>, consume: (packets: AsyncIterable<T>) => Promise<R>): Observable<R> {
  return new Observable<R>((subscriber) => {
    const pipe = pipeToIterable(input$, ctx);
    let active = true;
    consume(pipe.iterable).then(
      (r) => {
        if (!active) return;
        subscriber.next(r);
        subscriber.complete();
      },
      (e) => active && subscriber.error(e),
    );
    return () => {
      active = false;
      pipe.cancel();
    };
  });
}

/** Per-subscription state for a packet transform: `push` returns what to emit now, `flush` what to emit at the end. */
export interface PacketTransform<I, O> {
  push(input: I): Iterable<O>;
  flush(): Iterable<O>;
  /** Releases what the state owns (tensors) when the stream stops early or fails. */
  dispose?(): void;
}

/**
 * An RxJS operator over a fresh {@link PacketTransform} per subscription: errors thrown by `push`/`flush` become
 * stream errors, and `dispose` runs however the stream ends.
 *
 * ```ts
 * operator: () => transformOperator(() => { const r = new Rechunker({ frames: 320 }); return { push: (a) => r.push(a), flush: () => r.flush() }; }),
 * ```
 */
export function transformOperator<I, O>(create: () => PacketTransform<I, O>): (input$: Observable<I>) => Observable<O> {
  return (input$) =>
    new Observable<O>((subscriber) => {
      let state: PacketTransform<I, O>;
      try {
        state = create();
      } catch (e) {
        subscriber.error(e);
        return;
      }
      const sub = input$.subscribe({
        next: (v) => {
          try {
            for (const o of state.push(v)) subscriber.next(o);
          } catch (e) {
            subscriber.error(e);
          }
        },
        error: (e) => subscriber.error(e),
        complete: () => {
          try {
            for (const o of state.flush()) subscriber.next(o);
            subscriber.complete();
          } catch (e) {
            subscriber.error(e);
          }
        },
      });
      return () => {
        sub.unsubscribe();
        state.dispose?.();
      };
    });
}
