import * as tf from '@tensorflow/tfjs-core';
import { createRequire } from 'node:module';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';
const BACKENDS: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

/** Which backend is active, why it was chosen, and what was tried before it. */
export interface BackendReport {
  readonly name: BackendName;
  readonly reason: string;
  /** For `tensorflow`: which package provides it (`@tensorflow/tfjs-node-gpu` or `@tensorflow/tfjs-node`). */
  readonly provider?: string;
  /** Backends tried before this one, each with the reason it was not usable. */
  readonly skipped: ReadonlyArray<{ readonly name: BackendName; readonly error: string }>;
}

export interface BackendOptions {
  /** Force one backend (overrides `OMNIFLOW_BACKEND`); no fallback when forced. */
  readonly backend?: BackendName;
  /** Folder (or URL prefix) holding tfjs-backend-wasm's .wasm files, when bundling moved them. */
  readonly wasmPaths?: string;
}

let active: BackendReport | undefined;

/**
 * Initialises the tensor backend: `options.backend` or `OMNIFLOW_BACKEND` forces one; otherwise the
 * first that works of `tensorflow` (the optional peers @tensorflow/tfjs-node-gpu, then
 * @tensorflow/tfjs-node), `wasm` (the embedded default) and `cpu`. Returns the choice and the reason.
 * Calling it again returns the active backend unless a different one is forced.
 *
 * ```ts
 * const { name, reason } = await initBackend(); // e.g. 'wasm', 'first available (tensorflow: neither … is installed)'
 * ```
 */
export async function initBackend(options: BackendOptions = {}): Promise<BackendReport> {
  const fromEnv = process.env.OMNIFLOW_BACKEND?.trim() || undefined;
  const forced = options.backend ?? fromEnv;
  if (forced !== undefined && !BACKENDS.includes(forced as BackendName)) {
    const source = options.backend ? 'initBackend({ backend })' : 'OMNIFLOW_BACKEND';
    throw new Error(`${source} is '${forced}', which is not one of ${BACKENDS.join(', ')}`);
  }
  if (active && (!forced || forced === active.name)) return active;
  // Callers racing at startup share one initialisation.
  if (pending && !forced) return pending;
  const run = select(forced as BackendName | undefined, options);
  if (!forced) pending = run.finally(() => (pending = undefined));
  return run;
}

let pending: Promise<BackendReport> | undefined;

async function select(forced: BackendName | undefined, options: BackendOptions): Promise<BackendReport> {
  tf.enableProdMode();
  const order: BackendName[] = forced ? [forced] : [...BACKENDS];
  const skipped: Array<{ name: BackendName; error: string }> = [];
  for (const name of order) {
    try {
      const provider = await loadBackend(name, options);
      if (!(await tf.setBackend(name))) throw new Error(`tf.setBackend('${name}') returned false`);
      await tf.ready();
      const reason = forced
        ? `forced by ${options.backend ? 'option' : 'OMNIFLOW_BACKEND'}`
        : skipped.length ? `first available (${skipped.map((s) => `${s.name}: ${s.error}`).join('; ')})` : 'first available';
      active = { name, reason, skipped, ...(provider ? { provider } : {}) };
      return active;
    } catch (err) {
      skipped.push({ name, error: (err as Error).message.split('\n')[0] });
    }
  }
  throw new Error(`no tensor backend could be initialised: ${skipped.map((s) => `${s.name}: ${s.error}`).join('; ')}`);
}

async function loadBackend(name: BackendName, options: BackendOptions): Promise<string | undefined> {
  switch (name) {
    case 'tensorflow': {
      // Optional peers: their installers download libtensorflow, so they are never required.
      const require = createRequire(import.meta.url);
      for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
        try {
          require.resolve(pkg);
        } catch {
          continue; // not installed
        }
        try {
          await import(pkg as string);
          return pkg;
        } catch (err) {
          // Installed but broken (e.g. its native addon was never built) is worth saying, not hiding.
          throw new Error(`${pkg} is installed but failed to load: ${(err as Error).message.split('\n')[0]}`, { cause: err });
        }
      }
      throw new Error('neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed');
    }
    case 'wasm': {
      const wasm = await import('@tensorflow/tfjs-backend-wasm');
      if (options.wasmPaths) wasm.setWasmPaths(options.wasmPaths.endsWith('/') ? options.wasmPaths : `${options.wasmPaths}/`);
      return undefined;
    }
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu');
      return undefined;
  }
}

/** The backend chosen by initBackend, if any. */
export function activeBackend(): BackendReport | undefined {
  return active;
}
