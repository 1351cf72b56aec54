/**
 * The node registry: node types by name, so a graph can be loaded from JSON. Graphs can be registered
 * too; a JSON node of that type becomes a subgraph.
 */
import type { AnyNode } from './node.js';
import type { Graph } from './graph.js';

export type RegistryEntry = AnyNode | Graph<any>;

/**
 * ```ts
 * const registry = new NodeRegistry([sineSource, gain, meter]);
 * const g = Graph.fromJSON(json, registry);
 * ```
 */
export class NodeRegistry {
  private readonly entries = new Map<string, RegistryEntry>();

  constructor(entries: Iterable<AnyNode> = []) {
    for (const e of entries) this.register(e);
  }

  /** Adds a node type; a second, different definition under the same name is an error. */
  register(def: AnyNode): this {
    return this.put(def.type, def);
  }

  /** Adds a graph under `type`: JSON nodes of that type become subgraphs. */
  registerGraph(type: string, graph: Graph<any>): this {
    return this.put(type, graph);
  }

  get(type: string): RegistryEntry | undefined {
    return this.entries.get(type);
  }

  has(type: string): boolean {
    return this.entries.has(type);
  }

  types(): string[] {
    return [...this.entries.keys()].sort();
  }

  private put(type: string, entry: RegistryEntry): this {
    const existing = this.entries.get(type);
    if (existing && existing !== entry) throw new Error(`NodeRegistry: type '${type}' is already registered with a different definition`);
    this.entries.set(type, entry);
    return this;
  }
}
