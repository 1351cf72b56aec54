export * from './caption-model.js';
export * from './caption-options.js';
export * from './audio-file-segments.js';
export * from './caption-batcher.js';
export * from './caption-audio-file.js';
export * from './model-folder-id.js';
export * from './generate-batch.js';
export * from './qwen3-omni-captioner.js';
