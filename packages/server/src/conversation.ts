import type * as tf from '@tensorflow/tfjs-core';
import type { ImagePacket } from '@omniflow/core';
import type { ThinkerContentPart, ThinkerMessage } from '@omniflow/nodes';

/*
 * One connection's conversation: the items the model sees (user audio/text, assistant answers), the assistant's
 * settings, the latest camera frame, and the heard-text ledger — for every assistant answer, how many samples of its
 * audio voice how much of its text. When the user barges in, the client says how much audio it played
 * (conversation.item.truncate) and the answer in the context is cut to the text that audio voiced.
 */

/** Server VAD settings (the Realtime API's `turn_detection`), or null for push-to-talk (the client commits). */
export interface TurnDetection {
  readonly type: 'server_vad';
  /** Energy threshold, dBFS. */
  readonly thresholdDb: number;
  /** Silence after speech that ends the user's turn (the VAD's hangover). */
  readonly silenceMs: number;
  /** Speech needed before speech-start (rejects clicks). */
  readonly minSpeechMs: number;
  /** Audio kept from before the detected start. */
  readonly prefixPaddingMs: number;
  /** Answer automatically when the user's turn ends. */
  readonly createResponse: boolean;
  /** Interrupt the answer when the user starts speaking. */
  readonly interruptResponse: boolean;
}

export interface AssistantSettings {
  instructions?: string;
  voice: string;
  /** 'audio' answers aloud (with a transcript); 'text' answers in text only. */
  modality: 'audio' | 'text';
  turnDetection: TurnDetection | null;
  maxOutputTokens: number;
  /** Add the latest camera frame to each user turn. */
  video: boolean;
}

export const DEFAULT_TURN_DETECTION: TurnDetection = {
  type: 'server_vad', thresholdDb: -40, silenceMs: 400, minSpeechMs: 60, prefixPaddingMs: 300, createResponse: true, interruptResponse: true,
};

/** One piece of an assistant answer's audio: the answer's samples up to `endSample` voice its text up to `textEnd`. */
interface LedgerEntry {
  readonly endSample: number;
  readonly textEnd: number;
}

export interface ConversationItem {
  readonly id: string;
  readonly role: 'user' | 'assistant';
  /** User content (audio parts own their encoder rows until the conversation is disposed). */
  readonly parts: ThinkerContentPart[];
  /** Assistant: the text generated so far. */
  text: string;
  /** Assistant: the text kept in the context (all of `text` unless interrupted or truncated). */
  contextText?: string;
  status: 'in_progress' | 'completed' | 'incomplete';
  /** Assistant: audio samples sent (24 kHz) and what they voice. */
  readonly ledger: LedgerEntry[];
  samples: number;
  /** Assistant: set by a truncate: the audio the user heard. */
  heardMs?: number;
  /** Where the time went (ms, or performance.now() marks): written by the nodes, read by the latency report. */
  timing?: Record<string, number>;
}

/** What a truncate kept. */
export interface Heard {
  readonly itemId: string;
  readonly audioEndMs: number;
  readonly text: string;
  /** Characters of the answer dropped from the context. */
  readonly dropped: number;
}

/**
 * The conversation of one connection; the assistant graph's nodes and the connection share it. `dispose()` frees the
 * encoder rows of user audio it holds.
 *
 * ```ts
 * const c = new Conversation({ voice: 'ethan' });
 * const a = c.beginAssistant('resp_1');
 * c.appendText(a, 'Hello there'); c.voiced(a, 2400, { end: 5 }); c.voiced(a, 2400, { end: 11 });
 * c.truncate(a.id, 100).text; // 'Hello' (the first 2400 samples = 100 ms voice 5 characters)
 * ```
 */
export class Conversation {
  readonly items: ConversationItem[] = [];
  readonly settings: AssistantSettings;
  private latestFrame: ImagePacket | undefined;
  private nextId = 0;
  private disposed = false;

  constructor(settings: Partial<AssistantSettings> & { voice: string }, readonly sampleRate = 24_000) {
    this.settings = { modality: 'audio', turnDetection: DEFAULT_TURN_DETECTION, maxOutputTokens: 256, video: false, ...settings };
  }

  /** A fresh id with the Realtime API's prefixes ('item_…', 'resp_…', 'event_…'). */
  newId(prefix: 'item' | 'resp' | 'event'): string {
    return `${prefix}_${(++this.nextId).toString(36).padStart(6, '0')}`;
  }

  find(id: string): ConversationItem | undefined {
    return this.items.find((i) => i.id === id);
  }

  /** Adds a user message; audio parts' tensors now belong to the conversation. */
  addUser(parts: ThinkerContentPart[], id = this.newId('item')): ConversationItem {
    this.assertOpen();
    if (this.find(id)) throw new Error(`conversation: item id '${id}' is already used`);
    const item: ConversationItem = { id, role: 'user', parts, text: parts.map((p) => (p.type === 'text' ? p.text : '')).join(''), status: 'completed', ledger: [], samples: 0 };
    this.items.push(item);
    return item;
  }

  beginAssistant(id = this.newId('item')): ConversationItem {
    this.assertOpen();
    const item: ConversationItem = { id, role: 'assistant', parts: [], text: '', status: 'in_progress', ledger: [], samples: 0 };
    this.items.push(item);
    return item;
  }

  appendText(item: ConversationItem, delta: string): void {
    item.text += delta;
  }

  /** Records `samples` more samples of `item`'s audio, voicing its text up to `voices.end` (unchanged when absent). */
  voiced(item: ConversationItem, samples: number, voices?: { readonly end: number }): void {
    item.samples += samples;
    const last = item.ledger.at(-1)?.textEnd ?? 0;
    item.ledger.push({ endSample: item.samples, textEnd: Math.max(last, voices?.end ?? last) });
  }

  /**
   * Ends an answer. An interrupted one (`'incomplete'`) keeps in the context only the text its audio sent so far
   * voices — the client narrows that further with truncate() once it knows what it played.
   */
  finishAssistant(item: ConversationItem, status: 'completed' | 'incomplete'): void {
    item.status = status;
    if (status === 'incomplete' && this.settings.modality === 'audio') item.contextText ??= item.text.slice(0, item.ledger.at(-1)?.textEnd ?? 0);
  }

  /**
   * The user heard `audioEndMs` of assistant item `itemId`: keep in the context only the text that audio voices (the
   * pieces played in full). Text removed once does not come back with a later, longer truncate (the Realtime API's
   * rule). Errors name the item and the audio length.
   */
  truncate(itemId: string, audioEndMs: number): Heard {
    const item = this.find(itemId);
    if (!item) throw new Error(`conversation.item.truncate: no item '${itemId}'`);
    if (item.role !== 'assistant') throw new Error(`conversation.item.truncate: item '${itemId}' is a ${item.role} message; only assistant audio can be truncated`);
    const lengthMs = (item.samples * 1000) / this.sampleRate;
    if (audioEndMs > lengthMs + 1) throw new Error(`conversation.item.truncate: audio_end_ms ${audioEndMs} is past the end of item '${itemId}' (${lengthMs.toFixed(1)} ms of audio)`);
    const played = Math.round((audioEndMs * this.sampleRate) / 1000);
    let textEnd = 0;
    for (const e of item.ledger) if (e.endSample <= played) textEnd = e.textEnd;
    const before = item.contextText ?? item.text;
    const text = item.text.slice(0, Math.min(textEnd, before.length));
    item.contextText = text;
    item.heardMs = audioEndMs;
    return { itemId, audioEndMs, text, dropped: item.text.length - text.length };
  }

  /** Removes an item (its tensors are freed). */
  delete(itemId: string): void {
    const i = this.items.findIndex((x) => x.id === itemId);
    if (i < 0) throw new Error(`conversation.item.delete: no item '${itemId}'`);
    freeParts(this.items[i].parts);
    this.items.splice(i, 1);
  }

  /** Keeps the newest camera frame (older ones are dropped: the thinker looks at the latest). */
  setFrame(frame: ImagePacket): void {
    this.latestFrame = frame;
  }

  get frame(): ImagePacket | undefined {
    return this.latestFrame;
  }

  /** The thinker's view: instructions, then every item as the context holds it (empty answers left out). */
  messages(): ThinkerMessage[] {
    const out: ThinkerMessage[] = [];
    if (this.settings.instructions) out.push({ role: 'system', content: this.settings.instructions });
    for (const item of this.items) {
      if (item.role === 'user') out.push({ role: 'user', content: item.parts });
      else if (item.status !== 'in_progress') {
        const text = item.contextText ?? item.text;
        if (text) out.push({ role: 'assistant', content: text });
      }
    }
    return out;
  }

  /** The context as text, one line per item: what `omniflow.conversation` reports. */
  transcript(): { id: string; role: string; status: string; text: string; generated?: string; heard_ms?: number }[] {
    return this.items.map((i) => ({
      id: i.id, role: i.role, status: i.status,
      text: i.role === 'user' ? describeUser(i.parts) : (i.contextText ?? i.text),
      ...(i.role === 'assistant' ? { generated: i.text } : {}),
      ...(i.heardMs !== undefined ? { heard_ms: i.heardMs } : {}),
    }));
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const item of this.items) freeParts(item.parts);
    this.items.length = 0;
    this.latestFrame = undefined;
  }

  private assertOpen(): void {
    if (this.disposed) throw new Error('conversation: used after dispose()');
  }
}

function describeUser(parts: readonly ThinkerContentPart[]): string {
  return parts.map((p) => (p.type === 'text' ? p.text : p.type === 'audio' ? `[audio ${(p.frames / 100).toFixed(2)} s]` : `[${p.type}]`)).join(' ');
}

function freeParts(parts: readonly ThinkerContentPart[]): void {
  for (const p of parts) {
    if (p.type === 'text') continue;
    (p.embeds as tf.Tensor).dispose();
    if (p.type !== 'audio') for (const d of p.deepstack) d.dispose();
  }
}
