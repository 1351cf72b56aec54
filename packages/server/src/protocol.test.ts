import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni, type Qwen3OmniModel } from '@omniflow/nodes';
import { float32ToPcm16Base64, parseClientEvent, pcm16Base64ToFloat32 } from './protocol.js';
import { startAssistantServer, type AssistantServer } from './server.js';
import { RealtimeTestClient, speechLike } from './testing/client.js';

describe('client event parsing', () => {
  it('names what is wrong: size, JSON, type, field', () => {
    expect(parseClientEvent('x'.repeat(2000), 1000)).toMatchObject({ ok: false, error: { code: 'message_too_large' } });
    expect(parseClientEvent('{"type":', 1000)).toMatchObject({ ok: false, error: { code: 'invalid_json' } });
    expect(parseClientEvent('[1]', 1000)).toMatchObject({ ok: false, error: { code: 'invalid_event' } });
    expect(parseClientEvent('{"type":"response.explode","event_id":"e1"}', 1000)).toMatchObject({ ok: false, error: { code: 'unknown_event_type', param: 'type', event_id: 'e1' } });
    const bad = parseClientEvent('{"type":"conversation.item.truncate","item_id":"a","content_index":0,"audio_end_ms":-5}', 1000);
    expect(bad).toMatchObject({ ok: false, error: { code: 'invalid_value', param: 'audio_end_ms' } });
    const fmt = parseClientEvent('{"type":"session.update","session":{"audio":{"input":{"format":{"type":"audio/pcmu"}}}}}', 1000);
    expect(fmt.ok ? '' : fmt.error.message).toContain('only audio/pcm at 24000 Hz');
    expect(parseClientEvent('{"type":"input_audio_buffer.append","audio":"AAD/fw=="}', 1000)).toMatchObject({ ok: true });
  });

  it('PCM16 round-trips within one quantisation step and clips', () => {
    const x = new Float32Array([0, 0.5, -0.5, 0.99, -1, 1.7, -3]);
    const y = pcm16Base64ToFloat32(float32ToPcm16Base64(x));
    for (let i = 0; i < 5; i++) expect(Math.abs(y[i] - x[i])).toBeLessThan(2 / 32768); // encode scales by 32767, decode by 32768
    expect(y[5]).toBeCloseTo(32767 / 32768, 6);
    expect(y[6]).toBe(-1);
    expect(() => pcm16Base64ToFloat32('AAAA')).toThrow(/3 bytes is not a whole number of PCM16 samples/);
  });
});

describe('assistant server protocol (fixture checkpoint, loopback)', () => {
  let model: Qwen3OmniModel;
  let server: AssistantServer;

  beforeAll(async () => {
    model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower', 'visual', 'talker', 'code2wav'] });
    // frameMs 0: answers run as fast as the CPU allows (no real-time pacing) to keep the tests short.
    server = await startAssistantServer({ model, port: 0, maxMessageBytes: 64 * 1024, maxOutputTokens: 8, respond: { seed: 0, maxFrames: 30, frameMs: 0 } });
  });

  afterAll(async () => {
    await server?.close();
    model?.dispose();
  });

  /** One spoken turn on a fresh connection: the response.done and the audio received. */
  async function spokenTurn(seconds: number, seed: number) {
    const c = await RealtimeTestClient.connect(server.url);
    await c.sendAudio(speechLike(seconds, { seed }));
    const done = await c.waitFor('response.done');
    const audio = c.audio(done.response.id);
    await c.close();
    return { done, audio, c };
  }

  it('answers malformed, unknown and oversized messages with error events, and keeps serving the same socket', async () => {
    const c = await RealtimeTestClient.connect(server.url);
    await c.waitFor('session.created');
    c.ws.send('{"type": "session.update", ');
    c.send({ type: 'no.such.event', event_id: 'evt_x' });
    c.send({ type: 'input_audio_buffer.append', audio: 'A'.repeat(100 * 1024) }); // 100 KiB > the 64 KiB limit
    c.send({ type: 'input_audio_buffer.append', audio: '###' });
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    c.send({ type: 'response.cancel' });
    c.send({ type: 'conversation.item.truncate', item_id: 'item_nope', content_index: 0, audio_end_ms: 10 });
    c.send({ type: 'session.update', session: { voice: 'bob' } });
    c.send({ type: 'input_audio_buffer.commit' });
    const errors = await new Promise<any[]>((resolve) => {
      const poll = () => (c.of('error').length >= 9 ? resolve(c.of('error')) : setTimeout(poll, 10));
      poll();
    });
    expect(errors.map((e) => e.error.code)).toEqual([
      'invalid_json', 'unknown_event_type', 'message_too_large', 'invalid_value', 'binary_not_supported',
      'response_cancel_not_active', 'invalid_request', 'invalid_request', 'input_audio_buffer_commit_empty',
    ]);
    expect(errors[1].error.event_id).toBe('evt_x');
    expect(errors[6].error.message).toBe("conversation.item.truncate: no item 'item_nope'");
    expect(errors[7].error.message).toBe("session.update: unknown voice 'bob'; this checkpoint has aiden, chelsie, ethan".replace('aiden, chelsie, ethan', Object.keys(model.config.talker_config!.speaker_id).join(', ')));
    // The same socket still holds a spoken exchange.
    c.send({ type: 'session.update', session: { voice: 'chelsie', instructions: 'Be brief.' } });
    expect((await c.waitFor('session.updated')).session.audio.output.voice).toBe('chelsie');
    await c.sendAudio(speechLike(0.8));
    const done = await c.waitFor('response.done');
    expect(done.response.status).toBe('completed');
    expect(c.audio(done.response.id).length).toBeGreaterThan(0);
    await c.close();
  });

  it('a client that disconnects mid-answer frees its session and every tensor', async () => {
    await spokenTurn(0.8, 1); // warm-up: lazily built, shared state (e.g. the code predictor's reusable cache) exists now
    await waitUntil(() => server.connections.size === 0);
    const before = tf.memory().numTensors;
    const c = await RealtimeTestClient.connect(server.url);
    await c.sendAudio(speechLike(0.8, { seed: 1 }));
    await c.waitFor('response.output_audio.delta');
    const conn = [...server.connections][0];
    expect(tf.memory().numTensors).toBeGreaterThan(before); // the user's audio rows, the answer's caches
    c.ws.terminate();
    await waitUntil(() => server.connections.size === 0 && conn.isClosed);
    await waitUntil(() => tf.memory().numTensors === before, 5000);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('20 concurrent clients on loopback each get their own answer, identical to answering them one at a time, beside a client sending garbage', async () => {
    const inputs = [0.6, 0.8, 1.0, 1.2].map((s, i) => ({ seconds: s, seed: i + 1 }));
    const alone: Float32Array[] = [];
    for (const x of inputs) alone.push((await spokenTurn(x.seconds, x.seed)).audio);
    expect(new Set(alone.map((a) => a.length)).size).toBeGreaterThan(1); // the inputs give different answers
    const clients = await Promise.all(Array.from({ length: 20 }, () => RealtimeTestClient.connect(server.url)));
    const bad = await RealtimeTestClient.connect(server.url);
    expect(server.connections.size).toBe(21);
    let spamming = true;
    const spam = (async () => {
      for (let i = 0; spamming; i++) {
        bad.ws.send(['{', '{"type":"nope"}', JSON.stringify({ type: 'input_audio_buffer.append', audio: 'A'.repeat(70_000) }), '{"type":"response.cancel"}'][i % 4]);
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await Promise.all(clients.map((c, k) => c.sendAudio(speechLike(inputs[k % 4].seconds, { seed: inputs[k % 4].seed }))));
    const dones = await Promise.all(clients.map((c) => c.waitFor('response.done', () => true, { timeoutMs: 60_000 })));
    spamming = false;
    await spam;
    expect(bad.of('error').length).toBeGreaterThan(10);
    expect(bad.of('response.created')).toEqual([]);
    await bad.close();
    clients.forEach((c, k) => {
      expect(dones[k].response.status).toBe('completed');
      expect(Array.from(c.audio())).toEqual(Array.from(alone[k % 4]));
      // Every id a client saw belongs to its own conversation.
      const own = new Set(c.events.filter((e) => e.type === 'conversation.item.added').map((e) => e.item.id));
      for (const e of c.events) if (e.item_id) expect(own.has(e.item_id)).toBe(true);
    });
    await Promise.all(clients.map((c) => c.close()));
  }, 120_000);

  it('response.cancel stops the answer; truncate keeps only the voiced text in the context', async () => {
    const c = await RealtimeTestClient.connect(server.url);
    c.send({ type: 'session.update', session: { audio: { input: { turn_detection: null } } } }); // push-to-talk
    await c.waitFor('session.updated');
    await c.sendAudio(speechLike(0.8, { silenceAfter: 0 }));
    c.send({ type: 'input_audio_buffer.commit' });
    const committed = await c.waitFor('input_audio_buffer.committed');
    expect(c.of('response.created')).toHaveLength(0); // push-to-talk: no automatic answer
    c.send({ type: 'response.create' });
    const created = await c.waitFor('response.created');
    await c.waitFor('response.output_audio.delta');
    c.send({ type: 'response.cancel' });
    const done = await c.waitFor('response.done');
    expect(done.response).toMatchObject({ id: created.response.id, status: 'cancelled', status_details: { reason: 'client_cancelled' } });
    const itemId = done.response.output[0].id;
    const played = (c.audio(created.response.id).length / 24_000) * 1000;
    c.send({ type: 'conversation.item.truncate', item_id: itemId, content_index: 0, audio_end_ms: played / 2 });
    const heard = await c.waitFor('omniflow.heard');
    c.send({ type: 'omniflow.conversation.get' });
    const conv = await c.waitFor('omniflow.conversation');
    const answer = conv.items.find((i: any) => i.id === itemId);
    expect(conv.items[0].id).toBe(committed.item_id);
    expect(answer.text).toBe(heard.text);
    expect(answer.status).toBe('incomplete'); // the answer's generation itself stopped (not only its delivery)
    expect(answer.generated.startsWith(answer.text)).toBe(true);
    expect(answer.heard_ms).toBeCloseTo(played / 2, 6);
    expect(c.of('conversation.item.truncated')).toHaveLength(1);
    await c.close();
  });

  it('video on: the latest camera frame joins the user turn through the vision encoder; its rows are freed with the connection', async () => {
    await waitUntil(() => server.connections.size === 0);
    const before = tf.memory().numTensors;
    const c = await RealtimeTestClient.connect(server.url);
    c.send({ type: 'session.update', session: { video: true } });
    expect((await c.waitFor('session.updated')).session.video).toBe(true);
    const frame = (shade: number) => Buffer.alloc(32 * 32 * 3, shade).toString('base64');
    c.send({ type: 'omniflow.input_video_frame.append', width: 32, height: 32, format: 'rgb24', data: frame(10) });
    c.send({ type: 'omniflow.input_video_frame.append', width: 32, height: 32, format: 'rgb24', data: frame(200) });
    c.send({ type: 'omniflow.input_video_frame.append', width: 32, height: 32, format: 'rgb24', data: Buffer.alloc(10).toString('base64') });
    const error = await c.waitFor('error');
    expect(error.error.message).toBe('omniflow.input_video_frame.append: 32x32 rgb24 needs 3072 bytes, got 10');
    await c.sendAudio(speechLike(0.8));
    const done = await c.waitFor('response.done');
    expect(done.response.status).toBe('completed');
    const report = await c.waitFor('omniflow.metrics');
    expect(report.latency.vision_ms).toBeGreaterThan(0);
    c.send({ type: 'omniflow.conversation.get' });
    const conv = await c.waitFor('omniflow.conversation');
    expect(conv.items[0].text).toMatch(/^\[image\] \[audio \d\.\d\d s\]$/);
    expect(tf.memory().numTensors).toBeGreaterThan(before); // the user's audio and image rows stay in the conversation
    await c.close();
    await waitUntil(() => server.connections.size === 0 && tf.memory().numTensors === before, 5000);
    expect(tf.memory().numTensors).toBe(before);
  });
});

async function waitUntil(test: () => boolean, timeoutMs = 3000): Promise<void> {
  const t0 = Date.now();
  while (!test()) {
    if (Date.now() - t0 > timeoutMs) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}
