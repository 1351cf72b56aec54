export * from './backend.js';
export * from './checkpoint.js';
export * from './kv-cache.js';
export * from './ownership.js';
export * from './safetensors.js';
export * from './testing/fixtures.js';
export * from './qwen3-omni-tensors.js';
export * from './worker-stage.js';
