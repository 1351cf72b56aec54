export * from './protocol.js';
export * from './conversation.js';
export * from './user-turn.node.js';
export * from './respond.node.js';
export * from './assistant-graph.js';
export * from './latency-report.js';
export * from './realtime-connection.js';
export * from './server.js';
