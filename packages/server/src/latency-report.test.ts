import { describe, expect, it } from 'vitest';
import type { MetricsSnapshot } from '@omniflow/core';
import { Conversation } from './conversation.js';
import { formatTurnReport, turnReport } from './latency-report.js';

const metrics: MetricsSnapshot = { session: 's', mode: 'realtime', elapsedMicros: 0, nodes: [], edges: [], turns: [] };

describe('turn latency report', () => {
  it('splits end of speech → first audio into its steps, model against SDK, and checks the budgets', () => {
    const c = new Conversation({ voice: 'ethan' });
    const user = c.addUser([{ type: 'text', text: 'q' }]);
    user.timing = { speechEndAt: 1000, committedAt: 1400, encodeMs: 20 };
    const answer = c.beginAssistant();
    answer.timing = { startedAt: 1425, prefillMs: 100, firstTextAt: 1525, firstFrameAt: 1575, firstAudioAt: 1590, tokens: 3, frames: 2, thinkerMs: 0, talkerMs: 0, code2wavMs: 0, pacedMs: 0, visionMs: 0 };
    const r = turnReport({ responseId: 'resp_1', status: 'cancelled', user, assistant: answer, firstAudioSentAt: 1591, audioMs: 160, metrics, bargeInMs: 130 });
    expect(r.latency).toEqual({
      vad_ms: 400, encode_ms: 20, queue_ms: 5, prefill_ms: 100, talker_first_frame_ms: 50, code2wav_first_ms: 15, send_ms: 1,
      first_audio_ms: 591, first_text_ms: 100, barge_in_ms: 130, model_ms: 185, sdk_ms: 6,
    });
    // The steps add up to the whole: 400 + 20 + 5 + 100 + 50 + 15 + 1.
    expect(r.over_budget).toEqual(['barge_in']);
    expect(formatTurnReport('c1', r)).toContain('c1 resp_1 cancelled: first audio 591 ms = vad 400 + encode 20 + queue 5 + prefill 100 + talker 50 + code2wav 15 + send 1; first text 100 ms; barge-in 130 ms  OVER BUDGET: barge_in');
    const slow = turnReport({ responseId: 'resp_2', status: 'completed', user, assistant: answer, firstAudioSentAt: 2500, audioMs: 0, metrics, budgets: { responseMs: 800, bargeInMs: 100 } });
    expect(slow.over_budget).toEqual(['response']); // 1500 ms − 400 ms hangover > 800 ms
  });
});
