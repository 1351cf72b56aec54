import { describe, expect, it } from 'vitest';
import { Graph, graph, GraphValidationError, type GraphJson } from './graph.js';
import { NodeRegistry } from './registry.js';
import { passThrough, resampleTo24k, scaleFor, slowSink, speaker24k, tensorSourceFor, textSource, toneSource } from './test-nodes.js';
import { TensorTracker } from './testing/tracked-tensor.js';
import type { Fuser } from './plan.js';
import { map } from 'rxjs';
import type { Packet, TensorPacket } from './packets.js';

const registry = new NodeRegistry([textSource, toneSource, passThrough, slowSink, resampleTo24k, speaker24k]);

/** Loads JSON and returns the validation messages it produced. */
function issuesOf(json: unknown): string[] {
  try {
    Graph.fromJSON(json as GraphJson, registry);
    return [];
  } catch (e) {
    expect(e).toBeInstanceOf(GraphValidationError);
    return (e as GraphValidationError).issues.map((i) => `${i.code} ${i.node ?? '-'}.${i.port ?? '-'}: ${i.message}`);
  }
}

const good: GraphJson = {
  omniflow: 1,
  name: 'good',
  nodes: [
    { id: 'src', type: 'textSource', params: { n: 3 } },
    { id: 'mid', type: 'passThrough', fuse: false },
    { id: 'sink', type: 'slowSink', params: { ms: 1 }, device: 'cpu' },
  ],
  edges: [
    { from: 'src.text', to: 'mid.in', capacity: '4', policy: 'drop-oldest' },
    { from: 'mid.out', to: 'sink.in', capacity: '400ms', budget: '100ms' },
  ],
};

describe('graph JSON', () => {
  it('round-trips losslessly', () => {
    const g = Graph.fromJSON(JSON.stringify(good), registry);
    expect(g.toJSON()).toEqual(good);
    expect(Graph.fromJSON(g.toJSON(), registry).toJSON()).toEqual(good);
    expect(JSON.stringify(g.toJSON())).toBe(JSON.stringify(good));
  });

  it('round-trips a builder graph with subgraphs and exports', () => {
    const inner = graph('inner').add('a', passThrough).add('b', passThrough).connect('a.out', 'b.in').input('x', 'a.in').output('y', 'b.out');
    const g = graph('outer').add('src', textSource, { n: 2 }).add('sub', inner).add('sink', slowSink, { ms: 1 }).connect('src.text', 'sub.x').connect('sub.y', 'sink.in');
    const json = g.toJSON();
    expect(json.nodes[1]).toEqual({ id: 'sub', graph: { omniflow: 1, name: 'inner', nodes: [{ id: 'a', type: 'passThrough' }, { id: 'b', type: 'passThrough' }], edges: [{ from: 'a.out', to: 'b.in' }], inputs: { x: 'a.in' }, outputs: { y: 'b.out' } } });
    expect(Graph.fromJSON(json, registry).toJSON()).toEqual(json);
  });

  it('reports malformed JSON with the path', () => {
    expect(issuesOf('{ nodes: [')[0]).toMatch(/^bad-json -\.-: not valid JSON/);
    expect(issuesOf({ nodes: [{ id: 'a b', type: 'x' }], edges: [] })).toEqual(["bad-json -.-: nodes.0.id: node id must look like 'mel' or 'audio_encoder'"]);
    expect(issuesOf({ nodes: [], edges: [{ from: 'src', to: 'b.in' }] })).toEqual(["bad-json -.-: edges.0.from: expected 'node.port'"]);
    expect(issuesOf({ nodes: [{ id: 'a' }], edges: [] })).toEqual(["bad-json -.-: nodes.0: a node needs exactly one of 'type' or 'graph'"]);
  });

  it('reports a duplicate node id', () => {
    expect(issuesOf({ ...good, nodes: [...good.nodes, { id: 'mid', type: 'passThrough' }] })).toEqual(["duplicate-node mid.-: node 'mid' is defined more than once"]);
    expect(() => graph('g').add('a', passThrough).add('a', passThrough)).toThrow("graph 'g': node 'a' is already defined");
  });

  it('reports an unknown node type', () => {
    expect(issuesOf({ ...good, nodes: [good.nodes[0], { id: 'mid', type: 'pasThrough' }, good.nodes[2]] })).toEqual([
      "unknown-node-type mid.-: node 'mid': unknown node type 'pasThrough' (registered: passThrough, resampleTo24k, slowSink, speaker24k, textSource, toneSource)",
    ]);
  });

  it('reports bad params with the zod message', () => {
    expect(issuesOf({ ...good, nodes: [{ id: 'src', type: 'textSource', params: { n: -1 } }, good.nodes[1], good.nodes[2]] })).toEqual([
      "bad-params src.n: node 'src' (textSource): bad params: n: Too small: expected number to be >0",
    ]);
    expect(issuesOf({ ...good, nodes: [good.nodes[0], good.nodes[1], { id: 'sink', type: 'slowSink' }] })).toEqual([
      "bad-params sink.ms: node 'sink' (slowSink): bad params: ms: Invalid input: expected number, received undefined",
    ]);
  });

  it('reports an unconnected required input', () => {
    expect(issuesOf({ ...good, edges: [good.edges[0]] })).toEqual(["unconnected-input sink.in: node 'sink' (slowSink) input 'in' (any) is required but not connected"]);
  });

  it('reports incompatible port kinds and audio formats', () => {
    expect(
      issuesOf({
        nodes: [
          { id: 'tone', type: 'toneSource', params: { chunks: 1 } },
          { id: 'spk', type: 'speaker24k' },
        ],
        edges: [{ from: 'tone.audio', to: 'spk.audio' }],
      }),
    ).toEqual([
      "incompatible-ports spk.audio: edge tone.audio -> spk.audio: node 'spk' input 'audio' (audio 24000Hz) cannot take node 'tone' output 'audio' (audio 16000Hz 1ch): audio sample rate 16000 Hz does not match 24000 Hz",
    ]);
    expect(
      issuesOf({
        nodes: [
          { id: 'src', type: 'textSource', params: { n: 1 } },
          { id: 'spk', type: 'speaker24k' },
        ],
        edges: [{ from: 'src.text', to: 'spk.audio' }],
      }),
    ).toEqual(["incompatible-ports spk.audio: edge src.text -> spk.audio: node 'spk' input 'audio' (audio 24000Hz) cannot take node 'src' output 'text' (text): kind text does not match audio"]);
  });

  it('reports unknown nodes and ports on edges', () => {
    expect(issuesOf({ ...good, edges: [good.edges[0], { from: 'mid.output', to: 'sink.in' }] })).toEqual([
      "unknown-port mid.output: edge mid.output -> sink.in: node 'mid' (passThrough) has no output 'output' (outputs: out)",
    ]);
    expect(issuesOf({ ...good, edges: [...good.edges, { from: 'ghost.out', to: 'sink.in' }] })).toEqual(["unknown-node ghost.out: edge ghost.out -> sink.in: no node 'ghost' in graph 'good'"]);
  });

  it('reports an illegal cycle and accepts a declared back-edge', () => {
    const cyclic: GraphJson = {
      nodes: [
        { id: 'src', type: 'textSource', params: { n: 1 } },
        { id: 'a', type: 'passThrough' },
        { id: 'b', type: 'passThrough' },
        { id: 'sink', type: 'slowSink', params: { ms: 1 } },
      ],
      edges: [
        { from: 'src.text', to: 'a.in' },
        { from: 'a.out', to: 'b.in' },
        { from: 'b.out', to: 'a.in' },
        { from: 'b.out', to: 'sink.in' },
      ],
    };
    expect(issuesOf(cyclic)).toEqual(["illegal-cycle b.out: node 'b' output 'out' closes an illegal cycle a -> b -> a (mark one edge of the cycle { backEdge: true })"]);
    const declared = { ...cyclic, edges: cyclic.edges.map((e) => (e.from === 'b.out' && e.to === 'a.in' ? { ...e, backEdge: true } : e)) };
    expect(issuesOf(declared)).toEqual([]);
  });

  it('reports bad edge options', () => {
    expect(issuesOf({ ...good, edges: [{ ...good.edges[0], capacity: '4 parsecs' }, good.edges[1]] })).toEqual([
      `bad-edge-options mid.in: edge src.text -> mid.in: capacity: expected a number of packets or a size like '400ms', '2s', '64kB', got "4 parsecs"`,
    ]);
  });

  it('names issues inside subgraphs by path', () => {
    const inner = graph('inner').add('a', passThrough).add('b', slowSink, { ms: -1 }).connect('a.out', 'b.in').input('x', 'a.in');
    const g = graph('outer').add('src', textSource, { n: 1 }).add('sub', inner).connect('src.text', 'sub.x');
    expect(g.validate().map((i) => [i.code, i.node, i.port])).toEqual([['bad-params', 'sub/b', 'ms']]);
  });
});

describe('plan', () => {
  it('prints stages and queues as text and Mermaid', () => {
    const g = Graph.fromJSON(good, registry);
    const text = g.plan({ mode: 'realtime' }).text();
    expect(text).toContain("plan of graph 'good' (realtime mode): 3 nodes in 3 stages, 2 queues");
    expect(text).toContain('src.text->mid.in  capacity 4, drop-oldest');
    expect(text).toContain('mid.out->sink.in  capacity 400ms, block, budget 100ms');
    expect(g.plan({ mode: 'batch' }).text()).toContain('capacity 4, block (declared drop-oldest)');
    const mermaid = g.plan().mermaid();
    expect(mermaid.split('\n')).toEqual([
      'flowchart LR',
      '  n0(["src<br/>textSource"])',
      '  n1["mid<br/>passThrough"]',
      '  n2[/"sink<br/>slowSink"/]',
      '  n0 -->|"text→in 4 block"| n1',
      '  n1 -->|"out→in 400ms block"| n2',
    ]);
  });

  it('fuses maximal kernel chains through the fuser and runs them as one stage', async () => {
    const tracker = new TensorTracker();
    const src = tensorSourceFor(tracker);
    const a = scaleFor(tracker, 'scaleA'), b = scaleFor(tracker, 'scaleB'), c = scaleFor(tracker, 'scaleC'), d = scaleFor(tracker, 'scaleD');
    const seen: string[][] = [];
    const fuser: Fuser = (chain) => {
      seen.push(chain.map((n) => `${n.id}:${n.type}`));
      return map((p) => {
        const tp = p as TensorPacket;
        let x = tp.tensor;
        for (const n of chain) {
          const y = n.kernel(x);
          if (y !== x) x.dispose();
          x = y;
        }
        return { ...tp, tensor: x };
      });
    };
    const g = graph('fusion')
      .add('src', src, { n: 5 })
      .add('a', a)
      .add('b', b)
      .add('c', c, {}, { fuse: false })
      .add('d', d)
      .add('sink', slowSink, { ms: 1 })
      .connect('src.x', 'a.x')
      .connect('a.y', 'b.x')
      .connect('b.y', 'c.x')
      .connect('c.y', 'd.x')
      .connect('d.y', 'sink.in');
    // Without a fuser nothing fuses.
    expect(g.plan().stages.map((s) => s.id)).toEqual(['src', 'a', 'b', 'c', 'd', 'sink']);
    const plan = g.plan({ fuser });
    expect(seen).toEqual([['a:scaleA', 'b:scaleB']]);
    expect(plan.stages.map((s) => s.id)).toEqual(['src', 'a+b', 'c', 'd', 'sink']);
    expect(plan.text()).toContain('a+b   fused [a:scaleA -> b:scaleB]');
    expect(plan.mermaid()).toContain('subgraph s1["fused: a + b (default)"]');
    expect(g.plan({ fuser, fuse: false }).stages.length).toBe(6);
    // A fuser's operator may say what it runs; the plan prints it after the group.
    const describing: Fuser = (chain) => Object.assign(map((p: Packet) => p), { description: `${chain.length} kernels as one op` });
    expect(g.plan({ fuser: describing }).stages[1].fusedOps).toBe('2 kernels as one op');
    expect(g.plan({ fuser: describing }).text()).toContain('a+b   fused [a:scaleA -> b:scaleB] runs 2 kernels as one op');

    const session = await g.run({ fuser });
    const m = session.metrics();
    expect(m.nodes.find((n) => n.id === 'a+b')?.packetsIn).toBe(5);
    expect(m.edges.map((e) => e.id)).toEqual(['src.x->a+b.x', 'a+b.y->c.x', 'c.y->d.x', 'd.y->sink.in']);
    expect(tracker.created).toBe(5 * 5); // source + 4 kernels per packet
    expect(tracker.live).toBe(5); // the sink keeps (does not dispose) what it received
  });

  it('does not fuse across fan-out or devices', () => {
    const tracker = new TensorTracker();
    const src = tensorSourceFor(tracker);
    const a = scaleFor(tracker, 'scaleA'), b = scaleFor(tracker, 'scaleB'), c = scaleFor(tracker, 'scaleC');
    const fuser: Fuser = () => map((p) => p);
    const fanout = graph('fanout').add('src', src, { n: 1 }).add('a', a).add('b', b).add('c', c).add('s1', slowSink, { ms: 1 }).add('s2', slowSink, { ms: 1 })
      .connect('src.x', 'a.x').connect('a.y', 'b.x').connect('a.y', 'c.x').connect('b.y', 's1.in').connect('c.y', 's2.in');
    expect(fanout.plan({ fuser }).stages.every((s) => !s.fused)).toBe(true);
    const devices = graph('devices').add('src', src, { n: 1 }).add('a', a, {}, { device: 'cpu' }).add('b', b, {}, { device: 'gpu:0' }).add('s', slowSink, { ms: 1 })
      .connect('src.x', 'a.x').connect('a.y', 'b.x').connect('b.y', 's.in');
    expect(devices.plan({ fuser }).stages.every((s) => !s.fused)).toBe(true);
  });
});
