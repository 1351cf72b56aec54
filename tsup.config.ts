import { defineConfig } from 'tsup';

// One ESM build per workspace package, with type declarations. Every bare import stays external: packages
// resolve their dependencies at run time (which keeps the wasm backend's .wasm lookup inside its own package,
// and CommonJS libraries such as wavefile load through Node's own interop). Declarations resolve sibling
// packages through the `source` condition, so no package waits for another's dist/.
const packages = ['core', 'runtime-gpu', 'nodes', 'cli', 'server'];

export default defineConfig(
  packages.map((name) => ({
    name,
    // nodes also ships the worker modules of Code2WavPipeline and of the captioner's log-mel, which worker threads
    // load by file name.
    entry: {
      index: `packages/${name}/src/index.ts`,
      ...(name === 'nodes' ? { 'code2wav-worker': 'packages/nodes/src/models/qwen3-omni/code2wav-worker.ts', 'log-mel-worker': 'packages/nodes/src/caption/log-mel-worker.ts' } : {}),
    },
    outDir: `packages/${name}/dist`,
    format: ['esm'],
    dts: { compilerOptions: { customConditions: ['source'] } },
    tsconfig: 'tsconfig.base.json',
    sourcemap: true,
    clean: true,
    target: 'node20',
    platform: 'node',
    external: [/^[^./]/],
  })),
);
