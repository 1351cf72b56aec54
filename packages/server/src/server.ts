import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import type { Qwen3OmniModel } from '@omniflow/nodes';
import type { AssistantGraphOptions } from './assistant-graph.js';
import type { LatencyBudgets } from './latency-report.js';
import { RealtimeConnection } from './realtime-connection.js';

export interface AssistantServerOptions {
  /** A loaded Qwen3-Omni Instruct model (thinker, audio encoder, talker, Code2Wav; vision for video). Borrowed. */
  readonly model: Qwen3OmniModel;
  /** Default 127.0.0.1. */
  readonly host?: string;
  /** Default 8080; 0 picks a free port. */
  readonly port?: number;
  /** TLS certificate and key (PEM): serve https/wss directly. Behind a TLS-terminating proxy, leave it out. */
  readonly tls?: { readonly cert: string | Buffer; readonly key: string | Buffer };
  /** Folder served at / (the browser page); none by default. */
  readonly staticDir?: string;
  /** Largest client message, bytes (default 1 MiB); bigger ones get an error event. */
  readonly maxMessageBytes?: number;
  /** Most concurrent connections (default 64); more are refused with close code 1013. */
  readonly maxConnections?: number;
  /** Voice of new sessions (default: the checkpoint's first speaker). */
  readonly voice?: string;
  /** Most answer tokens (default 256; session.update may lower it). */
  readonly maxOutputTokens?: number;
  readonly respond?: AssistantGraphOptions['respond'];
  /** Latency budgets each turn's report is checked against (default: response 800 ms, barge-in 100 ms). */
  readonly budgets?: Partial<LatencyBudgets>;
  /** Per-turn latency reports and connection events (default: none). */
  readonly log?: (line: string) => void;
}

export interface AssistantServer {
  /** ws:// or wss:// URL of the realtime endpoint. */
  readonly url: string;
  /** http(s):// URL of the page. */
  readonly httpUrl: string;
  readonly port: number;
  /** Live connections. */
  readonly connections: ReadonlySet<RealtimeConnection>;
  /** Closes every connection (freeing their sessions) and stops listening. */
  close(): Promise<void>;
}

const REALTIME_PATHS = new Set(['/v1/realtime', '/realtime']);
const MIME: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wav': 'audio/wav' };

/**
 * Starts the assistant server: the realtime WebSocket endpoint at /v1/realtime (OpenAI Realtime-compatible; `?model=`
 * is accepted and ignored) and, with `staticDir`, the browser page at /. One graph session per connection.
 *
 * ```ts
 * const model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer() });
 * const server = await startAssistantServer({ model, port: 8080, staticDir: 'examples/assistant', log: console.log });
 * console.log(`open ${server.httpUrl}`);
 * ```
 */
export async function startAssistantServer(options: AssistantServerOptions): Promise<AssistantServer> {
  const model = options.model;
  if (!model.audioEncoder || !model.talker || !model.code2wav) {
    throw new Error('startAssistantServer: the model needs its audio encoder, talker and Code2Wav (an Instruct checkpoint loaded with thinker, audio_tower, talker, code2wav)');
  }
  const speakers = Object.keys(model.config.talker_config?.speaker_id ?? {});
  const voice = (options.voice ?? speakers[0] ?? 'ethan').toLowerCase();
  if (speakers.length && !speakers.includes(voice)) throw new Error(`startAssistantServer: unknown voice '${voice}'; this checkpoint has ${speakers.join(', ')}`);
  const maxMessageBytes = options.maxMessageBytes ?? 1 << 20;
  const maxConnections = options.maxConnections ?? 64;
  const staticRoot = options.staticDir ? resolve(options.staticDir) : undefined;

  const handler = (req: IncomingMessage, res: ServerResponse) => void serveStatic(staticRoot, req, res);
  const http: HttpServer = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createHttpServer(handler);
  // ws closes a connection whose frame exceeds maxPayload (1009); below that, oversized messages get an error event.
  const wss = new WebSocketServer({ noServer: true, maxPayload: Math.max(4 * maxMessageBytes, 1 << 20) });
  const connections = new Set<RealtimeConnection>();
  let nextId = 0;

  http.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (!REALTIME_PATHS.has(path)) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (connections.size >= maxConnections) {
        ws.close(1013, `server full (${maxConnections} connections)`);
        return;
      }
      const id = `conn_${(++nextId).toString(36)}`;
      const c = new RealtimeConnection(ws, { model, maxMessageBytes, voice, maxOutputTokens: options.maxOutputTokens ?? 256, ...(options.respond ? { respond: options.respond } : {}), ...(options.log ? { log: options.log } : {}), ...(options.budgets ? { budgets: options.budgets } : {}) }, id);
      connections.add(c);
      options.log?.(`${id} connected (${connections.size} open)`);
      ws.on('close', () => {
        c.close();
        connections.delete(c);
        options.log?.(`${id} closed (${connections.size} open)`);
      });
    });
  });

  await new Promise<void>((ok, fail) => {
    http.once('error', fail);
    http.listen(options.port ?? 8080, options.host ?? '127.0.0.1', () => ok());
  });
  const address = http.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const secure = !!options.tls;
  return {
    url: `${secure ? 'wss' : 'ws'}://${host}:${address.port}/v1/realtime`,
    httpUrl: `${secure ? 'https' : 'http'}://${host}:${address.port}/`,
    port: address.port,
    connections,
    close: async () => {
      for (const c of connections) c.close();
      connections.clear();
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((ok) => wss.close(() => ok()));
      await new Promise<void>((ok) => {
        http.close(() => ok());
        http.closeAllConnections?.();
      });
    },
  };
}

async function serveStatic(root: string | undefined, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
  if (!root || (req.method !== 'GET' && req.method !== 'HEAD')) {
    res.writeHead(root ? 405 : 404, { 'content-type': 'text/plain' }).end(root ? 'method not allowed\n' : 'not found\n');
    return;
  }
  const file = normalize(join(root, path === '/' ? 'index.html' : path));
  if (file !== root && !file.startsWith(root + sep)) {
    res.writeHead(403, { 'content-type': 'text/plain' }).end('forbidden\n');
    return;
  }
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': MIME[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache' }).end(req.method === 'HEAD' ? undefined : body);
  } catch {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  }
}
