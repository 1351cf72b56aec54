import WebSocket from 'ws';
import { float32ToPcm16Base64, pcm16Base64ToFloat32, WIRE_SAMPLE_RATE } from '../protocol.js';

/** A server event as received, with its arrival time (performance.now()). */
export type ServerEvent = { type: string; at: number; [key: string]: any };

/**
 * A minimal Realtime client for tests and the bench: records every event, waits for events, appends audio.
 *
 * ```ts
 * const c = await RealtimeTestClient.connect(server.url);
 * await c.sendAudio(speech(1.0), { chunkMs: 20 });
 * const done = await c.waitFor('response.done');
 * ```
 */
export class RealtimeTestClient {
  readonly events: ServerEvent[] = [];
  private waiters: { test: (e: ServerEvent) => boolean; resolve: (e: ServerEvent) => void }[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const e = { ...JSON.parse(String(data)), at: performance.now() } as ServerEvent;
      this.events.push(e);
      for (const w of [...this.waiters]) if (w.test(e)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(e);
      }
    });
  }

  static connect(url: string, options: WebSocket.ClientOptions = {}): Promise<RealtimeTestClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, options);
      const c = new RealtimeTestClient(ws);
      ws.once('open', () => resolve(c));
      ws.once('error', reject);
    });
  }

  send(event: Record<string, unknown>): void {
    this.ws.send(JSON.stringify(event));
  }

  /** The first event of `type` (matching `test`) after index `from` of `events`, waiting up to `timeoutMs`. */
  waitFor(type: string, test: (e: ServerEvent) => boolean = () => true, { from = 0, timeoutMs = 20_000 } = {}): Promise<ServerEvent> {
    const seen = this.events.slice(from).find((e) => e.type === type && test(e));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no '${type}' event within ${timeoutMs} ms; got: ${this.events.map((e) => e.type).slice(-12).join(', ')}`)), timeoutMs);
      this.waiters.push({ test: (e) => e.type === type && test(e), resolve: (e) => (clearTimeout(timer), resolve(e)) });
    });
  }

  of(type: string): ServerEvent[] {
    return this.events.filter((e) => e.type === type);
  }

  /** Audio received for `responseId` (or all), as float samples. */
  audio(responseId?: string): Float32Array {
    const parts = this.of('response.output_audio.delta').filter((e) => !responseId || e.response_id === responseId).map((e) => pcm16Base64ToFloat32(e.delta));
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((o, p) => (out.set(p, o), o + p.length), 0);
    return out;
  }

  /** Appends 24 kHz audio in `chunkMs` pieces; with `realtime`, paced like a microphone. */
  async sendAudio(samples: Float32Array, { chunkMs = 20, realtime = false } = {}): Promise<void> {
    const n = Math.round((chunkMs * WIRE_SAMPLE_RATE) / 1000);
    const t0 = performance.now();
    for (let i = 0, k = 0; i < samples.length; i += n, k++) {
      this.send({ type: 'input_audio_buffer.append', audio: float32ToPcm16Base64(samples.subarray(i, i + n)) });
      if (realtime) {
        const wait = t0 + (k + 1) * chunkMs - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.ws.readyState === WebSocket.CLOSED) return resolve();
      this.ws.once('close', () => resolve());
      this.ws.close();
    });
  }
}

/**
 * Test speech at 24 kHz: `silenceBefore` s of silence, `seconds` of a voiced-like signal (a 150 Hz harmonic buzz with
 * a slow envelope, around -12 dBFS), `silenceAfter` s of silence.
 *
 * ```ts
 * const pcm = speechLike(0.8, { silenceAfter: 0.6 });
 * ```
 */
export function speechLike(seconds: number, { silenceBefore = 0.1, silenceAfter = 0.6, f0 = 150, seed = 1 } = {}): Float32Array {
  const r = WIRE_SAMPLE_RATE;
  const out = new Float32Array(Math.round((silenceBefore + seconds + silenceAfter) * r));
  const start = Math.round(silenceBefore * r);
  const len = Math.round(seconds * r);
  let x = seed;
  for (let i = 0; i < len; i++) {
    const t = i / r;
    let s = 0;
    for (let h = 1; h <= 8; h++) s += Math.sin(2 * Math.PI * f0 * h * t + h * seed) / h;
    x = (x * 1103515245 + 12345) % 2147483648;
    const noise = (x / 2147483648 - 0.5) * 0.05;
    const env = 0.6 + 0.4 * Math.sin(2 * Math.PI * 3 * t);
    out[start + i] = 0.12 * env * s + noise;
  }
  return out;
}
