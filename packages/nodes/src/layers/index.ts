export * from './linear.js';
export * from './layer-norm.js';
export * from './gelu.js';
export * from './conv.js';
export * from './fused-linear.js';
export * from './encoder-attention.js';
export * from './vision-rope.js';
