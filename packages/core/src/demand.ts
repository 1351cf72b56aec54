/**
 * Demand: how a bounded `block` queue tells whatever feeds it to wait.
 *
 * RxJS pushes and has no request(n), so omniflow passes demand beside the stream. The graph runtime
 * gives every node a {@link Demand} that is `ready` while all of the node's outbound `block` queues have
 * room. Pausable sources ({@link fromAsyncIterable}, {@link fromReadable}) read it: they are subscribed
 * while the runtime holds the node's demand as the *ambient* demand ({@link withDemand}), capture it,
 * and only pull the next item while it is ready. Outside a graph there is no ambient demand and they pull
 * as fast as the consumer takes items.
 */

export interface Demand {
  /** True while every downstream `block` queue has room. */
  readonly ready: boolean;
  /**
   * Calls `fn` once when `ready` is next true: synchronously if it already is, otherwise from the
   * code path that frees room (a queue draining).
   */
  whenReady(fn: () => void): void;
}

/** A demand that is always ready (no downstream limit). */
export const unlimitedDemand: Demand = Object.freeze({ ready: true, whenReady: (fn: () => void) => fn() });

let ambient: Demand | undefined;

/**
 * Runs `fn` with `demand` as the ambient demand, so pausable sources subscribed inside it (synchronously)
 * pause when `demand` is not ready. The graph runtime wraps every node's subscription in it.
 *
 * ```ts
 * withDemand(node.demand, () => output$.subscribe(edge));
 * ```
 */
export function withDemand<T>(demand: Demand | undefined, fn: () => T): T {
  const previous = ambient;
  ambient = demand;
  try {
    return fn();
  } finally {
    ambient = previous;
  }
}

/** The ambient demand, or `undefined` outside a graph. */
export function currentDemand(): Demand | undefined {
  return ambient;
}

/**
 * A simple settable demand: ready until {@link Gate.close}, and `open()` wakes the waiters.
 * Useful for external producers and tests.
 *
 * ```ts
 * const gate = new Gate();
 * gate.close(); gate.whenReady(() => console.log('go')); gate.open(); // prints 'go'
 * ```
 */
export class Gate implements Demand {
  private waiters: Array<() => void> = [];
  private isOpen = true;
  get ready(): boolean {
    return this.isOpen;
  }
  whenReady(fn: () => void): void {
    if (this.isOpen) fn();
    else this.waiters.push(fn);
  }
  close(): void {
    this.isOpen = false;
  }
  open(): void {
    this.isOpen = true;
    // Waiters may close the gate again; those left over wait for the next open().
    while (this.isOpen && this.waiters.length > 0) this.waiters.shift()!();
  }
}
