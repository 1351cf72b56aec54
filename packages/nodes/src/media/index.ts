export * from './ffmpeg-binary.js';
export * from './ffmpeg-process.js';
export * from './media-info.js';
export * from './decode-audio.js';
export * from './decode-video.js';
export * from './log-mel.js';
export * from './vision-preprocess.js';
