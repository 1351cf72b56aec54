/**
 * Compiling a graph: flatten subgraphs, find fusable kernel chains, order the stages, and explain the
 * result as text or a Mermaid diagram.
 *
 * Fusion contract: a node with a `kernel` (one tensor input, one tensor output) may join a chain with its
 * neighbour when the edge between them is the only edge out of the first and the only edge into the
 * second, both are on the same device, and neither the node (`fuse: false`) nor the graph disables it.
 * For every maximal chain of two or more such nodes the planner asks the `fuser` for one operator; if it
 * returns one, the chain runs as ONE stage with no queues inside. Without a fuser nothing fuses.
 */
import type { OperatorFunction } from 'rxjs';
import { defineNode, type AnyNode, type Kernel } from './node.js';
import type { Packet } from './packets.js';
import { describePort, type PortSpec } from './ports.js';
import { formatCapacity, type OverflowPolicy } from './queue.js';
import { flatten, formatPortRef, type FlatEdge, type FlatGraph, type FlatNode, type Graph } from './graph.js';
import { Session, type SessionOptions } from './session.js';

/** One node of a fusable chain, with its kernel already bound to the node's params. */
export interface FusableNode {
  id: string;
  type: string;
  kernel: Kernel;
}

/**
 * Turns a chain of kernels into one stage operator, or declines with `undefined`. An operator that
 * carries a string `description` (what it merged into what) has it printed in the plan.
 */
export type Fuser = (chain: FusableNode[]) => OperatorFunction<Packet, Packet> | undefined;

export interface CompileOptions {
  /** Provided by the runtime (e.g. @omniflow/runtime-gpu) to run kernel chains as one fused stage. */
  fuser?: Fuser;
  /** `false` disables fusion for this compile (as does the graph's own `fuse: false`). */
  fuse?: boolean;
}

/** One unit of execution: a node, or a fused chain of kernel nodes. */
export interface Stage {
  /** Node id, or the member ids joined with '+' for a fused chain. */
  id: string;
  /** The definition the runtime instantiates (a synthetic one for a fused chain). */
  def: AnyNode;
  params: unknown;
  /** Member nodes (one unless fused). */
  members: FlatNode[];
  fused: boolean;
  /** For a fused stage: the fuser operator's `description` of what it runs, if it gave one. */
  fusedOps?: string;
  device: string;
  role: 'source' | 'sink' | 'node';
}

export type RunModeName = 'realtime' | 'batch';

/** Edge as it runs in a mode: batch makes every policy lossless `block`. */
export interface PlanEdge extends FlatEdge {
  declaredPolicy: OverflowPolicy;
}

export interface ExecutionPlan {
  graph: string;
  mode: RunModeName;
  /** Stages in topological order (back-edges ignored). */
  stages: Stage[];
  edges: PlanEdge[];
  /** Text form, one stage and one queue per line. */
  text(): string;
  /** Mermaid `flowchart LR` source; fused stages are drawn as subgraphs. */
  mermaid(): string;
}

/**
 * The compiled form of a graph: stages and queues, ready to start sessions.
 *
 * ```ts
 * const compiled = compile(g, { fuser });
 * console.log(compiled.plan('realtime').text());
 * ```
 */
export class CompiledGraph {
  constructor(
    readonly flat: FlatGraph,
    readonly stages: Stage[],
    readonly edges: FlatEdge[],
  ) {}

  /** A new session of this graph (not started yet). */
  session(options: SessionOptions = {}): Session {
    return new Session(this, options);
  }

  plan(mode: RunModeName = 'batch'): ExecutionPlan {
    const edges: PlanEdge[] = this.edges.map((e) => ({ ...e, declaredPolicy: e.policy, policy: mode === 'batch' ? 'block' : e.policy }));
    const stages = this.stages;
    const name = this.flat.name;
    return {
      graph: name,
      mode,
      stages,
      edges,
      text: () => planText(name, mode, stages, edges),
      mermaid: () => planMermaid(stages, edges),
    };
  }
}

/** Compiles a graph (validating it first): subgraphs inlined, kernel chains fused through `fuser`. */
export function compile(g: Graph<any>, options: CompileOptions = {}): CompiledGraph {
  const flat = flatten(g);
  const fuseAllowed = flat.fuse && options.fuse !== false && options.fuser !== undefined;
  const byId = new Map(flat.nodes.map((n) => [n.id, n]));
  const outEdges = groupBy(flat.edges, (e) => e.from.node);
  const inEdges = groupBy(flat.edges, (e) => e.to.node);
  const device = (n: FlatNode) => n.options.device ?? 'default';
  const fusable = (n: FlatNode) => fuseAllowed && n.def.spec.kernel !== undefined && n.options.fuse !== false;

  // next.get(a) = b when a -> b can be fused.
  const next = new Map<string, string>();
  const hasPrev = new Set<string>();
  for (const n of flat.nodes) {
    if (!fusable(n)) continue;
    const outs = outEdges.get(n.id) ?? [];
    if (outs.length !== 1 || outs[0].backEdge) continue;
    const m = byId.get(outs[0].to.node)!;
    if (!fusable(m) || (inEdges.get(m.id) ?? []).length !== 1 || device(m) !== device(n) || m === n) continue;
    next.set(n.id, m.id);
    hasPrev.add(m.id);
  }

  const stageOf = new Map<string, Stage>();
  const stages: Stage[] = [];
  const chainStart = (id: string) => next.has(id) && !hasPrev.has(id);
  for (const n of flat.nodes) {
    if (stageOf.has(n.id)) continue;
    if (chainStart(n.id)) {
      const chain: FlatNode[] = [n];
      for (let id = next.get(n.id); id !== undefined && !chain.some((c) => c.id === id); id = next.get(id)) chain.push(byId.get(id)!);
      const op = options.fuser!(chain.map((c) => ({ id: c.id, type: c.def.type, kernel: c.def.spec.kernel!(c.params) })));
      if (op) {
        const described = (op as { description?: unknown }).description;
        const stage = fusedStage(chain, op, device(n), typeof described === 'string' ? described : undefined);
        stages.push(stage);
        for (const c of chain) stageOf.set(c.id, stage);
        continue;
      }
    }
    const stage = singleStage(n, device(n));
    stages.push(stage);
    stageOf.set(n.id, stage);
  }

  // Edges between stages; edges inside a fused chain disappear.
  const edges: FlatEdge[] = [];
  for (const e of flat.edges) {
    const a = stageOf.get(e.from.node)!, b = stageOf.get(e.to.node)!;
    if (a === b && a.fused) continue;
    const from = { node: a.id, port: e.from.port }, to = { node: b.id, port: e.to.port };
    edges.push({ ...e, id: `${formatPortRef(from)}->${formatPortRef(to)}`, from, to });
  }
  const renamed = (r: { node: string; port: string }) => ({ node: stageOf.get(r.node)!.id, port: r.port });
  const flatOut: FlatGraph = {
    ...flat,
    inputs: Object.fromEntries(Object.entries(flat.inputs).map(([k, r]) => [k, renamed(r)])),
    outputs: Object.fromEntries(Object.entries(flat.outputs).map(([k, r]) => [k, renamed(r)])),
  };
  return new CompiledGraph(flatOut, topoOrder(stages, edges), edges);
}

function singleStage(n: FlatNode, device: string): Stage {
  const ins = Object.keys(n.def.inputs).length, outs = Object.keys(n.def.outputs).length;
  return { id: n.id, def: n.def, params: n.params, members: [n], fused: false, device, role: ins === 0 ? 'source' : outs === 0 ? 'sink' : 'node' };
}

function fusedStage(chain: FlatNode[], op: OperatorFunction<Packet, Packet>, device: string, fusedOps: string | undefined): Stage {
  const first = chain[0].def, last = chain[chain.length - 1].def;
  const inPort = Object.keys(first.inputs)[0], outPort = Object.keys(last.outputs)[0];
  const def = defineNode({
    type: 'fused',
    description: `fused ${chain.map((c) => c.def.type).join(' -> ')}`,
    inputs: { [inPort]: first.inputs[inPort] as PortSpec },
    outputs: { [outPort]: last.outputs[outPort] as PortSpec },
    operator: () => (input$: any) => input$.pipe(op),
  });
  return { id: chain.map((c) => c.id).join('+'), def, params: {}, members: chain, fused: true, ...(fusedOps !== undefined ? { fusedOps } : {}), device, role: 'node' };
}

function groupBy<T>(xs: T[], key: (x: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const x of xs) {
    const k = key(x);
    if (!m.has(k)) m.set(k, []);
    m.get(k)!.push(x);
  }
  return m;
}

/** Kahn's order over forward edges; ties keep declaration order. */
function topoOrder(stages: Stage[], edges: FlatEdge[]): Stage[] {
  const indeg = new Map(stages.map((s) => [s.id, 0]));
  for (const e of edges) if (!e.backEdge) indeg.set(e.to.node, indeg.get(e.to.node)! + 1);
  const order: Stage[] = [];
  const done = new Set<string>();
  while (order.length < stages.length) {
    const s = stages.find((x) => !done.has(x.id) && indeg.get(x.id) === 0) ?? stages.find((x) => !done.has(x.id))!;
    done.add(s.id);
    order.push(s);
    for (const e of edges) if (!e.backEdge && e.from.node === s.id) indeg.set(e.to.node, indeg.get(e.to.node)! - 1);
  }
  return order;
}

function planText(name: string, mode: RunModeName, stages: Stage[], edges: PlanEdge[]): string {
  const nodes = stages.reduce((a, s) => a + s.members.length, 0);
  const lines = [`plan of graph '${name}' (${mode} mode): ${nodes} nodes in ${stages.length} stages, ${edges.length} queues`, 'stages:'];
  const w = Math.max(...stages.map((s) => s.id.length), 4);
  stages.forEach((s, i) => {
    const what = s.fused ? `fused [${s.members.map((m) => `${m.id}:${m.def.type}`).join(' -> ')}]${s.fusedOps ? ` runs ${s.fusedOps}` : ''}` : s.def.type;
    const ports = [
      ...Object.entries(s.def.inputs).map(([k, p]) => `in ${k}: ${describePort(p as PortSpec)}`),
      ...Object.entries(s.def.outputs).map(([k, p]) => `out ${k}: ${describePort(p as PortSpec)}`),
    ].join('; ');
    lines.push(`  ${String(i + 1).padStart(2)}. ${s.id.padEnd(w)}  ${what}  (${s.role}, device ${s.device}${ports ? `; ${ports}` : ''})`);
  });
  lines.push('queues:');
  const ew = Math.max(...edges.map((e) => e.id.length), 4);
  for (const e of edges) {
    const policy = e.policy === e.declaredPolicy ? e.policy : `${e.policy} (declared ${e.declaredPolicy})`;
    lines.push(`  ${e.id.padEnd(ew)}  capacity ${formatCapacity(e.capacity)}, ${policy}${e.backEdge ? ', back-edge' : ''}${e.budget !== undefined ? `, budget ${e.budget / 1000}ms` : ''}`);
  }
  return lines.join('\n');
}

function planMermaid(stages: Stage[], edges: PlanEdge[]): string {
  const ids = new Map<string, string>();
  let k = 0;
  const mid = (nodeId: string) => {
    if (!ids.has(nodeId)) ids.set(nodeId, `n${k++}`);
    return ids.get(nodeId)!;
  };
  const label = (s: string) => s.replace(/"/g, '#quot;');
  const lines = ['flowchart LR'];
  stages.forEach((s, i) => {
    if (s.fused) {
      lines.push(`  subgraph s${i}["fused: ${label(s.members.map((m) => m.id).join(' + '))} (${s.device})"]`);
      s.members.forEach((m, j) => {
        lines.push(`    ${mid(m.id)}["${label(m.id)}<br/>${label(m.def.type)}"]`);
        if (j > 0) lines.push(`    ${mid(s.members[j - 1].id)} --> ${mid(m.id)}`);
      });
      lines.push('  end');
    } else {
      const shape = s.role === 'source' ? ['([', '])'] : s.role === 'sink' ? ['[/', '/]'] : ['[', ']'];
      lines.push(`  ${mid(s.id)}${shape[0]}"${label(s.id)}<br/>${label(s.def.type)}"${shape[1]}`);
    }
  });
  const stageById = new Map(stages.map((s) => [s.id, s]));
  for (const e of edges) {
    const a = stageById.get(e.from.node)!, b = stageById.get(e.to.node)!;
    const from = mid(a.fused ? a.members[a.members.length - 1].id : a.id);
    const to = mid(b.fused ? b.members[0].id : b.id);
    const arrow = e.backEdge ? '-.->' : '-->';
    lines.push(`  ${from} ${arrow}|"${label(`${e.from.port}→${e.to.port} ${formatCapacity(e.capacity)} ${e.policy}`)}"| ${to}`);
  }
  return lines.join('\n');
}
