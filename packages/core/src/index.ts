export * from './packets.js';
