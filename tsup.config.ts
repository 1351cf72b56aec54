import { defineConfig } from 'tsup';

// One ESM build per workspace package, with type declarations. Every bare import stays external: packages
// resolve their dependencies at run time (which keeps the wasm backend's .wasm lookup inside its own package,
// and CommonJS libraries such as wavefile load through Node's own interop). Declarations resolve sibling
// packages through the `source` condition, so no package waits for another's dist/.
const packages = ['core', 'runtime-gpu', 'nodes', 'cli', 'server'];

const nodesWorkerEntries = {
  'code2wav-worker': 'packages/nodes/src/models/qwen3-omni/code2wav-worker.ts', // Code2WavPipeline
  'log-mel-worker': 'packages/nodes/src/caption/log-mel-worker.ts', // the captioner's feature prefetch
  'gradient-stage': 'packages/nodes/src/training/gradient-stage.ts', // train-captioner --workers
};

export default defineConfig(
  packages.map((name) => ({
    name,
    // nodes also ships the modules its worker threads load by file name, next to index.js.
    entry: { index: `packages/${name}/src/index.ts`, ...(name === 'nodes' ? nodesWorkerEntries : {}) },
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
