export * from './media/index.js';
export * from './layers/index.js';
export * from './models/qwen3-omni/index.js';
export * from './parity/index.js';
export * from './caption/index.js';
export * from './training/index.js';
