import { defineConfig } from 'tsup';

// One ESM build per workspace package, with type declarations. @tensorflow/* stays external
// (it is a dependency), which keeps the wasm backend's .wasm lookup inside its own package.
const packages = ['core', 'runtime-gpu', 'nodes', 'cli', 'server'];

export default defineConfig(
  packages.map((name) => ({
    name,
    // nodes also ships Code2WavPipeline's worker module, which worker threads load by file name.
    entry: { index: `packages/${name}/src/index.ts`, ...(name === 'nodes' ? { 'code2wav-worker': 'packages/nodes/src/models/qwen3-omni/code2wav-worker.ts' } : {}) },
    outDir: `packages/${name}/dist`,
    format: ['esm'],
    dts: { compilerOptions: { customConditions: [] } },
    tsconfig: 'tsconfig.base.json',
    sourcemap: true,
    clean: true,
    target: 'node20',
    platform: 'node',
    external: [/^@omniflow\//, /^@tensorflow\//],
  })),
);
