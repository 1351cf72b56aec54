import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audioPacket } from '@omniflow/core';
import { fixtureDir } from '@omniflow/runtime-gpu';
import { fixtureTokenizer, loadQwen3Omni, writeWav, type Qwen3OmniModel } from '@omniflow/nodes';
import { startAssistantServer, type AssistantServer } from './server.js';
import { speechLike } from './testing/client.js';

/*
 * End to end in real headless Chromium (Debian's `chromium`; .ci/run installs it): the page in examples/assistant
 * captures a WAV file as its microphone (Chromium's fake media devices; the file loops), talks to the server, plays the
 * answer, and — when the next stretch of "speech" in the file starts while the answer plays — stops playback and
 * truncates the answer to what it played. The test then reads the conversation back from the server.
 */

const CHROMIUM = process.env.OMNIFLOW_CHROMIUM ?? '/usr/bin/chromium';

describe.skipIf(!existsSync(CHROMIUM))('assistant page in headless Chromium', () => {
  let model: Qwen3OmniModel;
  let server: AssistantServer;
  let browser: Browser;
  let scratch: string;

  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'omniflow-browser-'));
    // The microphone: 1 s of speech, 1.2 s of silence (the answer plays), 1 s of speech over it, 1.5 s of silence; looped.
    const wav = join(scratch, 'mic.wav');
    const parts = [speechLike(1.0, { silenceBefore: 0.3, silenceAfter: 1.2, seed: 1 }), speechLike(1.0, { silenceBefore: 0, silenceAfter: 1.5, seed: 2 })];
    let pts = 0;
    await writeWav(parts.map((samples) => {
      const p = audioPacket({ samples, sampleRate: 24_000, channels: 1, pts });
      pts += (samples.length / 24_000) * 1e6;
      return p;
    }), wav);
    model = await loadQwen3Omni(fixtureDir(), { tokenizer: fixtureTokenizer(), modules: ['thinker', 'audio_tower', 'visual', 'talker', 'code2wav'] });
    server = await startAssistantServer({
      model, port: 0, staticDir: fileURLToPath(new URL('../../../examples/assistant', import.meta.url)),
      maxOutputTokens: 24, respond: { seed: 0, maxFrames: 80 },
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox', '--disable-gpu', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${wav}`,
        '--autoplay-policy=no-user-gesture-required', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
      ],
    });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    model?.dispose();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('speaks, gets audio back, is interrupted mid-answer: playback stops and the context keeps only what was heard; the camera joins turns', async () => {
    const page = await (await browser.newContext()).newPage();
    const logs: string[] = [];
    page.on('console', (m) => logs.push(m.text()));
    await page.goto(`${server.httpUrl}?autostart=1`);
    // A barge-in while the server was still generating the answer (not one where the answer had just been completed and
    // only its playback was left — also valid, but then there is nothing to cancel), and whose truncate cut text off.
    const handle = await page.waitForFunction(() => {
      const a = (globalThis as any).assistant;
      for (const b of a.bargeIns) {
        const heard = a.events.find((e: any) => e.type === 'omniflow.heard' && e.item_id === b.itemId);
        const done = a.events.find((e: any) => e.type === 'response.done' && e.response.id === b.responseId);
        if (b.reason === 'barge-in' && done?.response.status === 'cancelled' && heard && heard.dropped_chars > 0) return b;
      }
      return null;
    }, null, { timeout: 100_000, polling: 100 }).catch((e) => {
      throw new Error(`${(e as Error).message}\npage console: ${logs.slice(-10).join(' | ')}`);
    });
    const barge = await handle.jsonValue() as { itemId: string; responseId: string; playedMs: number; receivedMs: number; ctxTime: number; stoppedSources: number };
    await page.evaluate(() => (globalThis as any).assistant.ws.send(JSON.stringify({ type: 'omniflow.conversation.get' })));
    await page.waitForFunction(() => (globalThis as any).assistant.events.some((e: any) => e.type === 'omniflow.conversation'), null, { timeout: 10_000 });
    const s = await page.evaluate((rid) => {
      const a = (globalThis as any).assistant;
      return {
        events: a.events.filter((e: any) => e.type !== 'response.output_audio.delta' && e.type !== 'response.output_audio_transcript.delta'),
        deltas: a.events.filter((e: any) => e.type === 'response.output_audio.delta').length,
        scheduled: a.scheduled.filter((c: any) => c.responseId === rid),
        playingThat: a.play.responseId === rid,
      };
    }, barge.responseId);

    // Audio came back and was played.
    expect(s.deltas).toBeGreaterThan(0);
    expect(barge.playedMs).toBeGreaterThan(0);
    expect(barge.playedMs).toBeLessThanOrEqual(barge.receivedMs + 1e-6);
    // The server cancelled that answer because the user spoke.
    const done = s.events.find((e: any) => e.type === 'response.done' && e.response.id === barge.responseId);
    expect(done.response).toMatchObject({ status: 'cancelled', status_details: { reason: 'turn_detected' } });
    // Playback stopped: nothing of it was scheduled after the stop, what was still queued was stopped, and it is not playing.
    expect(s.scheduled.length).toBeGreaterThan(0);
    expect(s.scheduled.filter((c: any) => c.scheduledAt > barge.ctxTime)).toEqual([]);
    expect(s.scheduled.filter((c: any) => c.end > barge.ctxTime + 1e-3).length).toBeLessThanOrEqual(barge.stoppedSources);
    expect(s.playingThat).toBe(false);
    // The context holds only the heard text: a strict prefix of what was generated, exactly what the truncate reported.
    const heard = s.events.find((e: any) => e.type === 'omniflow.heard' && e.item_id === barge.itemId);
    const conversation = s.events.findLast((e: any) => e.type === 'omniflow.conversation');
    const item = conversation.items.find((i: any) => i.id === barge.itemId);
    expect(item.text).toBe(heard.text);
    expect(item.generated.startsWith(item.text)).toBe(true);
    expect(item.generated.length).toBeGreaterThan(item.text.length);
    expect(item.heard_ms).toBeCloseTo(barge.playedMs, 6);
    // The latency panel got a report for each answer; the interrupted one says how long the barge-in took on the server.
    expect(s.events.filter((e: any) => e.type === 'omniflow.metrics').length).toBeGreaterThan(0);
    const report = s.events.find((e: any) => e.type === 'omniflow.metrics' && e.response_id === barge.responseId);
    expect(report.latency.barge_in_ms).toBeGreaterThan(0);
    expect(s.events.some((e: any) => e.type === 'error')).toBe(false);

    // Camera on (Chromium's fake camera): frames go up and the next user turn carries the latest one.
    await page.click('#camera');
    await page.waitForFunction(() => (globalThis as any).assistant.events.some((e: any) => e.type === 'session.updated' && e.session.video), null, { timeout: 10_000 });
    await page.evaluate(() => {
      const a = (globalThis as any).assistant;
      a.poll = setInterval(() => a.ws.send(JSON.stringify({ type: 'omniflow.conversation.get' })), 500);
    });
    const withImage = await page.waitForFunction(() => {
      for (const e of (globalThis as any).assistant.events) {
        const item = e.type === 'omniflow.conversation' && e.items.find((i: any) => i.role === 'user' && i.text.startsWith('[image]'));
        if (item) return item;
      }
      return null;
    }, null, { timeout: 60_000, polling: 250 });
    await page.evaluate(() => clearInterval((globalThis as any).assistant.poll));
    expect((await withImage.jsonValue() as { text: string }).text).toMatch(/^\[image\] \[audio \d\.\d\d s\]$/);
  }, 150_000);
});
