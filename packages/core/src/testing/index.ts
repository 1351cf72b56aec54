export * from './tracked-tensor.js';
export * from './virtual-time.js';
