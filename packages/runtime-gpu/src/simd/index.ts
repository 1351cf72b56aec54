export * from './wasm-emitter.js';
export * from './matmul-module.js';
export * from './matmul-blocked-module.js';
export * from './bf16.js';
export * from './mat-mul-small.js';
