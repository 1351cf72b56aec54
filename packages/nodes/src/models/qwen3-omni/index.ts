export * from './config.js';
export * from './audio-encoder.js';
