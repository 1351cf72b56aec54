export * from './config.js';
export * from './audio-encoder.js';
export * from './code2wav.js';
export * from './code2wav-stream.js';
export * from './vision-encoder.js';
