/**
 * `defineNode`: one definition, used two ways — as a plain RxJS operator with no graph, and as a graph
 * vertex with typed ports and zod-validated params.
 *
 * The shape of the operator follows the node's ports:
 * - one input, one output: `(input$) => output$` — an RxJS `OperatorFunction`, usable in `.pipe()`;
 * - no inputs (a source): the body *is* the output Observable;
 * - no outputs (a sink): `(input$) => done$`, an Observable that completes when the sink is done
 *   (its values are ignored);
 * - several inputs or outputs: a record of Observables in, a record of Observables out, keyed by port.
 */
import { defer, Observable, share, ReplaySubject, type Subscription } from 'rxjs';
import { z } from 'zod';
import { RunContext, TurnState, type NodeContext } from './context.js';
import type { TensorHandle } from './packets.js';
import type { PacketOfPort, PortMap } from './ports.js';

type Keys<M> = keyof M & string;
type IsUnion<T, U = T> = T extends unknown ? ([U] extends [T] ? false : true) : never;
/** 'none', 'one' or 'many' ports. */
export type Arity<M> = [Keys<M>] extends [never] ? 'none' : true extends IsUnion<Keys<M>> ? 'many' : 'one';
/** One Observable per port. */
export type PortStreams<M> = { [K in Keys<M>]: Observable<PacketOfPort<M[K]>> };
/** What a node body receives. */
export type InputForm<I> = Arity<I> extends 'one' ? Observable<PacketOfPort<I[Keys<I>]>> : PortStreams<I>;
/** What a node body returns. */
export type OutputForm<O> = Arity<O> extends 'none' ? Observable<unknown> : Arity<O> extends 'one' ? Observable<PacketOfPort<O[Keys<O>]>> : PortStreams<O>;
/** The operator form of a node: an Observable for sources, a function of the inputs otherwise. */
export type NodeBody<I, O> = Arity<I> extends 'none' ? OutputForm<O> : (input: InputForm<I>) => OutputForm<O>;

/** A pure tensor function: tensors in, tensors out, no I/O. The runtime may fuse consecutive kernels. */
export type Kernel = (x: TensorHandle) => TensorHandle;

/** Params schemas are zod object schemas, so params have named paths (for errors and JSON). */
export type ParamsSchema = z.ZodObject<any>;
type EmptyParams = z.ZodObject<Record<never, never>>;

export interface NodeSpec<I extends PortMap, O extends PortMap, S extends ParamsSchema, R> {
  /** Registry name, e.g. 'melFeatures'. */
  type: string;
  description?: string;
  inputs?: I;
  outputs?: O;
  /** zod object schema of the params; their TypeScript type is inferred from it. */
  params?: S;
  /**
   * A live source (microphone, socket) is paced by the world; in real-time mode the runtime paces every
   * other source by packet pts.
   */
  live?: boolean;
  /** Acquires resources before the first packet (may be async, e.g. loading weights). */
  open?: (params: z.output<S>, ctx: NodeContext) => R | Promise<R>;
  /** Builds the node's stream transformation. Optional when `kernel` is given. */
  operator?: (params: z.output<S>, ctx: NodeContext, resource: R) => NodeBody<I, O>;
  /** Pure tensor form, for nodes with one tensor input and one tensor output. */
  kernel?: (params: z.output<S>) => Kernel;
  /** Releases what `open` acquired; runs on complete, error and unsubscribe, once. */
  close?: (resource: R, ctx: NodeContext) => void | Promise<void>;
}

/** A node definition; calling it with params gives the operator form. */
export interface NodeDefinition<I extends PortMap = PortMap, O extends PortMap = PortMap, S extends ParamsSchema = ParamsSchema, R = unknown> {
  // `{} extends P` is true exactly when every param is optional, so params may be omitted.
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  (...params: {} extends z.input<S> ? [params?: z.input<S>] : [params: z.input<S>]): NodeBody<I, O>;
  readonly type: string;
  readonly description?: string;
  readonly inputs: I;
  readonly outputs: O;
  readonly params: S;
  readonly live: boolean;
  readonly spec: NodeSpec<I, O, S, R>;
  /** Validates raw params (from code or JSON); throws {@link NodeParamsError} naming node type and param path. */
  parseParams(raw: unknown, nodeId?: string): z.output<S>;
}

/** Any node definition, whatever its ports and params. */
export type AnyNode = NodeDefinition<any, any, any, any>;

/** Bad params: names the node (type and id) and every failing param path. */
export class NodeParamsError extends Error {
  constructor(
    readonly nodeType: string,
    readonly nodeId: string | undefined,
    readonly issues: ReadonlyArray<{ path: string; message: string }>,
  ) {
    const where = nodeId ? `node '${nodeId}' (${nodeType})` : nodeType;
    super(`${where}: bad params: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`);
    this.name = 'NodeParamsError';
  }
}

/** Parses params with the node's schema; the error names the node and the param paths. */
export function parseNodeParams<S extends ParamsSchema>(type: string, schema: S, raw: unknown, nodeId?: string): z.output<S> {
  const r = schema.safeParse(raw ?? {});
  if (r.success) return r.data;
  throw new NodeParamsError(
    type,
    nodeId,
    r.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
  );
}

/**
 * Defines a node.
 *
 * ```ts
 * const gain = defineNode({
 *   type: 'gain',
 *   inputs: { audio: ports.audio() },
 *   outputs: { audio: ports.audio() },
 *   params: z.object({ db: z.number().default(0) }),
 *   operator: ({ db }) => map((p) => ({ ...p, samples: p.samples.map((s) => s * 10 ** (db / 20)) })),
 * });
 * source$.pipe(gain({ db: -6 })).subscribe(play);
 * ```
 */
export function defineNode<I extends PortMap = Record<never, never>, O extends PortMap = Record<never, never>, S extends ParamsSchema = EmptyParams, R = undefined>(
  spec: NodeSpec<I, O, S, R>,
): NodeDefinition<I, O, S, R> {
  if (!/^[A-Za-z][\w.-]*$/.test(spec.type)) throw new Error(`defineNode: type must be an identifier like 'melFeatures', got '${spec.type}'`);
  const inputs = (spec.inputs ?? {}) as I;
  const outputs = (spec.outputs ?? {}) as O;
  const schema = (spec.params ?? z.object({})) as S;
  if (!spec.operator && !spec.kernel) throw new Error(`defineNode '${spec.type}': needs an operator or a kernel`);
  if (spec.kernel) {
    const ins = Object.values(inputs), outs = Object.values(outputs);
    const tensorOnly = (ps: PortMap[string][]) => ps.length === 1 && ps[0].kinds?.length === 1 && ps[0].kinds[0] === 'tensor';
    if (!tensorOnly(ins) || !tensorOnly(outs))
      throw new Error(`defineNode '${spec.type}': a kernel node needs exactly one tensor input port and one tensor output port`);
  }
  const def = ((raw?: unknown) => {
    const params = parseNodeParams(spec.type, schema, raw);
    return standaloneBody(def, params);
  }) as unknown as NodeDefinition<I, O, S, R>;
  Object.defineProperties(def, {
    type: { value: spec.type, enumerable: true },
    description: { value: spec.description, enumerable: true },
    inputs: { value: inputs, enumerable: true },
    outputs: { value: outputs, enumerable: true },
    params: { value: schema, enumerable: true },
    live: { value: spec.live ?? false, enumerable: true },
    spec: { value: spec, enumerable: true },
    parseParams: { value: (raw: unknown, nodeId?: string) => parseNodeParams(spec.type, schema, raw, nodeId) },
  });
  return def;
}

/** Input and output port names of a node, in declaration order. */
export function portNames(def: AnyNode): { inputs: string[]; outputs: string[] } {
  return { inputs: Object.keys(def.inputs), outputs: Object.keys(def.outputs) };
}

/**
 * Instantiates a node's body and returns its outputs keyed by port name (sinks: key `done`). The
 * runtime and the standalone form both go through here, so both see the same port conventions.
 */
export function runBody(def: AnyNode, params: unknown, ctx: NodeContext, resource: unknown, inputs: Record<string, Observable<any>>): Record<string, Observable<any>> {
  const { inputs: ins, outputs: outs } = portNames(def);
  const body = def.spec.operator ? def.spec.operator(params, ctx, resource) : kernelOperator(def.spec.kernel!(params));
  let out: unknown;
  if (ins.length === 0) out = body;
  else if (ins.length === 1) out = (body as (x: unknown) => unknown)(inputs[ins[0]]);
  else out = (body as (x: unknown) => unknown)(inputs);
  if (outs.length === 0) return { done: asObservable(def, 'done', out) };
  if (outs.length === 1) return { [outs[0]]: asObservable(def, outs[0], out) };
  const record = out as Record<string, unknown>;
  if (typeof record !== 'object' || record === null) throw new Error(`node '${ctx.node}' (${def.type}): operator must return a record of outputs { ${outs.join(', ')} }`);
  const result: Record<string, Observable<any>> = {};
  for (const k of outs) result[k] = asObservable(def, k, record[k]);
  return result;
}

function asObservable(def: AnyNode, port: string, value: unknown): Observable<any> {
  if (value instanceof Observable) return value;
  throw new Error(`node type '${def.type}': operator must return an Observable for output '${port}', got ${value === null ? 'null' : typeof value}`);
}

/** Default operator of a kernel-only node: applies the kernel to each tensor packet, disposing the input tensor. */
function kernelOperator(kernel: (x: TensorHandle) => TensorHandle) {
  return (input$: Observable<any>) =>
    new Observable<any>((subscriber) =>
      input$.subscribe({
        next: (p) => {
          const y = kernel(p.tensor);
          if (y !== p.tensor) p.tensor.dispose();
          subscriber.next({ ...p, tensor: y });
        },
        error: (e) => subscriber.error(e),
        complete: () => subscriber.complete(),
      }),
    );
}

/** True when `value` is a thenable. */
function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as PromiseLike<unknown>).then === 'function';
}

/**
 * Runs one node instance: open (sync or async), body, then close + disposers on teardown.
 * `subscribeOutputs` receives the output record once the node is open.
 */
export function openNode(
  def: AnyNode,
  params: unknown,
  ctx: RunContext,
  inputs: Record<string, Observable<any>>,
  onOpen: (outputs: Record<string, Observable<any>>) => void,
  onError: (e: unknown) => void,
): () => void {
  let closed = false;
  let resource: unknown;
  let opened = false;
  const start = (r: unknown): void => {
    resource = r;
    opened = true;
    if (closed) return;
    let outputs: Record<string, Observable<any>>;
    try {
      outputs = runBody(def, params, ctx, r, inputs);
    } catch (e) {
      onError(e);
      return;
    }
    onOpen(outputs);
  };
  try {
    const r = def.spec.open?.(params, ctx);
    if (isPromiseLike(r)) r.then(start, (e) => (closed ? undefined : onError(e)));
    else start(r);
  } catch (e) {
    onError(e);
  }
  return () => {
    if (closed) return;
    closed = true;
    try {
      ctx.dispose();
    } finally {
      if (opened && def.spec.close) {
        const c = def.spec.close(resource, ctx);
        if (isPromiseLike(c)) c.then(undefined, (e) => console.error(`node '${ctx.node}' (${def.type}): close failed:`, e));
      }
    }
  };
}

/** The operator form: a fresh context per subscription, torn down on complete, error or unsubscribe. */
function standaloneBody(def: AnyNode, params: unknown): unknown {
  const { inputs: ins, outputs: outs } = portNames(def);
  const instance = (inputs: Record<string, Observable<any>>): Observable<Record<string, Observable<any>>> =>
    new Observable<Record<string, Observable<any>>>((subscriber) => {
      const turns = new TurnState('default');
      const ctx = new RunContext({ node: def.type, type: def.type, turns, mode: 'standalone' });
      const stop = openNode(
        def,
        params,
        ctx,
        inputs,
        (outputs) => subscriber.next(outputs),
        (e) => subscriber.error(e),
      );
      return () => {
        turns.close();
        stop();
      };
    });
  // The instance Observable never completes (completing it would close the node), so a port's
  // stream ends when the port's own output ends.
  const portOf = (inst$: Observable<Record<string, Observable<any>>>, port: string): Observable<any> =>
    new Observable<any>((subscriber) => {
      let inner: Subscription | undefined;
      const outer = inst$.subscribe({
        next: (outputs) => {
          inner = outputs[port].subscribe(subscriber);
        },
        error: (e) => subscriber.error(e),
      });
      return () => {
        inner?.unsubscribe();
        outer.unsubscribe();
      };
    });
  const outputsFor = (inputs: Record<string, Observable<any>>): unknown => {
    if (outs.length <= 1) return portOf(instance(inputs), outs[0] ?? 'done');
    // Several outputs share one instance, opened by the first subscriber and closed with the last.
    const shared$ = instance(inputs).pipe(share({ connector: () => new ReplaySubject(1), resetOnRefCountZero: true, resetOnComplete: false }));
    return Object.fromEntries(outs.map((k) => [k, portOf(shared$, k)]));
  };
  if (ins.length === 0) return defer(() => outputsFor({}) as Observable<any>);
  if (ins.length === 1) return (input$: Observable<any>) => outputsFor({ [ins[0]]: input$ });
  return (inputs: Record<string, Observable<any>>) => outputsFor(inputs);
}
