export * from './program.js';
export * from './inputs.js';
export * from './caption-store.js';
export * from './caption-run.js';
export * from './caption-queue.js';
export * from './caption-model-loader.js';
export * from './progress.js';
