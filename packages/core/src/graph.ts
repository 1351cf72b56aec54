/**
 * Graphs: a typed builder, a JSON form that round-trips losslessly, validation that names the culprit
 * node and port, and subgraphs.
 *
 * ```ts
 * const g = graph('demo')
 *   .add('tone', sineSource, { frequency: 440 })
 *   .add('gain', gain, { db: -6 })
 *   .add('meter', levelMeter)
 *   .connect('tone.audio', 'gain.audio', { capacity: '200ms', policy: 'block' })
 *   .connect('gain.audio', 'meter.audio');
 * g.validate(); // [] — or issues naming node and port
 * ```
 */
import { z } from 'zod';
import { NodeParamsError, type AnyNode } from './node.js';
import { describePort, portMismatch, type PortMap, type PortSpec } from './ports.js';
import { OVERFLOW_POLICIES, parseCapacity, type Capacity, type CapacityInput, type OverflowPolicy } from './queue.js';
import type { NodeRegistry } from './registry.js';
import { compile, type CompiledGraph, type CompileOptions, type ExecutionPlan, type RunModeName } from './plan.js';
import type { Session, SessionOptions } from './session.js';

/** Per-node options in a graph. */
export interface NodeOptions {
  /** `false` keeps this node out of fused stages. */
  fuse?: boolean;
  /** Where the node runs, e.g. 'cpu', 'gpu:0', 'worker:1'; kernels fuse only within one device. */
  device?: string;
}

/** Per-edge options: the bounded queue and its policy. */
export interface EdgeOptions {
  /** Default 16 packets. */
  capacity?: CapacityInput;
  /** Default 'block'. Batch mode treats every policy as 'block' (lossless). */
  policy?: OverflowPolicy;
  /** Declares the edge as the one that closes a cycle (e.g. talker codes fed back). */
  backEdge?: boolean;
  /** Real-time latency budget: a packet older than this (media clock minus pts) when it would be delivered is dropped as late. */
  budget?: CapacityInput;
}

export const DEFAULT_CAPACITY: Capacity = { amount: 16, unit: 'packets' };
export const DEFAULT_POLICY: OverflowPolicy = 'block';

export interface PortRef {
  readonly node: string;
  readonly port: string;
}

interface NodeEntry {
  id: string;
  type: string;
  def?: AnyNode;
  graph?: Graph<any>;
  /** Subgraph given inline (builder `add(id, graph)` or JSON `graph`), not by registered type. */
  inline: boolean;
  params?: Record<string, unknown>;
  options: NodeOptions;
}

interface EdgeEntry {
  from: PortRef;
  to: PortRef;
  options: EdgeOptions;
}

/** The JSON form of a graph. */
export interface GraphJson {
  omniflow?: 1;
  name?: string;
  nodes: GraphNodeJson[];
  edges: GraphEdgeJson[];
  /** Exported inputs: name → 'node.port'. */
  inputs?: Record<string, string>;
  /** Exported outputs: name → 'node.port'. */
  outputs?: Record<string, string>;
  /** `false` disables fusion for the whole graph. */
  fuse?: boolean;
}
export interface GraphNodeJson {
  id: string;
  type?: string;
  graph?: GraphJson;
  params?: Record<string, unknown>;
  fuse?: boolean;
  device?: string;
}
export interface GraphEdgeJson {
  from: string;
  to: string;
  capacity?: number | string;
  policy?: OverflowPolicy;
  backEdge?: boolean;
  budget?: number | string;
}

export type IssueCode =
  | 'bad-json'
  | 'duplicate-node'
  | 'unknown-node-type'
  | 'bad-params'
  | 'unknown-node'
  | 'unknown-port'
  | 'bad-edge-options'
  | 'unconnected-input'
  | 'incompatible-ports'
  | 'illegal-cycle';

/** One validation finding; `node` and `port` name the culprit. */
export interface GraphIssue {
  readonly code: IssueCode;
  readonly node?: string;
  readonly port?: string;
  readonly message: string;
}

export class GraphValidationError extends Error {
  constructor(
    readonly graphName: string,
    readonly issues: readonly GraphIssue[],
  ) {
    super(`graph '${graphName}' is invalid:\n${issues.map((i) => `  - [${i.code}] ${i.message}`).join('\n')}`);
    this.name = 'GraphValidationError';
  }
}

const NODE_ID = /^[A-Za-z_][\w-]*$/;

/** Splits 'node.port'. */
export function parsePortRef(ref: string): PortRef {
  const i = ref.lastIndexOf('.');
  if (i <= 0 || i === ref.length - 1) throw new Error(`expected 'node.port', got '${ref}'`);
  return { node: ref.slice(0, i), port: ref.slice(i + 1) };
}
export const formatPortRef = (r: PortRef): string => `${r.node}.${r.port}`;

// ---- typed builder helpers -------------------------------------------------------------------------

/** The ports of a node as the builder tracks them. */
export interface NodePorts {
  in: PortMap;
  out: PortMap;
}
type NodeMap = Record<string, NodePorts>;
/** 'node.port' of any output in the graph so far. */
export type OutputRef<N> = string extends keyof N
  ? `${string}.${string}`
  : { [K in keyof N & string]: N[K] extends NodePorts ? `${K}.${keyof N[K]['out'] & string}` : never }[keyof N & string];
/** 'node.port' of any input in the graph so far. */
export type InputRef<N> = string extends keyof N
  ? `${string}.${string}`
  : { [K in keyof N & string]: N[K] extends NodePorts ? `${K}.${keyof N[K]['in'] & string}` : never }[keyof N & string];
type ParamsIn<D extends AnyNode> = z.input<D['params']>;

/**
 * A dataflow graph under construction. Builder methods return the same graph, with its type extended,
 * so `connect` only accepts existing 'node.port' names.
 */
export class Graph<N extends NodeMap = any> {
  readonly name: string;
  private readonly nodeEntries = new Map<string, NodeEntry>();
  private readonly edgeEntries: EdgeEntry[] = [];
  private readonly exportedInputs: Record<string, string> = {};
  private readonly exportedOutputs: Record<string, string> = {};
  /** `false` disables fusion in the whole graph. */
  fuse: boolean | undefined;
  /** Issues found while loading JSON (reported by validate()). */
  private readonly loadIssues: GraphIssue[] = [];

  constructor(name = 'graph') {
    this.name = name;
  }

  /** Adds a node (or a subgraph) with its params. */
  add<Id extends string, D extends AnyNode>(id: Id, def: D, params?: ParamsIn<D>, options?: NodeOptions): Graph<N & { [K in Id]: { in: D['inputs']; out: D['outputs'] } }>;
  add<Id extends string>(id: Id, subgraph: Graph<any>, options?: NodeOptions): Graph<N & { [K in Id]: { in: PortMap; out: PortMap } }>;
  add(id: string, what: AnyNode | Graph<any>, a?: unknown, b?: NodeOptions): Graph<any> {
    if (!NODE_ID.test(id)) throw new Error(`graph '${this.name}': node id must look like 'mel' or 'audio_encoder' (letters, digits, _ and -), got '${id}'`);
    if (this.nodeEntries.has(id)) throw new Error(`graph '${this.name}': node '${id}' is already defined`);
    if (what instanceof Graph) {
      this.nodeEntries.set(id, { id, type: what.name, graph: what, inline: true, options: { ...((a as NodeOptions) ?? {}) } });
    } else {
      this.nodeEntries.set(id, { id, type: what.type, def: what, inline: false, params: a as Record<string, unknown> | undefined, options: { ...(b ?? {}) } });
    }
    return this;
  }

  /** Connects an output port to an input port through a bounded queue. */
  connect(from: OutputRef<N>, to: InputRef<N>, options: EdgeOptions = {}): this {
    this.edgeEntries.push({ from: parsePortRef(from), to: parsePortRef(to), options: { ...options } });
    return this;
  }

  /** Exports an inner input port as the graph's input `name` (fed by a session or a parent graph). */
  input(name: string, ref: InputRef<N>): this {
    this.exportedInputs[name] = ref;
    return this;
  }

  /** Exports an inner output port as the graph's output `name`. */
  output(name: string, ref: OutputRef<N>): this {
    this.exportedOutputs[name] = ref;
    return this;
  }

  /** Node ids in insertion order. */
  get nodeIds(): string[] {
    return [...this.nodeEntries.keys()];
  }

  /** @internal */
  entries(): { nodes: NodeEntry[]; edges: EdgeEntry[]; inputs: Record<string, string>; outputs: Record<string, string> } {
    return { nodes: [...this.nodeEntries.values()], edges: this.edgeEntries, inputs: this.exportedInputs, outputs: this.exportedOutputs };
  }

  /** Input and output ports of the graph as a node (its exports), with the inner ports' specs. */
  exportedPorts(): { inputs: PortMap; outputs: PortMap } {
    const inputs: PortMap = {};
    const outputs: PortMap = {};
    for (const [name, ref] of Object.entries(this.exportedInputs)) {
      const spec = this.portSpec(safeRef(ref), 'in');
      if (spec) inputs[name] = spec;
    }
    for (const [name, ref] of Object.entries(this.exportedOutputs)) {
      const spec = this.portSpec(safeRef(ref), 'out');
      if (spec) outputs[name] = spec;
    }
    return { inputs, outputs };
  }

  /** The spec of `node.port` (input or output side), following subgraph exports. */
  portSpec(ref: PortRef | undefined, side: 'in' | 'out'): PortSpec | undefined {
    if (!ref) return undefined;
    const n = this.nodeEntries.get(ref.node);
    if (!n) return undefined;
    if (n.def) return (side === 'in' ? n.def.inputs : n.def.outputs)[ref.port];
    if (n.graph) {
      const inner = (side === 'in' ? n.graph.exportedInputs : n.graph.exportedOutputs)[ref.port];
      return inner === undefined ? undefined : n.graph.portSpec(safeRef(inner), side);
    }
    return undefined;
  }

  /**
   * Checks the whole graph before anything runs. Returns every issue found (empty when valid).
   *
   * ```ts
   * for (const issue of g.validate()) console.error(issue.message);
   * ```
   */
  validate(): GraphIssue[] {
    const issues: GraphIssue[] = [...this.loadIssues];
    const { nodes, edges } = this.entries();

    for (const n of nodes) {
      if (n.def) {
        try {
          n.def.parseParams(n.params, n.id);
        } catch (e) {
          if (!(e instanceof NodeParamsError)) throw e;
          issues.push({ code: 'bad-params', node: n.id, port: e.issues[0]?.path, message: e.message });
        }
      } else if (n.graph) {
        for (const i of n.graph.validate())
          issues.push({ ...i, node: i.node ? `${n.id}/${i.node}` : n.id, message: `in subgraph '${n.id}': ${i.message}` });
      }
    }

    const connectedInputs = new Set<string>();
    for (const e of edges) {
      const label = `edge ${formatPortRef(e.from)} -> ${formatPortRef(e.to)}`;
      const fromNode = this.nodeEntries.get(e.from.node);
      const toNode = this.nodeEntries.get(e.to.node);
      if (!fromNode) issues.push({ code: 'unknown-node', node: e.from.node, port: e.from.port, message: `${label}: no node '${e.from.node}' in graph '${this.name}'` });
      if (!toNode) issues.push({ code: 'unknown-node', node: e.to.node, port: e.to.port, message: `${label}: no node '${e.to.node}' in graph '${this.name}'` });
      connectedInputs.add(formatPortRef(e.to));
      try {
        if (e.options.capacity !== undefined) parseCapacity(e.options.capacity);
        if (e.options.budget !== undefined) parseCapacity(e.options.budget);
        if (e.options.policy !== undefined && !OVERFLOW_POLICIES.includes(e.options.policy))
          throw new Error(`policy must be one of ${OVERFLOW_POLICIES.join(', ')}, got '${e.options.policy}'`);
      } catch (err) {
        issues.push({ code: 'bad-edge-options', node: e.to.node, port: e.to.port, message: `${label}: ${(err as Error).message}` });
      }
      if (!fromNode || !toNode || (!fromNode.def && !fromNode.graph) || (!toNode.def && !toNode.graph)) continue;
      const out = this.portSpec(e.from, 'out');
      const inp = this.portSpec(e.to, 'in');
      if (!out) issues.push({ code: 'unknown-port', node: e.from.node, port: e.from.port, message: `${label}: node '${e.from.node}' (${fromNode.type}) has no output '${e.from.port}' (outputs: ${this.portList(fromNode, 'out')})` });
      if (!inp) issues.push({ code: 'unknown-port', node: e.to.node, port: e.to.port, message: `${label}: node '${e.to.node}' (${toNode.type}) has no input '${e.to.port}' (inputs: ${this.portList(toNode, 'in')})` });
      if (out && inp) {
        const why = portMismatch(out, inp);
        if (why)
          issues.push({
            code: 'incompatible-ports',
            node: e.to.node,
            port: e.to.port,
            message: `${label}: node '${e.to.node}' input '${e.to.port}' (${describePort(inp)}) cannot take node '${e.from.node}' output '${e.from.port}' (${describePort(out)}): ${why}`,
          });
      }
    }

    for (const [name, ref] of Object.entries(this.exportedInputs)) {
      const r = safeRef(ref);
      if (!r || !this.portSpec(r, 'in')) issues.push({ code: 'unknown-port', node: r?.node, port: r?.port, message: `graph input '${name}': no input port '${ref}' in graph '${this.name}'` });
      else connectedInputs.add(formatPortRef(r));
    }
    for (const [name, ref] of Object.entries(this.exportedOutputs)) {
      const r = safeRef(ref);
      if (!r || !this.portSpec(r, 'out')) issues.push({ code: 'unknown-port', node: r?.node, port: r?.port, message: `graph output '${name}': no output port '${ref}' in graph '${this.name}'` });
    }

    for (const n of nodes) {
      const ins = n.def ? n.def.inputs : n.graph ? n.graph.exportedPorts().inputs : {};
      for (const [port, spec] of Object.entries(ins as PortMap)) {
        if (!spec.optional && !connectedInputs.has(`${n.id}.${port}`))
          issues.push({ code: 'unconnected-input', node: n.id, port, message: `node '${n.id}' (${n.type}) input '${port}' (${describePort(spec)}) is required but not connected` });
      }
    }

    issues.push(...this.cycleIssues());
    return issues;
  }

  /** Throws {@link GraphValidationError} listing every issue, if any. */
  assertValid(): this {
    const issues = this.validate();
    if (issues.length > 0) throw new GraphValidationError(this.name, issues);
    return this;
  }

  private portList(n: NodeEntry, side: 'in' | 'out'): string {
    const map = n.def ? (side === 'in' ? n.def.inputs : n.def.outputs) : n.graph ? n.graph.exportedPorts()[side === 'in' ? 'inputs' : 'outputs'] : {};
    return Object.keys(map).join(', ') || 'none';
  }

  /** Cycles made of edges not declared `backEdge` are illegal. */
  private cycleIssues(): GraphIssue[] {
    const next = new Map<string, EdgeEntry[]>();
    for (const e of this.edgeEntries) {
      if (e.options.backEdge) continue;
      if (!next.has(e.from.node)) next.set(e.from.node, []);
      next.get(e.from.node)!.push(e);
    }
    const state = new Map<string, 'open' | 'done'>();
    const issues: GraphIssue[] = [];
    const path: EdgeEntry[] = [];
    const visit = (id: string): void => {
      state.set(id, 'open');
      for (const e of next.get(id) ?? []) {
        const s = state.get(e.to.node);
        if (s === 'open') {
          const start = path.findIndex((p) => p.from.node === e.to.node);
          const loop = [...path.slice(start < 0 ? path.length : start), e];
          const names = [...loop.map((p) => p.from.node), e.to.node].join(' -> ');
          issues.push({
            code: 'illegal-cycle',
            node: e.from.node,
            port: e.from.port,
            message: `node '${e.from.node}' output '${e.from.port}' closes an illegal cycle ${names} (mark one edge of the cycle { backEdge: true })`,
          });
        } else if (s === undefined) {
          path.push(e);
          visit(e.to.node);
          path.pop();
        }
      }
      state.set(id, 'done');
    };
    for (const id of this.nodeEntries.keys()) if (!state.has(id)) visit(id);
    return issues;
  }

  /** Validates and compiles (subgraphs inlined, kernel chains fused when a `fuser` is given). */
  compile(options: CompileOptions = {}): CompiledGraph {
    return compile(this, options);
  }

  /**
   * The execution plan: stages (fused groups), queues and devices, as `.text()` and `.mermaid()`.
   *
   * ```ts
   * console.log(g.plan({ mode: 'realtime' }).mermaid());
   * ```
   */
  plan(options: CompileOptions & { mode?: RunModeName } = {}): ExecutionPlan {
    return this.compile(options).plan(options.mode ?? 'batch');
  }

  /** A new session (compiled, validated, not started): subscribe to outputs and events, then `start()`. */
  session(options: SessionOptions & CompileOptions = {}): Session {
    return this.compile(options).session(options);
  }

  /**
   * Runs a session to completion and returns it (for its metrics).
   *
   * ```ts
   * const session = await g.run({ mode: 'batch' });
   * console.log(session.report());
   * ```
   */
  async run(options: SessionOptions & CompileOptions = {}): Promise<Session> {
    const s = this.session(options);
    await s.start();
    return s;
  }

  /**
   * The JSON form. `Graph.fromJSON(g.toJSON(), registry).toJSON()` equals `g.toJSON()`.
   *
   * ```ts
   * writeFileSync('demo.graph.json', JSON.stringify(g.toJSON(), null, 2));
   * ```
   */
  toJSON(): GraphJson {
    const json: GraphJson = { omniflow: 1, name: this.name, nodes: [], edges: [] };
    for (const n of this.nodeEntries.values()) {
      const node: GraphNodeJson = { id: n.id };
      if (n.inline && n.graph) node.graph = n.graph.toJSON();
      else node.type = n.type;
      if (n.params !== undefined) node.params = n.params;
      if (n.options.fuse !== undefined) node.fuse = n.options.fuse;
      if (n.options.device !== undefined) node.device = n.options.device;
      json.nodes.push(node);
    }
    for (const e of this.edgeEntries) {
      const edge: GraphEdgeJson = { from: formatPortRef(e.from), to: formatPortRef(e.to) };
      const o = e.options;
      if (o.capacity !== undefined) edge.capacity = typeof o.capacity === 'object' ? formatCapacityInput(o.capacity) : o.capacity;
      if (o.policy !== undefined) edge.policy = o.policy;
      if (o.backEdge !== undefined) edge.backEdge = o.backEdge;
      if (o.budget !== undefined) edge.budget = typeof o.budget === 'object' ? formatCapacityInput(o.budget) : o.budget;
      json.edges.push(edge);
    }
    if (Object.keys(this.exportedInputs).length > 0) json.inputs = { ...this.exportedInputs };
    if (Object.keys(this.exportedOutputs).length > 0) json.outputs = { ...this.exportedOutputs };
    if (this.fuse !== undefined) json.fuse = this.fuse;
    return json;
  }

  /**
   * Loads a graph from its JSON form (an object or a JSON string). Node types come from `registry`.
   * Throws {@link GraphValidationError} listing every problem (malformed JSON, unknown types, bad params,
   * unconnected inputs, port mismatches, cycles) unless `{ validate: false }`.
   *
   * ```ts
   * const g = Graph.fromJSON(readFileSync('demo.graph.json', 'utf8'), new NodeRegistry([sineSource, gain]));
   * ```
   */
  static fromJSON(input: GraphJson | string, registry: NodeRegistry, options: { validate?: boolean } = {}): Graph<any> {
    let raw: unknown = input;
    if (typeof input === 'string') {
      try {
        raw = JSON.parse(input);
      } catch (e) {
        throw new GraphValidationError('(json)', [{ code: 'bad-json', message: `not valid JSON: ${(e as Error).message}` }]);
      }
    }
    const parsed = GraphJsonSchema.safeParse(raw);
    if (!parsed.success) {
      const name = typeof (raw as GraphJson)?.name === 'string' ? (raw as GraphJson).name! : '(json)';
      throw new GraphValidationError(
        name,
        parsed.error.issues.map((i) => ({ code: 'bad-json' as const, message: `${i.path.map(String).join('.') || '(root)'}: ${i.message}` })),
      );
    }
    const g = Graph.build(parsed.data as GraphJson, registry);
    if (options.validate ?? true) g.assertValid();
    return g;
  }

  private static build(json: GraphJson, registry: NodeRegistry): Graph<any> {
    const g = new Graph<any>(json.name);
    for (const n of json.nodes) {
      const options: NodeOptions = {};
      if (n.fuse !== undefined) options.fuse = n.fuse;
      if (n.device !== undefined) options.device = n.device;
      if (g.nodeEntries.has(n.id)) {
        g.loadIssues.push({ code: 'duplicate-node', node: n.id, message: `node '${n.id}' is defined more than once` });
        continue;
      }
      if (n.graph) {
        g.nodeEntries.set(n.id, { id: n.id, type: n.graph.name ?? n.id, graph: Graph.build(n.graph, registry), inline: true, options });
        continue;
      }
      const entry = registry.get(n.type!);
      if (entry === undefined) {
        const known = registry.types();
        g.loadIssues.push({ code: 'unknown-node-type', node: n.id, message: `node '${n.id}': unknown node type '${n.type}' (registered: ${known.join(', ') || 'none'})` });
        g.nodeEntries.set(n.id, { id: n.id, type: n.type!, inline: false, params: n.params, options });
      } else if (entry instanceof Graph) {
        g.nodeEntries.set(n.id, { id: n.id, type: n.type!, graph: entry, inline: false, options });
      } else {
        g.nodeEntries.set(n.id, { id: n.id, type: n.type!, def: entry, inline: false, params: n.params, options });
      }
    }
    for (const e of json.edges) {
      const options: EdgeOptions = {};
      if (e.capacity !== undefined) options.capacity = e.capacity;
      if (e.policy !== undefined) options.policy = e.policy;
      if (e.backEdge !== undefined) options.backEdge = e.backEdge;
      if (e.budget !== undefined) options.budget = e.budget;
      g.edgeEntries.push({ from: parsePortRef(e.from), to: parsePortRef(e.to), options });
    }
    Object.assign(g.exportedInputs, json.inputs ?? {});
    Object.assign(g.exportedOutputs, json.outputs ?? {});
    if (json.fuse !== undefined) g.fuse = json.fuse;
    return g;
  }
}

function safeRef(ref: string): PortRef | undefined {
  try {
    return parsePortRef(ref);
  } catch {
    return undefined;
  }
}

function formatCapacityInput(c: Capacity): string {
  return c.unit === 'packets' ? `${c.amount}` : c.unit === 'bytes' ? `${c.amount}B` : `${c.amount}us`;
}

/**
 * Starts a graph.
 *
 * ```ts
 * const g = graph('captions').add('src', wavFile, { path: 'talk.wav' });
 * ```
 */
export function graph(name?: string): Graph<Record<never, never>> {
  return new Graph<Record<never, never>>(name);
}

const portRefString = z.string().regex(/^[A-Za-z_][\w-]*\.[^.\s]+$/, "expected 'node.port'");
const capacityJson = z.union([z.number().positive(), z.string().min(1)]);

/** zod schema of {@link GraphJson}. */
export const GraphJsonSchema: z.ZodType<GraphJson> = z.lazy(() =>
  z
    .object({
      omniflow: z.literal(1).optional(),
      name: z.string().optional(),
      nodes: z.array(
        z
          .object({
            id: z.string().regex(NODE_ID, "node id must look like 'mel' or 'audio_encoder'"),
            type: z.string().min(1).optional(),
            graph: GraphJsonSchema.optional(),
            params: z.record(z.string(), z.unknown()).optional(),
            fuse: z.boolean().optional(),
            device: z.string().optional(),
          })
          .strict()
          .refine((n) => (n.type === undefined) !== (n.graph === undefined), { message: "a node needs exactly one of 'type' or 'graph'" }),
      ),
      edges: z.array(
        z
          .object({
            from: portRefString,
            to: portRefString,
            capacity: capacityJson.optional(),
            policy: z.enum(OVERFLOW_POLICIES as [OverflowPolicy, ...OverflowPolicy[]]).optional(),
            backEdge: z.boolean().optional(),
            budget: capacityJson.optional(),
          })
          .strict(),
      ),
      inputs: z.record(z.string(), portRefString).optional(),
      outputs: z.record(z.string(), portRefString).optional(),
      fuse: z.boolean().optional(),
    })
    .strict(),
) as z.ZodType<GraphJson>;

// ---- flattening: subgraphs inlined, params parsed, edge options resolved -------------------------

export interface FlatNode {
  /** Unique id; nodes of subgraph 'asr' are 'asr/mel', etc. */
  id: string;
  def: AnyNode;
  params: unknown;
  options: NodeOptions;
}
export interface FlatEdge {
  id: string;
  from: PortRef;
  to: PortRef;
  capacity: Capacity;
  policy: OverflowPolicy;
  backEdge: boolean;
  budget?: number;
}
export interface FlatGraph {
  name: string;
  nodes: FlatNode[];
  edges: FlatEdge[];
  inputs: Record<string, PortRef>;
  outputs: Record<string, PortRef>;
  fuse: boolean;
}

/** Validates, then inlines subgraphs into one flat list of nodes and edges. */
export function flatten(g: Graph<any>): FlatGraph {
  g.assertValid();
  const nodes: FlatNode[] = [];
  const edges: FlatEdge[] = [];
  const walk = (graph: Graph<any>, prefix: string): { inputs: Record<string, PortRef>; outputs: Record<string, PortRef> } => {
    const { nodes: ns, edges: es, inputs, outputs } = graph.entries();
    const subs = new Map<string, { inputs: Record<string, PortRef>; outputs: Record<string, PortRef> }>();
    for (const n of ns) {
      if (n.graph) subs.set(n.id, walk(n.graph, `${prefix}${n.id}/`));
      else nodes.push({ id: `${prefix}${n.id}`, def: n.def!, params: n.def!.parseParams(n.params, `${prefix}${n.id}`), options: n.options });
    }
    const resolve = (r: PortRef, side: 'in' | 'out'): PortRef => {
      const sub = subs.get(r.node);
      if (sub) return (side === 'in' ? sub.inputs : sub.outputs)[r.port];
      return { node: `${prefix}${r.node}`, port: r.port };
    };
    for (const e of es) {
      const from = resolve(e.from, 'out');
      const to = resolve(e.to, 'in');
      edges.push({
        id: `${formatPortRef(from)}->${formatPortRef(to)}`,
        from,
        to,
        capacity: e.options.capacity !== undefined ? parseCapacity(e.options.capacity) : DEFAULT_CAPACITY,
        policy: e.options.policy ?? DEFAULT_POLICY,
        backEdge: e.options.backEdge ?? false,
        ...(e.options.budget !== undefined ? { budget: parseCapacity(e.options.budget).amount } : {}),
      });
    }
    return {
      inputs: Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, resolve(parsePortRef(v), 'in')])),
      outputs: Object.fromEntries(Object.entries(outputs).map(([k, v]) => [k, resolve(parsePortRef(v), 'out')])),
    };
  };
  const exports = walk(g, '');
  return { name: g.name, nodes, edges, ...exports, fuse: g.fuse ?? true };
}
