import * as tf from '@tensorflow/tfjs-core';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

/** Which backend is active and why it was chosen. */
export interface BackendReport {
  readonly name: BackendName;
  readonly reason: string;
}

let active: BackendReport | undefined;

/**
 * Initialises the tensor backend once: `OMNIFLOW_BACKEND` or `options.backend` forces one;
 * otherwise tfjs-node-gpu, tfjs-node (optional peers), wasm (the embedded default), cpu.
 *
 * ```ts
 * const { name, reason } = await initBackend();
 * ```
 */
export async function initBackend(options: { backend?: BackendName } = {}): Promise<BackendReport> {
  const forced = options.backend ?? (process.env.OMNIFLOW_BACKEND as BackendName | undefined);
  if (active && (!forced || forced === active.name)) return active;
  tf.enableProdMode();
  const order: BackendName[] = forced ? [forced] : ['tensorflow', 'wasm', 'cpu'];
  const failures: string[] = [];
  for (const name of order) {
    try {
      await loadBackend(name);
      if (!(await tf.setBackend(name))) throw new Error(`tf.setBackend('${name}') returned false`);
      await tf.ready();
      const reason = forced
        ? `forced by ${options.backend ? 'option' : 'OMNIFLOW_BACKEND'}`
        : failures.length ? `first available (${failures.join('; ')})` : 'first available';
      active = { name, reason };
      return active;
    } catch (err) {
      failures.push(`${name}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  throw new Error(`no tensor backend could be initialised: ${failures.join('; ')}`);
}

async function loadBackend(name: BackendName): Promise<void> {
  switch (name) {
    case 'tensorflow': {
      // Optional peers: their installers download libtensorflow, so they are never required.
      const gpu = await import('@tensorflow/tfjs-node-gpu' as string).catch(() => undefined);
      if (!gpu) {
        const cpu = await import('@tensorflow/tfjs-node' as string).catch(() => undefined);
        if (!cpu) throw new Error('neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed');
      }
      return;
    }
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm');
      return;
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu');
      return;
  }
}

/** The backend chosen by initBackend, if any. */
export function activeBackend(): BackendReport | undefined {
  return active;
}
