import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni, type Qwen3OmniModel } from '@omniflow/nodes';
import { float32ToPcm16Base64, pcm16Base64ToFloat32 } from './protocol.js';
import { startAssistantServer, type AssistantServer } from './server.js';
import { speechLike } from './testing/client.js';

/*
 * The `openai` package's own realtime client (openai/realtime/ws), unchanged but for its base URL, against the local
 * server. The client always dials wss://, so the server runs with a self-signed localhost certificate.
 */

const cert = readFileSync(new URL('./testing/localhost-cert.pem', import.meta.url));
const key = readFileSync(new URL('./testing/localhost-key.pem', import.meta.url));

describe('the openai package realtime client against the omniflow server', () => {
  let model: Qwen3OmniModel;
  let server: AssistantServer;
  let client: OpenAI;

  beforeAll(async () => {
    model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower', 'talker', 'code2wav'] });
    server = await startAssistantServer({ model, port: 0, tls: { cert, key }, maxOutputTokens: 16, respond: { seed: 0, maxFrames: 60 } });
    client = new OpenAI({ apiKey: 'not-needed-locally', baseURL: `https://localhost:${server.port}/v1` });
  });

  afterAll(async () => {
    await server?.close();
    model?.dispose();
  });

  async function open(): Promise<{ rt: OpenAIRealtimeWS; events: any[]; next: (type: string) => Promise<any> }> {
    const rt = new OpenAIRealtimeWS({ model: 'qwen3-omni', options: { ca: cert } }, client);
    const events: any[] = [];
    rt.on('event', (e) => events.push(e));
    rt.on('error', (e) => events.push({ type: 'client-error', error: e }));
    await new Promise((resolve, reject) => {
      rt.socket.once('open', resolve);
      rt.socket.once('error', reject);
    });
    const next = (type: string) => new Promise<any>((resolve) => rt.on(type as any, resolve as any));
    return { rt, events, next };
  }

  const appendAll = (rt: OpenAIRealtimeWS, pcm: Float32Array) => {
    for (let i = 0; i < pcm.length; i += 480) rt.send({ type: 'input_audio_buffer.append', audio: float32ToPcm16Base64(pcm.subarray(i, i + 480)) });
  };

  it('holds a spoken exchange with server VAD', async () => {
    const { rt, events, next } = await open();
    const updated = next('session.updated');
    rt.send({ type: 'session.update', session: { type: 'realtime', instructions: 'You are a helpful assistant.', output_modalities: ['audio'], audio: { output: { voice: 'ethan' }, input: { turn_detection: { type: 'server_vad', silence_duration_ms: 400 } } } } });
    expect((await updated).session.audio.output.voice).toBe('ethan');
    const done = next('response.done');
    appendAll(rt, speechLike(0.8));
    const response = (await done).response;
    expect(response.status).toBe('completed');
    const types = events.map((e) => e.type);
    for (const t of ['session.created', 'input_audio_buffer.speech_started', 'input_audio_buffer.speech_stopped', 'input_audio_buffer.committed', 'response.created', 'response.output_audio_transcript.delta', 'response.output_audio.delta', 'response.output_audio.done']) {
      expect(types).toContain(t);
    }
    expect(types.indexOf('input_audio_buffer.committed')).toBeLessThan(types.indexOf('response.created'));
    const audio = events.filter((e) => e.type === 'response.output_audio.delta').map((e) => pcm16Base64ToFloat32(e.delta));
    expect(audio.reduce((n, a) => n + a.length, 0)).toBeGreaterThan(0);
    const transcript = events.filter((e) => e.type === 'response.output_audio_transcript.delta').map((e) => e.delta).join('');
    expect(response.output[0].content[0].transcript).toBe(transcript);
    expect(events.some((e) => e.type === 'client-error' || e.type === 'error')).toBe(false);
    // omniflow's extra session field is refused clearly where the checkpoint cannot serve it (loaded without vision).
    const refused = next('error');
    rt.send({ type: 'session.update', session: { type: 'realtime', video: true } as any });
    expect((await refused).error.message).toBe('session.update: video needs a checkpoint loaded with its vision encoder (thinker.visual)');
    rt.close();
  });

  it('cancels a response in progress (push-to-talk: commit, response.create, response.cancel)', async () => {
    const { rt, events, next } = await open();
    rt.send({ type: 'session.update', session: { type: 'realtime', audio: { input: { turn_detection: null } } } });
    await next('session.updated');
    appendAll(rt, speechLike(0.8, { silenceAfter: 0 }));
    const committed = next('input_audio_buffer.committed');
    rt.send({ type: 'input_audio_buffer.commit' });
    await committed;
    const firstAudio = next('response.output_audio.delta');
    const done = next('response.done');
    rt.send({ type: 'response.create' });
    const { response_id } = await firstAudio;
    rt.send({ type: 'response.cancel', response_id });
    const response = (await done).response;
    expect(response).toMatchObject({ id: response_id, status: 'cancelled', status_details: { type: 'cancelled', reason: 'client_cancelled' } });
    expect(response.output[0].status).toBe('incomplete');
    // Nothing of the cancelled response arrives after its response.done (omniflow.metrics, its latency report, may).
    await new Promise((r) => setTimeout(r, 300));
    const after = events.slice(events.findIndex((e) => e.type === 'response.done') + 1);
    expect(after.filter((e) => e.response_id === response_id && e.type.startsWith('response.'))).toEqual([]);
    rt.close();
  });
});
