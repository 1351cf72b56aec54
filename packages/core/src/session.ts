/**
 * The runtime: one session of a compiled graph. Every edge is a bounded queue; demand flows upstream
 * through `block` queues to pausable sources; turns are fenced on interrupt; metrics, events and spans
 * are recorded on the way.
 *
 * Hot path: a packet pushed into an empty queue whose consumer is ready is delivered synchronously, with
 * no allocation and no Promise; queues only fill when a consumer is busy (holding) or blocked downstream.
 */
import { asyncScheduler, Observable, Subject, Subscriber, type SchedulerLike, type Subscription } from 'rxjs';
import type { Tracer } from '@opentelemetry/api';
import { RunContext, TurnState, type MetricsHooks } from './context.js';
import { withDemand, type Demand } from './demand.js';
import { defineNode, openNode, portNames } from './node.js';
import { disposePacket, type Micros, type Packet, type PacketKind } from './packets.js';
import { ports } from './ports.js';
import { BoundedQueue, formatCapacity, parseCapacity, Ring, type CapacityInput, type DropReason, type OverflowPolicy } from './queue.js';
import { Histogram, formatReport, type MetricsSnapshot, type TurnMetricsSnapshot } from './metrics.js';
import { SessionTelemetry } from './telemetry.js';
import type { CompiledGraph, RunModeName, Stage } from './plan.js';
import type { FlatEdge } from './graph.js';

export interface SessionOptions {
  /** Session id stamped on source packets (default 'default'). */
  id?: string;
  /** 'batch' (default): as fast as possible, every queue lossless. 'realtime': non-live sources paced by pts, lossy policies and budgets apply. */
  mode?: RunModeName;
  /** Scheduler for pacing and the media clock (virtual under the test harness). */
  scheduler?: SchedulerLike;
  /** Record processing latency for one packet in N per node (default 16: reading the clock costs more than a hop). */
  latencySampleEvery?: number;
  /** OpenTelemetry tracer (default: the global provider's 'omniflow' tracer; a no-op unless one is registered). */
  tracer?: Tracer;
  /** Capacity and policy of the queues behind `session.input(name)` (default 16 packets, block). */
  inputQueue?: { capacity?: CapacityInput; policy?: OverflowPolicy };
}

/** Everything observable about a running session. */
export type FlowEvent =
  | { type: 'session-start'; at: Micros; session: string; mode: RunModeName }
  | { type: 'node-open'; at: Micros; node: string; nodeType: string }
  | { type: 'node-close'; at: Micros; node: string }
  | { type: 'drop'; at: Micros; edge: string; reason: DropReason; kind: PacketKind; turn: number }
  | { type: 'turn-start'; at: Micros; turn: number }
  | { type: 'interrupt'; at: Micros; turn: number; fenced: number; reason?: string }
  | { type: 'first-output'; at: Micros; turn: number; kind: PacketKind; node: string; latency: Micros }
  | { type: 'error'; at: Micros; node?: string; error: unknown }
  | { type: 'session-end'; at: Micros; error?: unknown };

/** A node failed: names the node, its type and the cause. */
export class NodeFailedError extends Error {
  constructor(
    readonly node: string,
    readonly nodeType: string,
    override readonly cause: unknown,
  ) {
    super(`node '${node}' (${nodeType}) failed: ${(cause as Error)?.message ?? String(cause)}`);
    this.name = 'NodeFailedError';
  }
}

/** Feeding one exported graph input by hand. */
export interface SessionInput {
  /** Pushes one packet; returns false when the queue is full and the caller should wait (`demand.whenReady`). */
  push(p: Packet): boolean;
  complete(): void;
  error(e: unknown): void;
  /** Room in the input queue. */
  readonly demand: Demand;
}

const clockNow = (): number => performance.now() * 1000;

/**
 * An input port as the node sees it: an Observable fed directly by the port's edges. Deliberately not a
 * Subject: `Subject.next` allocates per call, and this is the per-packet path.
 */
class InPort {
  private subscribers: Subscriber<Packet>[] = [];
  readonly edges: EdgeRun[] = [];
  private finishedEdges = 0;
  completed = false;
  readonly stream: Observable<Packet>;
  constructor(readonly node: NodeRun, readonly name: string) {
    this.stream = new Observable<Packet>((subscriber) => {
      if (this.completed) {
        subscriber.complete();
        return;
      }
      this.subscribers = [...this.subscribers, subscriber];
      return () => {
        this.subscribers = this.subscribers.filter((s) => s !== subscriber);
      };
    });
  }
  next(p: Packet): void {
    const subs = this.subscribers;
    if (subs.length === 1) subs[0].next(p);
    else if (subs.length === 0) this.node.unobserved(p);
    else for (let i = 0; i < subs.length; i++) subs[i].next(p);
  }
  edgeFinished(): void {
    if (++this.finishedEdges >= this.edges.length) this.complete();
  }
  complete(): void {
    if (this.completed) return;
    this.completed = true;
    const subs = this.subscribers;
    this.subscribers = [];
    for (const s of subs) s.complete();
  }
}

/** Receives a node's output stream; a Subscriber subclass so RxJS calls it without extra wrapping. */
class EmitSubscriber extends Subscriber<Packet> {
  constructor(
    private readonly node: NodeRun,
    private readonly port: OutPort | undefined,
    private readonly onDone: () => void,
  ) {
    super();
  }
  protected override _next(p: Packet): void {
    if (this.port) this.node.emit(this.port, p);
  }
  protected override _error(e: unknown): void {
    this.unsubscribe();
    this.node.session.fail(e, this.node);
  }
  protected override _complete(): void {
    this.unsubscribe();
    this.onDone();
  }
}

class OutPort {
  readonly edges: EdgeRun[] = [];
  constructor(readonly node: NodeRun, readonly name: string) {}

  /** Sends a packet down every edge of this port. */
  fanout(p: Packet): void {
    const edges = this.edges;
    if (edges.length === 1) edges[0].push(p);
    else if (edges.length === 0) disposePacket(p);
    else {
      if (p.kind === 'tensor') this.node.session.share(p, edges.length);
      for (let i = 0; i < edges.length; i++) edges[i].push(p);
    }
  }
}

/** Holds packets of a non-live source until the media clock reaches their pts (real-time mode). */
class Pacer {
  private readonly queue = new Ring<{ port: OutPort; p: Packet }>();
  private timer: Subscription | undefined;
  private offset: number | undefined;
  constructor(private readonly node: NodeRun) {}
  get idle(): boolean {
    return this.queue.length === 0;
  }
  private due(p: Packet): number {
    if (this.offset === undefined) this.offset = this.node.session.now() - p.pts;
    return p.pts + this.offset;
  }
  offer(port: OutPort, p: Packet): void {
    if (this.queue.length === 0 && this.due(p) <= this.node.session.now()) port.fanout(this.node.session.stamp(p));
    else {
      this.queue.push({ port, p });
      this.schedule();
    }
  }
  private schedule(): void {
    if (this.timer || this.queue.length === 0) return;
    const head = this.queue.peek()!;
    const delayMs = Math.max(0, (this.due(head.p) - this.node.session.now()) / 1000);
    this.timer = this.node.session.scheduler.schedule(() => {
      this.timer = undefined;
      this.flush();
    }, delayMs);
  }
  private flush(): void {
    const now = this.node.session.now();
    while (this.queue.length > 0 && this.due(this.queue.peek()!.p) <= now) {
      const { port, p } = this.queue.shift()!;
      port.fanout(this.node.session.stamp(p));
    }
    if (this.queue.length > 0) this.schedule();
    else this.node.wake();
  }
  stop(): void {
    this.timer?.unsubscribe();
    while (this.queue.length > 0) disposePacket(this.queue.shift()!.p);
  }
}

class NodeRun {
  readonly inPorts = new Map<string, InPort>();
  readonly outPorts = new Map<string, OutPort>();
  readonly inEdges: EdgeRun[] = [];
  readonly ctx: RunContext;
  readonly isSource: boolean;
  readonly isSink: boolean;
  readonly latency = new Histogram();
  readonly counters: Record<string, number> = {};
  readonly histograms: Record<string, Histogram> = {};
  readonly pacer: Pacer | undefined;
  /** Outbound `block` queues currently full. */
  fullOut = 0;
  opened = false;
  private announced = false;
  stopped = false;
  packetsIn = 0;
  packetsOut = 0;
  /** Start (µs, performance clock) of the packet being processed, 0 when none is timed. */
  private tIn = 0;
  private sampleLeft = 0;
  private outputsOpen = 0;
  private subscriptions: Subscription[] = [];
  private teardown: (() => void) | undefined;
  private demandWaiters: Array<() => void> = [];
  readonly demand: Demand;

  constructor(
    readonly session: Session,
    readonly id: string,
    readonly stage: Pick<Stage, 'def' | 'params' | 'role'>,
  ) {
    const { inputs, outputs } = portNames(stage.def);
    for (const k of inputs) this.inPorts.set(k, new InPort(this, k));
    for (const k of outputs) this.outPorts.set(k, new OutPort(this, k));
    this.isSource = inputs.length === 0;
    this.isSink = outputs.length === 0;
    this.pacer = this.isSource && session.mode === 'realtime' && !stage.def.live ? new Pacer(this) : undefined;
    const demandReady = (): boolean => this.fullOut === 0 && !this.stopped && (this.pacer === undefined || this.pacer.idle);
    this.demand = {
      get ready() {
        return demandReady();
      },
      whenReady: (fn: () => void) => {
        if (demandReady()) fn();
        else this.demandWaiters.push(fn);
      },
    };
    const metrics: MetricsHooks = {
      count: (name, n = 1) => {
        this.counters[name] = (this.counters[name] ?? 0) + n;
      },
      observe: (name, value) => {
        (this.histograms[name] ??= new Histogram()).record(value);
      },
    };
    this.ctx = new RunContext({
      node: id,
      type: stage.def.type,
      turns: session.turns,
      mode: session.mode,
      scheduler: session.scheduler,
      clock: () => session.now(),
      demand: this.demand,
      metrics,
      release: (p) => session.release(p),
    });
    this.ctx.onRelease = () => this.wake();
  }

  /** Ready to take a packet: open, not holding, and every outbound `block` queue has room. */
  get ready(): boolean {
    return this.opened && this.ctx.holds === 0 && this.fullOut === 0 && !this.stopped;
  }

  /** A packet for an input port the node never subscribed to: released and counted. */
  unobserved(p: Packet): void {
    this.counters.unobservedInput = (this.counters.unobservedInput ?? 0) + 1;
    this.session.release(p);
  }

  addInEdge(e: EdgeRun): void {
    this.inEdges.push(e);
  }

  deliver(port: InPort, p: Packet): void {
    this.packetsIn++;
    if (this.isSink) this.session.recordOutput(this, p);
    if (--this.sampleLeft <= 0) {
      this.sampleLeft = this.session.latencySampleEvery;
      this.tIn = clockNow();
    }
    port.next(p);
    if (this.tIn !== 0) {
      this.latency.record(clockNow() - this.tIn);
      this.tIn = 0;
    }
  }

  emit(port: OutPort, p: Packet): void {
    this.packetsOut++;
    if (this.tIn !== 0) {
      this.latency.record(clockNow() - this.tIn);
      this.tIn = 0;
    }
    if (this.isSource) {
      if (this.pacer) this.pacer.offer(port, p);
      else port.fanout(this.session.stamp(p));
    } else port.fanout(p);
  }

  /** Called whenever this node may have become ready: drains its queues and wakes its sources. */
  wake(): void {
    if (this.stopped) return;
    if (this.ready) for (let i = 0; i < this.inEdges.length && this.ready; i++) this.inEdges[i].drain();
    while (this.demandWaiters.length > 0 && this.demand.ready) this.demandWaiters.shift()!();
  }

  open(): void {
    const inputs: Record<string, Observable<any>> = {};
    for (const [k, port] of this.inPorts) {
      inputs[k] = port.stream;
      if (port.edges.length === 0) port.complete();
    }
    this.teardown = openNode(
      this.stage.def,
      this.stage.params,
      this.ctx,
      inputs,
      (outputs) => this.subscribeOutputs(outputs),
      (e) => this.session.fail(e, this),
    );
  }

  private subscribeOutputs(outputs: Record<string, Observable<any>>): void {
    if (this.stopped) return;
    const entries = Object.entries(outputs);
    this.outputsOpen = entries.length;
    // Announced before subscribing: a synchronous source may run to completion inside subscribe().
    this.announced = true;
    this.session.event({ type: 'node-open', at: this.session.now(), node: this.id, nodeType: this.stage.def.type });
    this.session.telemetry.nodeOpen(this.id, this.stage.def.type);
    withDemand(this.demand, () => {
      for (const [name, out$] of entries) {
        const port = this.outPorts.get(name);
        const sub = out$.subscribe(
          new EmitSubscriber(this, port, () => {
            for (const edge of port?.edges ?? []) edge.complete();
            if (--this.outputsOpen === 0) this.finish();
          }),
        );
        if (!this.stopped) this.subscriptions.push(sub);
        else sub.unsubscribe();
      }
    });
    if (this.stopped) return;
    this.opened = true;
    this.wake();
  }

  /** All outputs completed: close the node; anything still queued for it is dropped. */
  private finish(): void {
    if (this.stopped) return;
    this.stop();
    this.session.nodeFinished(this);
  }

  stop(error?: unknown): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const s of this.subscriptions) s.unsubscribe();
    this.subscriptions = [];
    this.pacer?.stop();
    for (const e of this.inEdges) e.consumerGone();
    try {
      this.teardown?.();
    } catch (e) {
      error ??= e;
    }
    if (this.announced) {
      this.session.telemetry.nodeClose(this.id, this.packetsIn, this.packetsOut, error);
      this.session.event({ type: 'node-close', at: this.session.now(), node: this.id });
    }
    this.demandWaiters = [];
  }
}

class EdgeRun {
  readonly queue: BoundedQueue;
  /** Set while the queue is at capacity under `block`; counted in the producer's `fullOut`. */
  private full = false;
  private draining = false;
  private upstreamDone = false;
  private finished = false;
  private gone = false;
  packetsIn = 0;
  packetsOut = 0;
  private readonly turns: TurnState;
  private readonly budget: number | undefined;

  constructor(
    readonly session: Session,
    readonly spec: FlatEdge,
    readonly producer: NodeRun,
    readonly consumer: NodeRun,
    readonly port: InPort,
  ) {
    const policy = session.mode === 'batch' ? 'block' : spec.policy;
    this.queue = new BoundedQueue(spec.id, spec.capacity, policy);
    this.queue.dispose = (p) => session.release(p);
    this.queue.onDrop = (p, reason) => session.dropped(this, p, reason);
    this.turns = session.turns;
    this.budget = session.mode === 'realtime' ? spec.budget : undefined;
  }

  push(p: Packet): void {
    this.packetsIn++;
    if (p.turn < this.turns.epoch && !p.uninterruptible) return this.queue.drop(p, 'fenced');
    if (this.gone) return this.queue.drop(p, 'stopped');
    const c = this.consumer;
    if (this.queue.items.length === 0 && !this.draining && this.budget === undefined && c.ready) {
      this.packetsOut++;
      c.deliver(this.port, p);
      return;
    }
    try {
      if (!this.queue.offer(p)) return;
    } catch (e) {
      this.session.fail(e, this.producer);
      return;
    }
    if (this.queue.policy === 'block' && !this.full && this.queue.full) {
      this.full = true;
      this.producer.fullOut++;
    }
    if (c.ready) this.drain();
  }

  drain(): void {
    if (this.draining) return;
    this.draining = true;
    const q = this.queue, c = this.consumer;
    try {
      while (q.items.length > 0 && c.ready) {
        const p = q.take()!;
        if (p.turn < this.turns.epoch && !p.uninterruptible) q.drop(p, 'fenced');
        else if (this.budget !== undefined && this.session.now() - p.pts > this.budget) q.drop(p, 'late');
        else {
          this.packetsOut++;
          c.deliver(this.port, p);
        }
        this.checkRoom();
      }
    } finally {
      this.draining = false;
    }
    if (this.upstreamDone && q.items.length === 0) this.finish();
  }

  /** Unblocks the producer once a full `block` queue has room again. */
  checkRoom(): void {
    if (this.full && !this.queue.full) {
      this.full = false;
      if (--this.producer.fullOut === 0) this.producer.wake();
    }
  }

  /** Drops packets of stale turns (interrupt). */
  fence(): number {
    const epoch = this.turns.epoch;
    const n = this.queue.fence((p) => p.turn < epoch && !p.uninterruptible);
    this.checkRoom();
    return n;
  }

  /** The producer's port completed. */
  complete(): void {
    this.upstreamDone = true;
    if (this.queue.items.length === 0 && !this.draining) this.finish();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.port.edgeFinished();
  }

  /** The consumer stopped: drop what is queued and whatever still arrives, and unblock the producer. */
  consumerGone(): void {
    this.gone = true;
    this.queue.clear();
    this.checkRoom();
  }

  stats() {
    return {
      id: this.spec.id,
      from: `${this.spec.from.node}.${this.spec.from.port}`,
      to: `${this.spec.to.node}.${this.spec.to.port}`,
      capacity: formatCapacity(this.spec.capacity),
      policy: this.queue.policy,
      packetsIn: this.packetsIn,
      packetsOut: this.packetsOut,
      depth: this.queue.length,
      maxDepth: this.queue.maxDepth,
      drops: { ...this.queue.drops },
    };
  }
}

interface TurnRecord {
  turn: number;
  startedAt: Micros;
  first: Partial<Record<PacketKind, Micros>>;
  endedBy?: 'interrupt' | 'end';
}

/**
 * A running instance of a compiled graph. Create with `graph.session(options)` (or `compiled.session`),
 * subscribe to `output(...)`/`events$`, then `start()`.
 *
 * ```ts
 * const session = g.session({ mode: 'realtime' });
 * session.output('text').subscribe((p) => process.stdout.write(p.text));
 * await session.start();
 * ```
 */
export class Session {
  readonly id: string;
  readonly mode: RunModeName;
  readonly scheduler: SchedulerLike;
  readonly turns: TurnState;
  readonly latencySampleEvery: number;
  readonly telemetry: SessionTelemetry;
  /** Scheduler time (ms) of media time 0: when `start()` was called. */
  private clockOrigin: number;
  private readonly nodes: NodeRun[] = [];
  private readonly edges: EdgeRun[] = [];
  private readonly events = new Subject<FlowEvent>();
  private readonly inputs = new Map<string, { node: NodeRun; subject: Subject<Packet> }>();
  private readonly outputs = new Map<string, Subject<Packet>>();
  private readonly shares = new WeakMap<Packet, number>();
  private readonly turnRecords: TurnRecord[] = [];
  private finishedNodes = 0;
  private state: 'idle' | 'running' | 'done' = 'idle';
  private resolveDone!: () => void;
  private rejectDone!: (e: unknown) => void;
  /** Settles when every node has finished (resolves), or the first failure (rejects). */
  readonly done: Promise<void>;
  /** Every {@link FlowEvent} of the session, as it happens. */
  readonly events$: Observable<FlowEvent> = this.events.asObservable();

  constructor(
    readonly compiled: CompiledGraph,
    options: SessionOptions = {},
  ) {
    this.id = options.id ?? 'default';
    this.mode = options.mode ?? 'batch';
    this.scheduler = options.scheduler ?? asyncScheduler;
    this.clockOrigin = this.scheduler.now();
    this.turns = new TurnState(this.id);
    this.latencySampleEvery = Math.max(1, Math.floor(options.latencySampleEvery ?? 16));
    this.telemetry = new SessionTelemetry(options.tracer);
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined); // failures are also reported through events and start()

    const byId = new Map<string, NodeRun>();
    for (const stage of compiled.stages) {
      const n = new NodeRun(this, stage.id, stage);
      byId.set(stage.id, n);
      this.nodes.push(n);
    }
    const inputQueue = {
      capacity: parseCapacity(options.inputQueue?.capacity ?? 16),
      policy: options.inputQueue?.policy ?? 'block',
    };
    for (const [name, ref] of Object.entries(compiled.flat.inputs)) {
      const subject = new Subject<Packet>();
      const def = defineNode({ type: 'input', outputs: { out: ports.any() }, live: true, operator: () => subject.asObservable() });
      const node = new NodeRun(this, `input:${name}`, { def, params: {}, role: 'source' });
      this.nodes.push(node);
      byId.set(node.id, node);
      this.inputs.set(name, { node, subject });
      this.wire(byId, { id: `input:${name}.out->${ref.node}.${ref.port}`, from: { node: node.id, port: 'out' }, to: ref, backEdge: false, ...inputQueue });
    }
    for (const [name, ref] of Object.entries(compiled.flat.outputs)) {
      const subject = new Subject<Packet>();
      const def = defineNode({
        type: 'output',
        inputs: { in: ports.any() },
        operator: () => (in$: Observable<Packet>) =>
          new Observable<never>((sub) =>
            in$.subscribe({
              next: (p) => (subject.observed ? subject.next(p) : disposePacket(p)),
              error: (e) => sub.error(e),
              complete: () => sub.complete(),
            }),
          ),
      });
      const node = new NodeRun(this, `output:${name}`, { def, params: {}, role: 'sink' });
      this.nodes.push(node);
      byId.set(node.id, node);
      this.outputs.set(name, subject);
      this.wire(byId, { id: `${ref.node}.${ref.port}->output:${name}.in`, from: ref, to: { node: node.id, port: 'in' }, backEdge: false, capacity: parseCapacity(16), policy: 'block' });
    }
    for (const e of compiled.edges) this.wire(byId, e);
  }

  private wire(byId: Map<string, NodeRun>, spec: FlatEdge): void {
    const producer = byId.get(spec.from.node)!, consumer = byId.get(spec.to.node)!;
    const port = consumer.inPorts.get(spec.to.port)!;
    const edge = new EdgeRun(this, spec, producer, consumer, port);
    producer.outPorts.get(spec.from.port)!.edges.push(edge);
    port.edges.push(edge);
    consumer.addInEdge(edge);
    this.edges.push(edge);
  }

  /** Current turn epoch. */
  get turn(): number {
    return this.turns.epoch;
  }

  /** Media clock: microseconds since `start()` (since creation before it). */
  now(): Micros {
    return Math.round((this.scheduler.now() - this.clockOrigin) * 1000);
  }

  /**
   * Opens every node (sinks first, so nothing is emitted before its consumer listens) and runs until
   * every node has finished. Resolves when done; rejects with {@link NodeFailedError} on failure.
   */
  start(): Promise<void> {
    if (this.state !== 'idle') return this.done;
    this.state = 'running';
    this.clockOrigin = this.scheduler.now();
    this.telemetry.start(this.id, this.compiled.flat.name, this.mode);
    this.event({ type: 'session-start', at: this.now(), session: this.id, mode: this.mode });
    this.beginTurn();
    for (let i = this.nodes.length - 1; i >= 0 && this.state === 'running'; i--) this.nodes[i].open();
    return this.done;
  }

  /** Hot stream of packets leaving exported output `name`. Subscribe before `start()`. */
  output(name: string): Observable<Packet> {
    const s = this.outputs.get(name);
    if (!s) throw new Error(`session ${this.id}: graph '${this.compiled.flat.name}' has no output '${name}' (outputs: ${[...this.outputs.keys()].join(', ') || 'none'})`);
    return s.asObservable();
  }

  /** Handle for pushing packets into exported input `name`. */
  input(name: string): SessionInput {
    const i = this.inputs.get(name);
    if (!i) throw new Error(`session ${this.id}: graph '${this.compiled.flat.name}' has no input '${name}' (inputs: ${[...this.inputs.keys()].join(', ') || 'none'})`);
    return {
      push: (p) => {
        i.subject.next(p);
        return i.node.demand.ready;
      },
      complete: () => i.subject.complete(),
      error: (e) => i.subject.error(e),
      demand: i.node.demand,
    };
  }

  /** Subscribes `source$` into exported input `name`; pausable sources follow the input queue's demand. */
  feed(name: string, source$: Observable<Packet>): Subscription {
    const input = this.input(name);
    return withDemand(input.demand, () =>
      source$.subscribe({ next: (p) => input.push(p), error: (e) => input.error(e), complete: () => input.complete() }),
    );
  }

  /**
   * Barge-in: starts a new turn. The old turn's AbortSignal is aborted, queued packets of the old turn
   * are dropped and disposed (uninterruptible ones stay), and from now on no packet of the old turn is
   * delivered to any node or output. Returns the new turn epoch.
   */
  interrupt(reason?: string): number {
    if (this.state !== 'running') return this.turns.epoch;
    const fencedBefore = this.fencedTotal();
    // Bumping aborts the old turn's work first; nodes freed by that may drain (and fence) their queues.
    const turn = this.turns.bump(reason);
    for (const e of this.edges) e.fence();
    const fenced = this.fencedTotal() - fencedBefore;
    const rec = this.turnRecords[this.turnRecords.length - 1];
    if (rec) rec.endedBy = 'interrupt';
    this.telemetry.turnEnd('interrupt');
    this.telemetry.interrupt(turn, fenced, reason);
    this.event({ type: 'interrupt', at: this.now(), turn, fenced, ...(reason ? { reason } : {}) });
    this.beginTurn();
    for (const n of this.nodes) n.wake();
    return turn;
  }

  private fencedTotal(): number {
    let n = 0;
    for (const e of this.edges) n += e.queue.drops.fenced;
    return n;
  }

  /** Stops the session now: unsubscribes every node, drops queued packets; `done` resolves. */
  stop(): void {
    this.end();
  }

  private beginTurn(): void {
    this.turnRecords.push({ turn: this.turns.epoch, startedAt: this.now(), first: {} });
    this.telemetry.turnStart(this.turns.epoch);
    this.event({ type: 'turn-start', at: this.now(), turn: this.turns.epoch });
  }

  /** @internal Source packets carry the session id and the current turn. */
  stamp(p: Packet): Packet {
    if (p.session === this.id && p.turn === this.turns.epoch) return p;
    return { ...p, session: this.id, turn: this.turns.epoch } as Packet;
  }

  /** @internal Time to first output of each kind, per turn. */
  recordOutput(node: NodeRun, p: Packet): void {
    const rec = this.turnRecords[this.turnRecords.length - 1];
    if (rec === undefined || rec.first[p.kind] !== undefined || p.turn !== rec.turn) return;
    const latency = this.now() - rec.startedAt;
    rec.first[p.kind] = latency;
    this.telemetry.firstOutput(p.kind, latency);
    this.event({ type: 'first-output', at: this.now(), turn: rec.turn, kind: p.kind, node: node.id, latency });
  }

  /** @internal Fan-out of a tensor packet: the runtime disposes it only when its last queue drops it. */
  share(p: Packet, n: number): void {
    this.shares.set(p, n);
  }

  /** @internal */
  release(p: Packet): void {
    const n = this.shares.get(p);
    if (n !== undefined && n > 1) this.shares.set(p, n - 1);
    else disposePacket(p);
  }

  /** @internal */
  dropped(edge: EdgeRun, p: Packet, reason: DropReason): void {
    if (this.events.observed) this.event({ type: 'drop', at: this.now(), edge: edge.spec.id, reason, kind: p.kind, turn: p.turn });
  }

  /** @internal */
  event(e: FlowEvent): void {
    if (this.events.observed) this.events.next(e);
  }

  /** @internal */
  nodeFinished(_node: NodeRun): void {
    if (++this.finishedNodes === this.nodes.length) this.end();
  }

  /** @internal */
  fail(error: unknown, node: NodeRun): void {
    if (this.state === 'done') return;
    const wrapped = error instanceof NodeFailedError ? error : new NodeFailedError(node.id, node.stage.def.type, error);
    this.event({ type: 'error', at: this.now(), node: node.id, error: wrapped });
    this.end(wrapped, node);
  }

  private end(error?: unknown, culprit?: NodeRun): void {
    if (this.state === 'done') return;
    this.state = 'done';
    culprit?.stop(error);
    for (const n of this.nodes) n.stop();
    for (const e of this.edges) e.queue.clear();
    for (const s of this.outputs.values()) {
      if (error) s.error(error);
      else s.complete();
    }
    const rec = this.turnRecords[this.turnRecords.length - 1];
    if (rec && !rec.endedBy) rec.endedBy = 'end';
    const totals = this.edges.reduce(
      (a, e) => {
        const d = e.queue.drops;
        a['omniflow.drops.overflow'] += d.overflow;
        a['omniflow.drops.fenced'] += d.fenced;
        a['omniflow.drops.late'] += d.late;
        return a;
      },
      { 'omniflow.drops.overflow': 0, 'omniflow.drops.fenced': 0, 'omniflow.drops.late': 0, 'omniflow.turns': this.turns.epoch + 1 },
    );
    this.telemetry.end(totals, error);
    this.turns.close();
    this.event({ type: 'session-end', at: this.now(), ...(error ? { error } : {}) });
    this.events.complete();
    if (error) this.rejectDone(error);
    else this.resolveDone();
  }

  /** A snapshot of every node's, edge's and turn's metrics. */
  metrics(): MetricsSnapshot {
    return {
      session: this.id,
      mode: this.mode,
      elapsedMicros: this.now(),
      nodes: this.nodes.map((n) => ({
        id: n.id,
        type: n.stage.def.type,
        packetsIn: n.packetsIn,
        packetsOut: n.packetsOut,
        latency: n.latency.toJSON(),
        counters: { ...n.counters },
        histograms: Object.fromEntries(Object.entries(n.histograms).map(([k, h]) => [k, h.toJSON()])),
      })),
      edges: this.edges.map((e) => e.stats()),
      turns: this.turnRecords.map(
        (t): TurnMetricsSnapshot => ({ turn: t.turn, startedAt: t.startedAt, timeToFirstOutput: { ...t.first }, ...(t.endedBy ? { endedBy: t.endedBy } : {}) }),
      ),
    };
  }

  /** The metrics as a printable table. */
  report(): string {
    return formatReport(this.metrics());
  }
}
