import { existsSync } from 'node:fs';
import { register } from 'node:module';
import { fileURLToPath } from 'node:url';

/*
 * tfjs-core's node bundle (the file `import '@tensorflow/tfjs-core'` loads) has the gradient machinery but no gradient
 * functions: the union package @tensorflow/tfjs registers them from tfjs-core's ESM build, whose relative imports have
 * no file extension and so do not load under plain Node. A one-line resolve hook adds the extension for files inside
 * tfjs-core's dist folder only; the gradient functions register into tfjs's global registry and run their ops on the
 * one global engine, so they serve tensors of the node bundle like its own.
 */

const HOOK = `
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
export async function resolve(specifier, context, next) {
  const parent = context.parentURL;
  if (parent && parent.includes('/@tensorflow/tfjs-core/dist/') && specifier.startsWith('.') && !specifier.endsWith('.js')) {
    const url = new URL(specifier, parent);
    const path = fileURLToPath(url);
    if (existsSync(path + '.js')) return next(url.href + '.js', context);
    if (existsSync(path) && statSync(path).isDirectory()) return next(url.href + '/index.js', context);
  }
  return next(specifier, context);
}`;

let loading: Promise<void> | undefined;

/**
 * Registers tfjs-core's gradient functions (once; later calls return the same promise). Needed before any
 * `tf.grads` / `tf.variableGrads` call when only @tensorflow/tfjs-core is installed.
 *
 * ```ts
 * await registerTfjsGradients();
 * const dx = tf.grad((x) => tf.sum(tf.square(x)))(tf.tensor1d([1, 2])); // [2, 4]
 * ```
 */
export function registerTfjsGradients(): Promise<void> {
  loading ??= (async () => {
    const entry = new URL('../../../../node_modules/@tensorflow/tfjs-core/dist/register_all_gradients.js', import.meta.url);
    const resolved = import.meta.resolve?.('@tensorflow/tfjs-core/dist/register_all_gradients.js') ?? entry.href;
    if (!existsSync(fileURLToPath(resolved))) throw new Error(`tfjs gradients: ${fileURLToPath(resolved)} not found (is @tensorflow/tfjs-core installed?)`);
    register(`data:text/javascript,${encodeURIComponent(HOOK)}`);
    await import(resolved);
  })();
  return loading;
}
