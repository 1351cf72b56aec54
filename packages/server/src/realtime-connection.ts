import type { WebSocket } from 'ws';
import type { Subscription } from 'rxjs';
import { audioPacket, controlPacket, imagePacket, type AudioPacket, type ControlPacket, type Session, type TextPacket } from '@omniflow/core';
import type { Qwen3OmniModel } from '@omniflow/nodes';
import { assistantGraph, type AssistantGraphOptions } from './assistant-graph.js';
import { Conversation, DEFAULT_TURN_DETECTION, type AssistantSettings, type ConversationItem, type TurnDetection } from './conversation.js';
import { DEFAULT_BUDGETS, turnReport, formatTurnReport, type LatencyBudgets, type TurnReport } from './latency-report.js';
import {
  float32ToPcm16Base64, parseClientEvent, pcm16Base64ToFloat32, thresholdToDb, WIRE_SAMPLE_RATE,
  type ClientEvent, type ProtocolError, type SessionConfigInput,
} from './protocol.js';

/** What every connection of a server shares. */
export interface ConnectionOptions {
  readonly model: Qwen3OmniModel;
  /** Largest client message accepted, bytes; bigger ones get an error event and are dropped. */
  readonly maxMessageBytes: number;
  /** Voice of a new session. */
  readonly voice: string;
  readonly maxOutputTokens: number;
  readonly respond?: AssistantGraphOptions['respond'];
  /** Where per-turn latency reports are printed (default: nowhere). */
  readonly log?: (line: string) => void;
  /** Latency budgets the per-turn report checks (see `LatencyBudgets`). */
  readonly budgets?: Partial<LatencyBudgets>;
}

interface ActiveResponse {
  readonly id: string;
  readonly item: ConversationItem;
  transcript: string;
  audioSamples: number;
  firstAudioSentAt?: number;
  lastAudioSentAt?: number;
  /** The user message it answers, for the latency report. */
  readonly user?: ConversationItem;
}

/**
 * One client: a graph session of the assistant, its conversation, and the translation between Realtime API events and
 * packets. A bad message gets an `error` event and changes nothing else; closing frees the session and every tensor.
 *
 * ```ts
 * wss.on('connection', (ws) => new RealtimeConnection(ws, { model, maxMessageBytes: 1 << 20, voice: 'ethan', maxOutputTokens: 256 }, 'c1'));
 * ```
 */
export class RealtimeConnection {
  readonly conversation: Conversation;
  readonly session: Session;
  private readonly subscriptions: Subscription[] = [];
  private response: ActiveResponse | undefined;
  /** Audio time of the next appended sample, µs (the wire's 24 kHz). */
  private audioPts = 0;
  /** Arrival (performance.now()) of recent audio, by end pts: maps detected speech edges to wall time. */
  private readonly arrivals: { endPts: number; at: number }[] = [];
  private lastUserItem: ConversationItem | undefined;
  private speechEndAt: number | undefined;
  /** Id announced by speech_started for the message being spoken. */
  private speechItemId: string | undefined;
  private closed = false;
  /** Latency reports of this connection's answers, newest last. */
  readonly reports: TurnReport[] = [];

  constructor(
    private readonly ws: WebSocket,
    private readonly options: ConnectionOptions,
    readonly id: string,
  ) {
    this.conversation = new Conversation({ voice: options.voice, maxOutputTokens: options.maxOutputTokens });
    this.session = assistantGraph({ model: options.model, conversation: this.conversation, ...(options.respond ? { respond: options.respond } : {}) })
      .session({ id, mode: 'realtime', inputQueue: { capacity: 64, policy: 'block' } });
    this.subscriptions.push(
      this.session.output('events').subscribe((p) => this.onTurnEvent(p as ControlPacket)),
      this.session.output('text').subscribe((p) => this.onText(p as TextPacket | ControlPacket)),
      this.session.output('audio').subscribe((p) => this.onAudio(p as AudioPacket)),
    );
    this.session.start().catch((e) => {
      this.sendError({ type: 'server_error', code: 'graph_failed', message: (e as Error).message });
      this.ws.close(1011, 'assistant graph failed');
    });
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on('close', () => this.close());
    ws.on('error', () => this.close());
    this.send({ type: 'session.created', session: this.describeSession() });
  }

  /** Stops the graph session and frees the conversation's tensors. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.session.stop();
    for (const s of this.subscriptions) s.unsubscribe();
    this.conversation.dispose();
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(1000);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.closed) return;
    if (isBinary) return this.sendError(invalid('binary_not_supported', 'binary frames are not part of the protocol; send JSON text events'));
    const parsed = parseClientEvent(data, this.options.maxMessageBytes);
    if (!parsed.ok) return this.sendError(parsed.error);
    try {
      this.dispatch(parsed.event);
    } catch (e) {
      this.sendError(invalid('invalid_request', (e as Error).message, null, parsed.event.event_id ?? null));
    }
  }

  private dispatch(e: ClientEvent): void {
    switch (e.type) {
      case 'session.update':
        this.applySession(e.session);
        this.send({ type: 'session.updated', session: this.describeSession() });
        return;
      case 'input_audio_buffer.append': {
        const samples = pcm16Base64ToFloat32(e.audio);
        if (!samples.length) return;
        const pts = this.audioPts;
        this.audioPts += (samples.length * 1e6) / WIRE_SAMPLE_RATE;
        this.arrivals.push({ endPts: this.audioPts, at: performance.now() });
        if (this.arrivals.length > 500) this.arrivals.splice(0, 250);
        const input = this.session.input('audio');
        if (!input.push(audioPacket({ samples, sampleRate: WIRE_SAMPLE_RATE, channels: 1, pts, session: this.id }))) {
          // The graph is behind: stop reading this socket until it has room (TCP pushes back on the client).
          this.ws.pause();
          input.demand.whenReady(() => this.ws.resume());
        }
        return;
      }
      case 'input_audio_buffer.commit':
        this.session.input('control').push(controlPacket({ signal: 'turn-end', reason: 'commit', pts: this.audioPts }));
        return;
      case 'input_audio_buffer.clear':
        this.session.input('control').push(controlPacket({ signal: 'flush', reason: 'clear', pts: this.audioPts }));
        return;
      case 'conversation.item.create': {
        const audio = e.item.content.find((c) => c.type === 'input_audio');
        if (audio) throw new Error("conversation.item.create: 'input_audio' content is not supported; send the audio with input_audio_buffer.append and commit it");
        const text = e.item.content.map((c) => (c.type === 'input_text' ? c.text : '')).join('');
        const item = this.conversation.addUser([{ type: 'text', text }], e.item.id ?? this.conversation.newId('item'));
        this.lastUserItem = item;
        const body = { id: item.id, object: 'realtime.item', type: 'message', role: 'user', status: 'completed', content: [{ type: 'input_text', text }] };
        this.send({ type: 'conversation.item.added', previous_item_id: this.previousItemId(item), item: body });
        this.send({ type: 'conversation.item.done', previous_item_id: this.previousItemId(item), item: body });
        return;
      }
      case 'conversation.item.truncate': {
        const heard = this.conversation.truncate(e.item_id, e.audio_end_ms);
        this.send({ type: 'conversation.item.truncated', item_id: e.item_id, content_index: e.content_index, audio_end_ms: e.audio_end_ms });
        this.send({ type: 'omniflow.heard', item_id: heard.itemId, audio_end_ms: heard.audioEndMs, text: heard.text, dropped_chars: heard.dropped });
        return;
      }
      case 'conversation.item.delete':
        this.conversation.delete(e.item_id);
        this.send({ type: 'conversation.item.deleted', item_id: e.item_id });
        return;
      case 'response.create':
        if (this.response) throw new Error(`response.create: response '${this.response.id}' is still in progress; cancel it first`);
        this.session.input('requests').push(controlPacket({ signal: 'flush', pts: this.audioPts, ...(e.response?.instructions ? { reason: e.response.instructions } : {}) }));
        return;
      case 'response.cancel':
        if (!this.response || (e.response_id && e.response_id !== this.response.id)) {
          return this.sendError(invalid('response_cancel_not_active', e.response_id ? `response.cancel: response '${e.response_id}' is not in progress` : 'response.cancel: no response is in progress', 'response_id', e.event_id ?? null));
        }
        this.cancel('client_cancelled');
        return;
      case 'omniflow.input_video_frame.append': {
        const data = Buffer.from(e.data, 'base64');
        if (data.length !== e.width * e.height * 3) throw new Error(`omniflow.input_video_frame.append: ${e.width}x${e.height} rgb24 needs ${e.width * e.height * 3} bytes, got ${data.length}`);
        this.conversation.setFrame(imagePacket({ data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: e.width, height: e.height, format: 'rgb24', session: this.id, pts: this.audioPts }));
        return;
      }
      case 'omniflow.conversation.get':
        this.send({ type: 'omniflow.conversation', items: this.conversation.transcript() });
        return;
      case 'omniflow.playback.position':
        return; // informational: the client's playback clock; truncate is what changes the context
    }
  }

  /** Interrupts the answer in progress: the graph's turn is bumped (its generation aborted, queued packets fenced). */
  private cancel(reason: 'turn_detected' | 'client_cancelled', onsetAt?: number): void {
    const r = this.response;
    if (!r) return;
    this.session.interrupt(reason);
    this.finishResponse('cancelled', reason, onsetAt !== undefined ? performance.now() - onsetAt : undefined);
  }

  private onTurnEvent(p: ControlPacket): void {
    const ms = Math.round(p.pts / 1000);
    if (p.signal === 'speech-start') {
      this.speechItemId = p.reason;
      this.send({ type: 'input_audio_buffer.speech_started', audio_start_ms: ms, item_id: p.reason });
      // The barge-in clock starts when the audio holding the speech onset arrived.
      if (this.response && this.conversation.settings.turnDetection?.interruptResponse) this.cancel('turn_detected', this.wallTimeOf(p.pts));
    } else if (p.signal === 'speech-end') {
      this.speechEndAt = this.wallTimeOf(p.pts);
      this.send({ type: 'input_audio_buffer.speech_stopped', audio_end_ms: ms, item_id: this.speechItemId });
    } else if (p.signal === 'flush') {
      this.send({ type: 'input_audio_buffer.cleared' });
    } else if (p.signal === 'turn-end') {
      if (!p.reason) return this.sendError(invalid('input_audio_buffer_commit_empty', 'input_audio_buffer.commit: the buffer holds less than 100 ms of audio'));
      const item = this.conversation.find(p.reason);
      if (!item) return;
      if (item.timing && this.speechEndAt !== undefined) item.timing.speechEndAt = this.speechEndAt;
      this.speechEndAt = undefined;
      this.lastUserItem = item;
      const previous = this.previousItemId(item);
      const body = { id: item.id, object: 'realtime.item', type: 'message', role: 'user', status: 'completed', content: [{ type: 'input_audio', transcript: null }] };
      this.send({ type: 'input_audio_buffer.committed', previous_item_id: previous, item_id: item.id });
      this.send({ type: 'conversation.item.added', previous_item_id: previous, item: body });
      this.send({ type: 'conversation.item.done', previous_item_id: previous, item: body });
    }
  }

  private onText(p: TextPacket | ControlPacket): void {
    if (p.kind === 'control') {
      if (p.signal === 'turn-start') return this.startResponse(p.reason ?? '');
      if (p.signal === 'turn-end' && this.response) return this.finishResponse('completed');
      return;
    }
    const r = this.response;
    if (!r || !p.text) return;
    r.transcript += p.text;
    const audio = this.conversation.settings.modality === 'audio';
    this.send({ type: audio ? 'response.output_audio_transcript.delta' : 'response.output_text.delta', ...this.where(r), delta: p.text });
  }

  private onAudio(p: AudioPacket): void {
    const r = this.response;
    if (!r) return;
    r.audioSamples += p.samples.length;
    this.send({ type: 'response.output_audio.delta', ...this.where(r), delta: float32ToPcm16Base64(p.samples) });
    r.lastAudioSentAt = performance.now();
    r.firstAudioSentAt ??= r.lastAudioSentAt;
  }

  private startResponse(ids: string): void {
    const [id, itemId] = ids.split(' ');
    const item = this.conversation.find(itemId);
    if (!item) return;
    this.response = { id, item, transcript: '', audioSamples: 0, ...(this.lastUserItem ? { user: this.lastUserItem } : {}) };
    const audio = this.conversation.settings.modality === 'audio';
    this.send({ type: 'response.created', response: { id, object: 'realtime.response', status: 'in_progress', status_details: null, output: [], output_modalities: [this.conversation.settings.modality] } });
    const body = this.itemBody(item, 'in_progress', '');
    this.send({ type: 'response.output_item.added', response_id: id, output_index: 0, item: body });
    this.send({ type: 'conversation.item.added', previous_item_id: this.previousItemId(item), item: body });
    this.send({ type: 'response.content_part.added', response_id: id, item_id: item.id, output_index: 0, content_index: 0, part: audio ? { type: 'output_audio', transcript: '' } : { type: 'output_text', text: '' } });
  }

  private finishResponse(status: 'completed' | 'cancelled', reason?: string, bargeInMs?: number): void {
    const r = this.response;
    if (!r) return;
    this.response = undefined;
    const audio = this.conversation.settings.modality === 'audio';
    const where = this.where(r);
    if (audio) {
      this.send({ type: 'response.output_audio.done', ...where });
      this.send({ type: 'response.output_audio_transcript.done', ...where, transcript: r.transcript });
    } else this.send({ type: 'response.output_text.done', ...where, text: r.transcript });
    const itemStatus = status === 'completed' ? 'completed' : 'incomplete';
    this.send({ type: 'response.content_part.done', ...where, part: audio ? { type: 'output_audio', transcript: r.transcript } : { type: 'output_text', text: r.transcript } });
    const body = this.itemBody(r.item, itemStatus, r.transcript);
    this.send({ type: 'response.output_item.done', response_id: r.id, output_index: 0, item: body });
    this.send({ type: 'conversation.item.done', previous_item_id: this.previousItemId(r.item), item: body });
    this.send({
      type: 'response.done',
      response: {
        id: r.id, object: 'realtime.response', status, output: [body], output_modalities: [this.conversation.settings.modality],
        status_details: status === 'cancelled' ? { type: 'cancelled', reason } : null,
        usage: { output_token_details: { text_tokens: r.item.timing?.tokens ?? 0, audio_tokens: r.item.timing?.frames ?? 0 } },
      },
    });
    const report = turnReport({
      responseId: r.id, status, user: r.user, assistant: r.item, firstAudioSentAt: r.firstAudioSentAt, audioMs: (r.audioSamples * 1000) / WIRE_SAMPLE_RATE,
      metrics: this.session.metrics(), budgets: { ...DEFAULT_BUDGETS, ...this.options.budgets }, ...(bargeInMs !== undefined ? { bargeInMs } : {}),
    });
    this.reports.push(report);
    if (this.reports.length > 100) this.reports.shift();
    this.send({ type: 'omniflow.metrics', ...report });
    this.options.log?.(formatTurnReport(this.id, report));
  }

  private where(r: ActiveResponse) {
    return { response_id: r.id, item_id: r.item.id, output_index: 0, content_index: 0 };
  }

  private itemBody(item: ConversationItem, status: string, transcript: string) {
    const audio = this.conversation.settings.modality === 'audio';
    return { id: item.id, object: 'realtime.item', type: 'message', role: 'assistant', status, content: transcript || status !== 'in_progress' ? [audio ? { type: 'output_audio', transcript } : { type: 'output_text', text: transcript }] : [] };
  }

  private previousItemId(item: ConversationItem): string | null {
    const i = this.conversation.items.indexOf(item);
    return i > 0 ? this.conversation.items[i - 1].id : null;
  }

  /** When the audio at `pts` arrived (the chunk holding it), or now if it is older than what is kept. */
  private wallTimeOf(pts: number): number {
    for (const a of this.arrivals) if (a.endPts >= pts) return a.at;
    return performance.now();
  }

  private applySession(s: SessionConfigInput): void {
    const settings: AssistantSettings = this.conversation.settings;
    const voice = s.audio?.output?.voice ?? s.voice;
    if (voice !== undefined) {
      const speakers = Object.keys(this.options.model.config.talker_config?.speaker_id ?? {});
      if (!speakers.includes(voice.toLowerCase())) throw new Error(`session.update: unknown voice '${voice}'; this checkpoint has ${speakers.join(', ')}`);
      settings.voice = voice.toLowerCase();
    }
    if (s.instructions !== undefined) settings.instructions = s.instructions;
    const modalities = s.output_modalities ?? s.modalities;
    if (modalities) settings.modality = modalities.includes('audio') ? 'audio' : 'text';
    const td = s.audio?.input?.turn_detection !== undefined ? s.audio.input.turn_detection : s.turn_detection;
    if (td !== undefined) {
      const prev = settings.turnDetection ?? DEFAULT_TURN_DETECTION;
      settings.turnDetection = td === null ? null : {
        type: 'server_vad',
        thresholdDb: td.threshold_db ?? (td.threshold !== undefined ? thresholdToDb(td.threshold) : prev.thresholdDb),
        silenceMs: td.silence_duration_ms ?? prev.silenceMs,
        minSpeechMs: prev.minSpeechMs,
        prefixPaddingMs: td.prefix_padding_ms ?? prev.prefixPaddingMs,
        createResponse: td.create_response ?? true,
        interruptResponse: td.interrupt_response ?? true,
      } satisfies TurnDetection;
    }
    const max = s.max_output_tokens ?? s.max_response_output_tokens;
    if (max !== undefined) settings.maxOutputTokens = max === 'inf' ? this.options.maxOutputTokens : Math.min(max, this.options.maxOutputTokens);
    if (s.video && !this.options.model.visionEncoder) throw new Error('session.update: video needs a checkpoint loaded with its vision encoder (thinker.visual)');
    if (s.video !== undefined) settings.video = s.video;
  }

  private describeSession() {
    const s = this.conversation.settings;
    const td = s.turnDetection;
    const format = { type: 'audio/pcm', rate: WIRE_SAMPLE_RATE };
    return {
      type: 'realtime', object: 'realtime.session', id: this.id, model: 'qwen3-omni',
      instructions: s.instructions ?? '', output_modalities: [s.modality], max_output_tokens: s.maxOutputTokens,
      audio: {
        input: {
          format,
          turn_detection: td ? { type: 'server_vad', threshold_db: td.thresholdDb, silence_duration_ms: td.silenceMs, prefix_padding_ms: td.prefixPaddingMs, create_response: td.createResponse, interrupt_response: td.interruptResponse } : null,
        },
        output: { format, voice: s.voice },
      },
      video: s.video,
      voices: Object.keys(this.options.model.config.talker_config?.speaker_id ?? {}),
    };
  }

  private send(event: Record<string, unknown>): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    this.ws.send(JSON.stringify({ event_id: this.conversation.newId('event'), ...event }));
  }

  private sendError(error: ProtocolError): void {
    this.send({ type: 'error', error });
  }
}

function invalid(code: string, message: string, param: string | null = null, event_id: string | null = null): ProtocolError {
  return { type: 'invalid_request_error', code, message, param, event_id };
}

