import * as tf from '@tensorflow/tfjs-core';
import { filter, firstValueFrom, toArray, take } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audioPacket, type ControlPacket } from '@omniflow/core';
import { fixtureDir, initBackend } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni, type Qwen3OmniModel } from '@omniflow/nodes';
import { assistantGraph } from './assistant-graph.js';
import { Conversation, DEFAULT_TURN_DETECTION } from './conversation.js';
import { speechLike } from './testing/client.js';

describe('Conversation: heard-text ledger', () => {
  it('truncate keeps the text voiced by the audio played in full', () => {
    const c = new Conversation({ voice: 'ethan' });
    const user = c.addUser([{ type: 'text', text: 'Hi' }]);
    const a = c.beginAssistant();
    c.appendText(a, 'Hello there, friend.');
    c.voiced(a, 1920, { end: 5 }); // 0–80 ms voice 'Hello'
    c.voiced(a, 1920, { end: 11 }); // 80–160 ms voice ' there'
    c.voiced(a, 1920, { end: 20 });
    c.voiced(a, 555); // the tail: no new text
    c.finishAssistant(a, 'completed');
    expect(c.messages().map((m) => m.content)).toEqual([[{ type: 'text', text: 'Hi' }], 'Hello there, friend.']);
    expect(c.truncate(a.id, 160)).toEqual({ itemId: a.id, audioEndMs: 160, text: 'Hello there', dropped: 9 });
    expect(c.messages().at(-1)!.content).toBe('Hello there');
    expect(c.transcript().at(-1)).toEqual({ id: a.id, role: 'assistant', status: 'completed', text: 'Hello there', generated: 'Hello there, friend.', heard_ms: 160 });
    expect(c.truncate(a.id, 159).text).toBe('Hello'); // 160 ms not reached: ' there' was not heard in full
    expect(c.truncate(a.id, 240).text).toBe('Hello'); // what a truncate removed does not come back (as in the Realtime API)
    expect(() => c.truncate(a.id, 265)).toThrow(`audio_end_ms 265 is past the end of item '${a.id}' (263.1 ms of audio)`);
    expect(() => c.truncate(user.id, 10)).toThrow(`item '${user.id}' is a user message; only assistant audio can be truncated`);
    expect(() => c.truncate('item_x', 10)).toThrow("no item 'item_x'");
  });

  it('an interrupted answer keeps the text of the audio sent; an empty one leaves the context', () => {
    const c = new Conversation({ voice: 'ethan', instructions: 'Be brief.' });
    c.addUser([{ type: 'text', text: 'Q1' }]);
    const a = c.beginAssistant();
    c.appendText(a, 'One two three four');
    c.voiced(a, 1920, { end: 3 });
    c.finishAssistant(a, 'incomplete');
    c.addUser([{ type: 'text', text: 'Q2' }]);
    const b = c.beginAssistant();
    c.appendText(b, 'Never voiced');
    c.finishAssistant(b, 'incomplete');
    expect(c.messages().map((m) => [m.role, typeof m.content === 'string' ? m.content : 'parts'])).toEqual([
      ['system', 'Be brief.'], ['user', 'parts'], ['assistant', 'One'], ['user', 'parts'],
    ]);
  });

  it('dispose frees the encoder rows it owns', async () => {
    await initBackend();
    const before = tf.memory().numTensors;
    const c = new Conversation({ voice: 'ethan' });
    c.addUser([{ type: 'audio', embeds: tf.zeros([4, 8]) as tf.Tensor2D, frames: 100 }]);
    c.addUser([{ type: 'image', embeds: tf.zeros([4, 8]) as tf.Tensor2D, deepstack: [tf.zeros([4, 8]) as tf.Tensor2D], gridThw: [1, 4, 4] }]);
    expect(tf.memory().numTensors).toBe(before + 3);
    c.delete(c.items[0].id);
    expect(tf.memory().numTensors).toBe(before + 2);
    c.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(() => c.addUser([])).toThrow('conversation: used after dispose()');
  });
});

describe('assistant graph: turn detection on 24 kHz input', () => {
  let model: Qwen3OmniModel;
  beforeAll(async () => {
    model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower', 'talker', 'code2wav'] });
  });
  afterAll(() => model?.dispose());

  it('speech-start / speech-end at the speech edges; the message holds the prefix padding, the speech and the hangover', async () => {
    const conversation = new Conversation({ voice: 'ethan', turnDetection: { ...DEFAULT_TURN_DETECTION, createResponse: false } });
    const session = assistantGraph({ model, conversation }).session({ id: 't', mode: 'realtime' });
    const events = firstValueFrom(session.output('events').pipe(filter((p) => p.kind === 'control'), take(3), toArray()));
    void session.start();
    // 0.5 s silence, 0.8 s speech, 0.6 s silence, in 20 ms packets.
    const pcm = speechLike(0.8, { silenceBefore: 0.5, silenceAfter: 0.6 });
    const audio = session.input('audio');
    for (let i = 0, pts = 0; i < pcm.length; i += 480, pts += 20_000) audio.push(audioPacket({ samples: pcm.slice(i, i + 480), sampleRate: 24_000, channels: 1, pts }));
    const [start, end, turnEnd] = (await events) as ControlPacket[];
    expect(start.signal).toBe('speech-start');
    expect(Math.abs(start.pts - 500_000)).toBeLessThanOrEqual(20_000); // within one 20 ms VAD frame of the onset
    expect(end.signal).toBe('speech-end');
    expect(Math.abs(end.pts - 1_300_000)).toBeLessThanOrEqual(20_000);
    expect(turnEnd).toMatchObject({ signal: 'turn-end', reason: start.reason }); // the id speech_started announced
    const item = conversation.find(turnEnd.reason!)!;
    // 300 ms prefix + 800 ms speech + 400 ms hangover, give or take a packet.
    expect(Math.abs(item.timing!.audioMs - 1500)).toBeLessThanOrEqual(40);
    const part = item.parts[0] as { type: 'audio'; embeds: tf.Tensor2D; frames: number };
    expect(part.type).toBe('audio');
    expect(Math.abs(part.frames - 150)).toBeLessThanOrEqual(4); // 10 ms mel frames
    expect(part.embeds.shape[1]).toBe(model.config.thinker_config.audio_config.output_dim);
    session.stop();
    conversation.dispose();
  });

  it('speech that never pauses ends the turn at the buffer limit instead of growing without bound', async () => {
    const conversation = new Conversation({ voice: 'ethan', turnDetection: { ...DEFAULT_TURN_DETECTION, createResponse: false } });
    const session = assistantGraph({ model, conversation, turns: { maxBufferSeconds: 1 } }).session({ id: 't2', mode: 'realtime' });
    const events = firstValueFrom(session.output('events').pipe(filter((p) => p.kind === 'control'), take(3), toArray()));
    void session.start();
    const pcm = speechLike(2.5, { silenceBefore: 0.2, silenceAfter: 0 });
    const audio = session.input('audio');
    for (let i = 0, pts = 0; i < pcm.length; i += 480, pts += 20_000) audio.push(audioPacket({ samples: pcm.slice(i, i + 480), sampleRate: 24_000, channels: 1, pts }));
    const [start, end, turnEnd] = (await events) as ControlPacket[];
    expect([start.signal, end.signal, turnEnd.signal]).toEqual(['speech-start', 'speech-end', 'turn-end']);
    // Forced at 1 s of buffered audio (prefix included), well before the 2.5 s of speech are over.
    expect(end.pts).toBeLessThan(1_300_000);
    expect(Math.abs(conversation.find(turnEnd.reason!)!.timing!.audioMs - 1000)).toBeLessThanOrEqual(40);
    session.stop();
    conversation.dispose();
  });
});
