import * as tf from '@tensorflow/tfjs-core';
import type { Packet, TensorPacket } from '@omniflow/core';
import { concatMap, type OperatorFunction } from 'rxjs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parentPort, Worker, workerData } from 'node:worker_threads';
import { initBackend, type BackendName, type BackendReport } from './backend.js';
import { forwardTensor } from './ownership.js';
import type { HostTensor } from './safetensors.js';

/** Named host tensors crossing the thread boundary (their buffers are transferred, not copied). */
export type HostTensors = Record<string, HostTensor>;

/**
 * What a stage module exports: a function over tensors (run inside one tf.tidy in the worker),
 * and optionally `setup` to load weights once before the first call.
 */
export interface StageModule {
  setup?(options: unknown): void | Promise<void>;
  [fn: string]: unknown;
}

export interface WorkerStageOptions {
  /** Path or file URL of the stage module (.js, or .ts when tsx is installed). */
  readonly module: string | URL;
  /** Name of the exported stage function (default `stage`). */
  readonly export?: string;
  /** Backend for the worker's own tfjs instance (default: the usual initBackend choice). */
  readonly backend?: BackendName;
  /** Passed to the module's `setup` once (structured-cloned). */
  readonly setup?: unknown;
}

interface Request {
  id: number;
  inputs: HostTensors;
}
type Reply = { id: number; outputs: HostTensors } | { id: number; error: string } | { ready: BackendReport } | { fatal: string };

/**
 * A stage running on a worker thread with its own tfjs instance: the wasm backend is single-threaded
 * in Node, so a second backend in a worker is how a second core gets used. A postMessage round trip
 * costs 60–110 µs here, so give it whole chunks (a frame of Code2Wav, a batch), never single ops.
 *
 * The stage module exports `stage(inputs: Record<string, tf.Tensor>) => tf.Tensor | Record<string, tf.Tensor>`;
 * it runs inside one tf.tidy, and its outputs come back as host tensors.
 *
 * ```ts
 * const stage = await WorkerStage.start({ module: new URL('./code2wav-stage.js', import.meta.url) });
 * const { out } = await stage.run({ codes: { dtype: 'int32', shape: [16, 4], data: codes } });
 * await stage.close();
 * ```
 */
export class WorkerStage {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (o: HostTensors) => void; reject: (e: Error) => void }>();
  private failure: Error | undefined;

  private constructor(private readonly worker: Worker, readonly backend: BackendReport, readonly module: string) {
    worker.on('message', (m: Reply) => {
      if (!('id' in m)) return;
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      if ('error' in m) p?.reject(new Error(`worker stage ${this.module}: ${m.error}`));
      else p?.resolve(m.outputs);
    });
    const failAll = (err: Error) => {
      this.failure ??= err;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    worker.on('error', (err) => failAll(new Error(`worker stage ${this.module} crashed: ${err.message}`, { cause: err })));
    worker.on('exit', (code) => failAll(new Error(`worker stage ${this.module} exited (code ${code})`)));
  }

  /** Starts the worker, initialises its backend, imports the module and runs its `setup`. */
  static async start(options: WorkerStageOptions): Promise<WorkerStage> {
    const moduleUrl = options.module instanceof URL ? options.module.href : options.module.startsWith('file:') ? options.module : pathToFileURL(options.module).href;
    const self = import.meta.url;
    // From TypeScript sources (tests, `npm run bench`) the worker needs tsx to load .ts modules;
    // a built package loads plain .js and needs nothing.
    const needsTsx = self.endsWith('.ts') || moduleUrl.endsWith('.ts');
    let tsx = '';
    if (needsTsx) {
      try {
        tsx = pathToFileURL(join(dirname(createRequire(import.meta.url).resolve('tsx/package.json')), 'dist/esm/api/index.mjs')).href;
      } catch (err) {
        throw new Error(`WorkerStage: ${moduleUrl} is TypeScript but tsx is not installed`, { cause: err });
      }
    }
    const bootstrap = [
      '(async () => {',
      tsx ? `  (await import(${JSON.stringify(tsx)})).register();` : '',
      `  const runtime = await import(${JSON.stringify(self)});`,
      '  await runtime.serveWorkerStage();',
      '})().catch((e) => require("node:worker_threads").parentPort.postMessage({ fatal: String(e && e.stack || e) }));',
    ].join('\n');
    const worker = new Worker(bootstrap, {
      eval: true,
      execArgv: needsTsx ? ['--conditions=source'] : [],
      workerData: { module: moduleUrl, export: options.export ?? 'stage', backend: options.backend, setup: options.setup },
    });
    const ready = await new Promise<BackendReport>((resolve, reject) => {
      const onMessage = (m: Reply) => {
        if ('ready' in m) resolve(m.ready);
        else if ('fatal' in m) reject(new Error(`worker stage ${moduleUrl} failed to start: ${m.fatal}`));
        else return;
        worker.off('message', onMessage);
      };
      worker.on('message', onMessage);
      worker.once('error', (err) => reject(new Error(`worker stage ${moduleUrl} failed to start: ${err.message}`, { cause: err })));
    }).catch(async (err) => {
      await worker.terminate();
      throw err;
    });
    return new WorkerStage(worker, ready, moduleUrl);
  }

  /**
   * Runs the stage on one chunk. The input buffers are transferred to the worker (they become
   * unusable here); pass copies if you still need them. Calls are answered in order.
   */
  run(inputs: HostTensors): Promise<HostTensors> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const transfer = [...new Set(Object.values(inputs).map((t) => t.data.buffer as ArrayBuffer))];
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, inputs } satisfies Request, transfer);
    });
  }

  /**
   * An RxJS stage that sends each tensor packet's tensor to the worker as input `input` (default `x`)
   * and forwards the stage's output `output` (default `out`) in the same packet envelope, in order;
   * the input tensor is disposed. Other packets pass through in their place. Crossing threads means
   * one download and one upload per packet, so use it for chunky stages.
   *
   * ```ts
   * codes$.pipe(stage.operator());
   * ```
   */
  operator(options: { input?: string; output?: string } = {}): OperatorFunction<Packet, Packet> {
    const input = options.input ?? 'x', output = options.output ?? 'out';
    return concatMap(async (p: Packet) => {
      if (p.kind !== 'tensor') return p;
      const t = p.tensor as unknown as tf.Tensor;
      const data = (await t.data()) as Float32Array | Int32Array;
      const outs = await this.run({ [input]: { dtype: t.dtype === 'int32' ? 'int32' : 'float32', shape: [...t.shape], data } });
      const y = outs[output];
      if (!y) throw new Error(`worker stage ${this.module}: no output '${output}' (got ${Object.keys(outs).join(', ')})`);
      return forwardTensor(p as TensorPacket, tf.tensor(y.data, y.shape, y.dtype));
    });
  }

  /** Calls waiting for an answer. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Whether the worker keeps the process alive (it does after `start`). A stage kept around between bursts of work
   * can be unref'd while idle and ref'd while calls are in flight, so a program that never closes it still exits.
   *
   * ```ts
   * stage.keepAlive(false); // idle: the process may exit
   * ```
   */
  keepAlive(on: boolean): void {
    if (on) this.worker.ref();
    else this.worker.unref();
  }

  /** Stops the worker (its tensors go with it). */
  async close(): Promise<void> {
    this.failure ??= new Error(`worker stage ${this.module} is closed`);
    await this.worker.terminate();
  }
}

/** Worker side of {@link WorkerStage}; runs inside the worker thread. Not for direct use. */
export async function serveWorkerStage(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('serveWorkerStage must run inside a worker thread');
  const data = workerData as { module: string; export: string; backend?: BackendName; setup?: unknown };
  const report = await initBackend(data.backend ? { backend: data.backend } : {});
  const mod = (await import(data.module)) as StageModule;
  const fn = mod[data.export];
  if (typeof fn !== 'function') throw new Error(`${data.module} has no exported function '${data.export}' (exports: ${Object.keys(mod).join(', ')})`);
  if (mod.setup) await mod.setup(data.setup);
  port.on('message', (req: Request) => {
    try {
      const outputs: HostTensors = {};
      tf.tidy(() => {
        const ins: Record<string, tf.Tensor> = {};
        for (const [k, t] of Object.entries(req.inputs)) ins[k] = tf.tensor(t.data, t.shape, t.dtype);
        const out = (fn as (x: Record<string, tf.Tensor>) => tf.Tensor | Record<string, tf.Tensor>)(ins);
        const named = out instanceof tf.Tensor ? { out } : out;
        for (const [k, t] of Object.entries(named)) {
          // wasm hands out a fresh copy of its heap; the cpu backend hands out its own storage,
          // which must not be transferred away.
          const d = t.dataSync() as Float32Array | Int32Array;
          outputs[k] = { dtype: t.dtype === 'int32' ? 'int32' : 'float32', shape: [...t.shape], data: report.name === 'wasm' ? d : d.slice() };
        }
      });
      port.postMessage({ id: req.id, outputs } satisfies Reply, Object.values(outputs).map((t) => t.data.buffer as ArrayBuffer));
    } catch (err) {
      port.postMessage({ id: req.id, error: (err as Error).message } satisfies Reply);
    }
  });
  port.postMessage({ ready: report } satisfies Reply);
}
