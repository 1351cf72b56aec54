import type { MetricsSnapshot } from '@omniflow/core';
import type { ConversationItem } from './conversation.js';

/*
 * Where one answer's time went, from the marks the nodes leave on the conversation items and the session's metrics:
 * from the end of the user's speech (the audio's arrival at the server) to the first audio byte handed to the socket,
 * split into waiting for the VAD's hangover, encoding, queueing, vision, the thinker's prefill, the talker's first
 * frame and Code2Wav, and sending. The client adds the network (its own clock: first byte received minus end of speech,
 * minus the server's part).
 */

/** What a turn may take before the report flags it. */
export interface LatencyBudgets {
  /** End of the user's turn (after the VAD hangover, or the commit) → first audio byte sent. */
  readonly responseMs: number;
  /** Speech onset over an answer (its audio's arrival) → the answer interrupted. */
  readonly bargeInMs: number;
}

export const DEFAULT_BUDGETS: LatencyBudgets = { responseMs: 800, bargeInMs: 100 };

export interface TurnReport {
  readonly response_id: string;
  readonly status: 'completed' | 'cancelled';
  /** Milliseconds; absent where the turn had no such step (a text-only answer has no audio). */
  readonly latency: {
    /** End of user speech → the VAD's speech-end (the hangover). */
    readonly vad_ms?: number;
    /** Log-mel + audio encoder of the user's message. */
    readonly encode_ms?: number;
    /** Committed message → the answer started (waiting for the respond node). */
    readonly queue_ms?: number;
    readonly vision_ms?: number;
    /** Answer start → first token (context prefill and the first step). */
    readonly prefill_ms?: number;
    /** First token → first codec frame (talker prefill and first step, code predictor). */
    readonly talker_first_frame_ms?: number;
    /** First frame → first audio packet (Code2Wav). */
    readonly code2wav_first_ms?: number;
    /** First audio packet → handed to the socket. */
    readonly send_ms?: number;
    /** End of user speech (or the answer's start, without one) → first audio byte sent: the sum of the above. */
    readonly first_audio_ms?: number;
    /** Answer start → first text delta. */
    readonly first_text_ms?: number;
    /** Model compute inside first_audio_ms: encode, vision, prefill, talker first frame, Code2Wav. */
    readonly model_ms?: number;
    /** Everything else inside first_audio_ms: the SDK's share (VAD hangover excluded: it is a setting). */
    readonly sdk_ms?: number;
    /** A barge-in: arrival of the audio holding the speech onset → answer interrupted (VAD attack included). */
    readonly barge_in_ms?: number;
  };
  /** Budgets exceeded by this turn ('response', 'barge_in'); empty when within budget. */
  readonly over_budget: string[];
  /** Whole-answer totals. */
  readonly totals: { tokens: number; frames: number; audio_ms: number; thinker_ms: number; talker_ms: number; code2wav_ms: number; paced_ms: number; duration_ms: number };
  /** Per graph node: packets and processing-latency percentiles, and its model-step histograms. */
  readonly nodes: { id: string; type: string; packets_in: number; packets_out: number; p50_ms: number; p99_ms: number; steps?: Record<string, { count: number; mean_ms: number }> }[];
  /** Queues whose depth reached more than one packet. */
  readonly queues: { edge: string; max_depth: number; drops: number }[];
}

const r1 = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? undefined : Math.round(v * 10) / 10);

/**
 * Builds the report of one answer.
 *
 * ```ts
 * const report = turnReport({ responseId, status: 'completed', user, assistant, firstAudioSentAt, audioMs, metrics: session.metrics() });
 * console.log(formatTurnReport('c1', report));
 * ```
 */
export function turnReport(o: {
  responseId: string; status: 'completed' | 'cancelled'; user?: ConversationItem; assistant: ConversationItem;
  firstAudioSentAt?: number; audioMs: number; metrics: MetricsSnapshot; budgets?: LatencyBudgets; bargeInMs?: number;
}): TurnReport {
  const budgets = o.budgets ?? DEFAULT_BUDGETS;
  const u = o.user?.timing ?? {};
  const a = o.assistant.timing ?? {};
  const spokenTurn = u.committedAt !== undefined && u.speechEndAt !== undefined;
  const origin = spokenTurn ? u.speechEndAt : a.startedAt;
  const firstToken = a.prefillMs !== undefined ? a.startedAt + a.prefillMs : undefined;
  const encodeEnd = u.committedAt !== undefined ? u.committedAt + (u.encodeMs ?? 0) : undefined;
  const latency = {
    vad_ms: spokenTurn ? r1(u.committedAt - u.speechEndAt) : undefined,
    encode_ms: spokenTurn ? r1(u.encodeMs) : undefined,
    queue_ms: spokenTurn && encodeEnd !== undefined ? r1(a.startedAt - encodeEnd) : undefined,
    vision_ms: a.visionMs ? r1(a.visionMs) : undefined,
    prefill_ms: r1(a.prefillMs !== undefined ? a.prefillMs - (a.visionMs ?? 0) : undefined),
    talker_first_frame_ms: firstToken !== undefined && a.firstFrameAt !== undefined ? r1(a.firstFrameAt - firstToken) : undefined,
    code2wav_first_ms: a.firstFrameAt !== undefined && a.firstAudioAt !== undefined ? r1(a.firstAudioAt - a.firstFrameAt) : undefined,
    send_ms: a.firstAudioAt !== undefined && o.firstAudioSentAt !== undefined ? r1(o.firstAudioSentAt - a.firstAudioAt) : undefined,
    first_audio_ms: o.firstAudioSentAt !== undefined && origin !== undefined ? r1(o.firstAudioSentAt - origin) : undefined,
    first_text_ms: a.firstTextAt !== undefined ? r1(a.firstTextAt - a.startedAt) : undefined,
    barge_in_ms: r1(o.bargeInMs),
  };
  const model = (latency.encode_ms ?? 0) + (latency.vision_ms ?? 0) + (latency.prefill_ms ?? 0) + (latency.talker_first_frame_ms ?? 0) + (latency.code2wav_first_ms ?? 0);
  const withShares = latency.first_audio_ms !== undefined
    ? { ...latency, model_ms: r1(model), sdk_ms: r1(latency.first_audio_ms - model - (latency.vad_ms ?? 0)) }
    : latency;
  const over: string[] = [];
  if (latency.first_audio_ms !== undefined && latency.first_audio_ms - (latency.vad_ms ?? 0) > budgets.responseMs) over.push('response');
  if (latency.barge_in_ms !== undefined && latency.barge_in_ms > budgets.bargeInMs) over.push('barge_in');
  return {
    response_id: o.responseId,
    status: o.status,
    latency: Object.fromEntries(Object.entries(withShares).filter(([, v]) => v !== undefined)) as TurnReport['latency'],
    over_budget: over,
    totals: {
      tokens: a.tokens ?? 0, frames: a.frames ?? 0, audio_ms: r1(o.audioMs) ?? 0, thinker_ms: r1(a.thinkerMs) ?? 0, talker_ms: r1(a.talkerMs) ?? 0,
      code2wav_ms: r1(a.code2wavMs) ?? 0, paced_ms: r1(a.pacedMs) ?? 0, duration_ms: r1((a.endedAt ?? performance.now()) - a.startedAt) ?? 0,
    },
    nodes: o.metrics.nodes
      .filter((n) => !n.id.startsWith('input:') && !n.id.startsWith('output:'))
      .map((n) => ({
        id: n.id, type: n.type, packets_in: n.packetsIn, packets_out: n.packetsOut, p50_ms: n.latency.p50Micros / 1000, p99_ms: n.latency.p99Micros / 1000,
        ...(Object.keys(n.histograms).length ? { steps: Object.fromEntries(Object.entries(n.histograms).map(([k, h]) => [k, { count: h.count, mean_ms: r1(h.meanMicros) ?? 0 }])) } : {}),
      })),
    queues: o.metrics.edges
      .filter((e) => e.maxDepth > 1 || e.drops.overflow + e.drops.late > 0)
      .map((e) => ({ edge: e.id, max_depth: e.maxDepth, drops: e.drops.overflow + e.drops.late + e.drops.fenced })),
  };
}

/**
 * One printable line per answer, then the breakdown.
 *
 * ```ts
 * formatTurnReport('c1', report); // 'c1 resp_00000a completed: first audio 212.4 ms = vad 400 + encode 3.1 + …'
 * ```
 */
export function formatTurnReport(connection: string, r: TurnReport): string {
  const l = r.latency;
  const parts = ([
    ['vad', l.vad_ms], ['encode', l.encode_ms], ['queue', l.queue_ms], ['vision', l.vision_ms], ['prefill', l.prefill_ms],
    ['talker', l.talker_first_frame_ms], ['code2wav', l.code2wav_first_ms], ['send', l.send_ms],
  ] as const).filter(([, v]) => v !== undefined).map(([k, v]) => `${k} ${v}`).join(' + ');
  const barge = l.barge_in_ms !== undefined ? `; barge-in ${l.barge_in_ms} ms` : '';
  const over = r.over_budget.length ? `  OVER BUDGET: ${r.over_budget.join(', ')}` : '';
  const head = `${connection} ${r.response_id} ${r.status}: first audio ${l.first_audio_ms ?? '-'} ms${parts ? ` = ${parts}` : ''}; first text ${l.first_text_ms ?? '-'} ms${barge}${over}`;
  const t = r.totals;
  return `${head}\n  model ${l.model_ms ?? '-'} ms, sdk ${l.sdk_ms ?? '-'} ms; answer: ${t.tokens} tokens, ${t.frames} frames, ${t.audio_ms} ms audio in ${t.duration_ms} ms (thinker ${t.thinker_ms}, talker ${t.talker_ms}, code2wav ${t.code2wav_ms}, paced ${t.paced_ms})`;
}
