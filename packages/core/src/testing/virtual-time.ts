/**
 * Test harness: run a graph or a single node in virtual time (RxJS `TestScheduler`), with inputs and
 * interrupts scripted at exact media times, and get back every output with the time it arrived and
 * every {@link FlowEvent}. Timers inside nodes must use RxJS (`timer`, `delay`, `ctx.scheduler`) to
 * be virtual; Promises still resolve in real microtasks.
 */
import { asyncScheduler } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { Graph } from '../graph.js';
import type { AnyNode } from '../node.js';
import type { Micros, Packet } from '../packets.js';
import type { CompileOptions, RunModeName } from '../plan.js';
import type { FlowEvent, Session, SessionOptions } from '../session.js';

/** A scripted input: a packet (or 'complete') at a media time in microseconds. */
export type Scripted = readonly [at: Micros, what: Packet | 'complete'];

export interface VirtualScript extends Omit<SessionOptions, 'scheduler'>, CompileOptions {
  /** Per exported graph input: what arrives when. */
  inputs?: Record<string, readonly Scripted[]>;
  /** Media times at which `session.interrupt()` is called. */
  interrupts?: readonly Micros[];
  /** Stop the session at this media time if it has not finished by itself. */
  until?: Micros;
  mode?: RunModeName;
  /** Called at time 0 with the session, before it starts (e.g. to schedule more actions). */
  setup?: (session: Session) => void;
}

export interface Arrival {
  at: Micros;
  packet: Packet;
}

export interface VirtualResult {
  /** Per exported graph output: packets in arrival order with their media time. */
  outputs: Record<string, Arrival[]>;
  events: FlowEvent[];
  session: Session;
  /** The failure, if the session failed. */
  error?: unknown;
  /** Media time at which the session ended (undefined if it did not). */
  endedAt?: Micros;
}

/**
 * Runs `fn` in virtual time: RxJS's async scheduler, timers and `Date`-based clocks are virtual inside,
 * and everything scheduled is flushed before it returns.
 *
 * ```ts
 * virtualTime(() => { timer(1000).subscribe(() => console.log('one virtual second')); });
 * ```
 */
export function virtualTime<T>(fn: () => T): T {
  const scheduler = new TestScheduler((actual, expected) => {
    if (JSON.stringify(actual) !== JSON.stringify(expected)) throw new Error(`expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  });
  return scheduler.run(() => fn());
}

/**
 * Runs a graph in virtual time with scripted inputs and interrupts.
 *
 * ```ts
 * const r = runGraphVirtual(g, { inputs: { audio: [[0, chunk0], [20_000, chunk1], [40_000, 'complete']] }, interrupts: [30_000] });
 * r.outputs.text.map((a) => [a.at, a.packet.turn]);
 * ```
 */
export function runGraphVirtual(g: Graph<any>, script: VirtualScript = {}): VirtualResult {
  return virtualTime(() => {
    const compiled = g.compile(script);
    const session = compiled.session({ ...script, scheduler: asyncScheduler });
    const outputs: Record<string, Arrival[]> = {};
    const events: FlowEvent[] = [];
    const result: VirtualResult = { outputs, events, session };
    for (const name of Object.keys(compiled.flat.outputs)) {
      outputs[name] = [];
      session.output(name).subscribe({ next: (packet) => outputs[name].push({ at: session.now(), packet }), error: () => undefined });
    }
    session.events$.subscribe((e) => {
      events.push(e);
      if (e.type === 'error') result.error = (e.error as Error & { cause?: unknown }) ?? e.error;
      if (e.type === 'session-end') result.endedAt = e.at;
    });
    for (const [name, items] of Object.entries(script.inputs ?? {})) {
      const input = session.input(name);
      for (const [at, what] of items)
        asyncScheduler.schedule(() => (what === 'complete' ? input.complete() : input.push(what)), at / 1000);
    }
    for (const at of script.interrupts ?? []) asyncScheduler.schedule(() => session.interrupt('scripted'), at / 1000);
    if (script.until !== undefined) asyncScheduler.schedule(() => session.stop(), script.until / 1000);
    script.setup?.(session);
    session.start().catch(() => undefined);
    return result;
  });
}

/**
 * Runs one node in virtual time: each input port is fed from the script, each output port recorded.
 *
 * ```ts
 * const r = runNodeVirtual(gain, { db: -6 }, { inputs: { audio: [[0, chunk], [10_000, 'complete']] } });
 * r.outputs.audio[0].packet;
 * ```
 */
export function runNodeVirtual(def: AnyNode, params: unknown, script: VirtualScript = {}): VirtualResult {
  const g = new Graph<any>(`${def.type}-harness`).add('node', def, params as any);
  for (const port of Object.keys(def.inputs)) g.input(port, `node.${port}`);
  for (const port of Object.keys(def.outputs)) g.output(port, `node.${port}`);
  return runGraphVirtual(g, script);
}
