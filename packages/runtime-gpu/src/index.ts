export * from './backend.js';
export * from './checkpoint.js';
export * from './safetensors.js';
export * from './testing/fixtures.js';
