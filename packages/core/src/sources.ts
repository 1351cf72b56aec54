/**
 * Pausable sources: Observables over pull-based producers that only take the next item while the
 * downstream queue has room (see {@link Demand}). Inside a graph they capture the node's demand when they
 * are subscribed; outside a graph they run as fast as their consumer.
 */
import { Observable } from 'rxjs';
import { currentDemand, type Demand } from './demand.js';

export interface PausableOptions {
  /** Demand to follow; defaults to the ambient demand of the node being subscribed. */
  demand?: Demand;
}

/**
 * An Observable that pulls `iterable` (sync or async) one item at a time, and stops pulling while the
 * downstream `block` queue is full. Unsubscribing calls the iterator's `return()` (closing generators).
 *
 * ```ts
 * async function* chunks() { for (let i = 0; i < 3; i++) yield textPacket({ text: `chunk ${i}`, pts: i }); }
 * fromAsyncIterable(chunks()).subscribe((p) => console.log(p.text));
 * ```
 */
export function fromAsyncIterable<T>(iterable: AsyncIterable<T> | Iterable<T>, options: PausableOptions = {}): Observable<T> {
  return new Observable<T>((subscriber) => {
    const demand = options.demand ?? currentDemand();
    let closed = false;
    const waitForRoom = (): Promise<void> => new Promise<void>((resolve) => demand!.whenReady(resolve));

    if (Symbol.iterator in iterable && !(Symbol.asyncIterator in iterable)) {
      // Synchronous iterables are emitted synchronously while there is room: no Promise per item.
      const it = (iterable as Iterable<T>)[Symbol.iterator]();
      const pump = (): void => {
        try {
          while (!closed) {
            if (demand && !demand.ready) {
              demand.whenReady(pump);
              return;
            }
            const r = it.next();
            if (r.done) {
              subscriber.complete();
              return;
            }
            subscriber.next(r.value);
          }
        } catch (e) {
          subscriber.error(e);
        }
      };
      pump();
      return () => {
        closed = true;
        it.return?.();
      };
    }

    const it = (iterable as AsyncIterable<T>)[Symbol.asyncIterator]();
    const pump = async (): Promise<void> => {
      try {
        while (!closed) {
          if (demand && !demand.ready) {
            await waitForRoom();
            continue;
          }
          const r = await it.next();
          if (closed) return;
          if (r.done) {
            subscriber.complete();
            return;
          }
          subscriber.next(r.value);
        }
      } catch (e) {
        if (!closed) subscriber.error(e);
      }
    };
    void pump();
    return () => {
      closed = true;
      void it.return?.()?.catch?.(() => undefined);
    };
  });
}

/** The part of a Node.js Readable that {@link fromReadable} uses. */
export interface ReadableLike {
  on(event: 'data', fn: (chunk: any) => void): unknown;
  on(event: 'end', fn: () => void): unknown;
  on(event: 'error', fn: (e: Error) => void): unknown;
  removeListener(event: string, fn: (...args: any[]) => void): unknown;
  pause(): unknown;
  resume(): unknown;
  destroy?(error?: Error): unknown;
}

export interface ReadableOptions extends PausableOptions {
  /** Destroy the stream when the subscriber unsubscribes before it ended (default true). */
  destroyOnUnsubscribe?: boolean;
}

/**
 * An Observable of a Node.js Readable's chunks that calls `stream.pause()` while the downstream queue is
 * full and `resume()` when it has room again — so a child process writing into the pipe (ffmpeg) blocks
 * instead of filling memory.
 *
 * ```ts
 * const ffmpeg = spawn('ffmpeg', ['-i', 'talk.wav', '-f', 'f32le', '-ac', '1', '-ar', '16000', 'pipe:1']);
 * fromReadable(ffmpeg.stdout).pipe(map((buf: Buffer) => new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4)));
 * ```
 */
export function fromReadable<T = Uint8Array>(stream: ReadableLike, options: ReadableOptions = {}): Observable<T> {
  return new Observable<T>((subscriber) => {
    const demand = options.demand ?? currentDemand();
    let ended = false;
    let waiting = false;
    let closed = false;
    const resume = (): void => {
      waiting = false;
      if (!closed) stream.resume();
    };
    const onData = (chunk: T): void => {
      subscriber.next(chunk);
      if (demand && !demand.ready && !waiting && !closed) {
        waiting = true;
        stream.pause();
        demand.whenReady(resume);
      }
    };
    const onEnd = (): void => {
      ended = true;
      subscriber.complete();
    };
    const onError = (e: Error): void => {
      ended = true;
      subscriber.error(e);
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    return () => {
      closed = true;
      stream.removeListener('data', onData);
      stream.removeListener('end', onEnd);
      stream.removeListener('error', onError);
      if (!ended && (options.destroyOnUnsubscribe ?? true)) stream.destroy?.();
    };
  });
}
