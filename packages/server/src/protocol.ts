import { z } from 'zod';

/*
 * The event protocol: JSON text messages over one WebSocket, wire-compatible with the OpenAI Realtime API
 * (GA event names) for everything both have, plus `omniflow.*` events for what the Realtime API has not (video frames,
 * per-turn latency reports, the heard-text ledger, reading the conversation back). Every client message is parsed here,
 * once, at the boundary; anything that does not parse becomes an `error` event naming what was wrong.
 * docs/realtime-protocol.md describes every event.
 */

/** Sample rate of PCM16 audio on the wire, both ways (the Realtime API's `audio/pcm`). */
export const WIRE_SAMPLE_RATE = 24_000;

const eventId = z.string().max(128).optional();

const turnDetection = z.union([
  z.null(),
  z.object({
    type: z.enum(['server_vad', 'semantic_vad']),
    /** Speech threshold in dBFS (omniflow; the Realtime API's 0..1 `threshold` is accepted and mapped). */
    threshold_db: z.number().max(0).optional(),
    threshold: z.number().min(0).max(1).optional(),
    prefix_padding_ms: z.number().int().min(0).max(2000).optional(),
    silence_duration_ms: z.number().int().min(0).max(10_000).optional(),
    create_response: z.boolean().optional(),
    interrupt_response: z.boolean().optional(),
  }).passthrough(),
]);

const audioFormat = z.object({ type: z.string(), rate: z.number().optional() }).passthrough()
  .refine((f) => f.type === 'audio/pcm' && (f.rate ?? WIRE_SAMPLE_RATE) === WIRE_SAMPLE_RATE, { message: `only audio/pcm at ${WIRE_SAMPLE_RATE} Hz is supported` });

/** session.update's `session`: the GA shape (`audio.input/output`) and the beta shape (flat `voice`, `turn_detection`) both parse. */
export const sessionConfigSchema = z.object({
  type: z.enum(['realtime']).optional(),
  model: z.string().max(256).optional(),
  instructions: z.string().max(32_768).optional(),
  output_modalities: z.array(z.enum(['text', 'audio'])).min(1).optional(),
  modalities: z.array(z.enum(['text', 'audio'])).min(1).optional(),
  voice: z.string().max(64).optional(),
  turn_detection: turnDetection.optional(),
  input_audio_format: z.literal('pcm16').optional(),
  output_audio_format: z.literal('pcm16').optional(),
  max_output_tokens: z.union([z.number().int().positive().max(4096), z.literal('inf')]).optional(),
  max_response_output_tokens: z.union([z.number().int().positive().max(4096), z.literal('inf')]).optional(),
  audio: z.object({
    input: z.object({ format: audioFormat.optional(), turn_detection: turnDetection.optional() }).passthrough().optional(),
    output: z.object({ format: audioFormat.optional(), voice: z.string().max(64).optional() }).passthrough().optional(),
  }).passthrough().optional(),
  /** omniflow: use the latest camera frame as part of each user turn. */
  video: z.boolean().optional(),
}).passthrough();
export type SessionConfigInput = z.infer<typeof sessionConfigSchema>;

const base64 = (max: number) => z.string().max(max).regex(/^[A-Za-z0-9+/]*={0,2}$/, { message: 'expected base64' });

const inputContent = z.discriminatedUnion('type', [
  z.object({ type: z.literal('input_text'), text: z.string().max(32_768) }),
  z.object({ type: z.literal('input_audio'), audio: base64(32 * 1024 * 1024) }),
]);

/** Every event a client may send. */
export const clientEventSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('session.update'), event_id: eventId, session: sessionConfigSchema }),
  z.object({ type: z.literal('input_audio_buffer.append'), event_id: eventId, audio: base64(32 * 1024 * 1024) }),
  z.object({ type: z.literal('input_audio_buffer.commit'), event_id: eventId }),
  z.object({ type: z.literal('input_audio_buffer.clear'), event_id: eventId }),
  z.object({
    type: z.literal('conversation.item.create'), event_id: eventId, previous_item_id: z.string().nullish(),
    item: z.object({ id: z.string().max(64).optional(), type: z.literal('message'), role: z.literal('user'), content: z.array(inputContent).min(1).max(64) }).passthrough(),
  }),
  z.object({ type: z.literal('conversation.item.truncate'), event_id: eventId, item_id: z.string().max(64), content_index: z.number().int().min(0), audio_end_ms: z.number().min(0) }),
  z.object({ type: z.literal('conversation.item.delete'), event_id: eventId, item_id: z.string().max(64) }),
  z.object({ type: z.literal('response.create'), event_id: eventId, response: z.object({ instructions: z.string().max(32_768).optional() }).passthrough().optional() }),
  z.object({ type: z.literal('response.cancel'), event_id: eventId, response_id: z.string().max(64).optional() }),
  // omniflow extras
  z.object({
    type: z.literal('omniflow.input_video_frame.append'), event_id: eventId,
    width: z.number().int().min(8).max(1024), height: z.number().int().min(8).max(1024), format: z.literal('rgb24'), data: base64(4 * 1024 * 1024),
  }),
  z.object({ type: z.literal('omniflow.conversation.get'), event_id: eventId }),
  z.object({ type: z.literal('omniflow.playback.position'), event_id: eventId, item_id: z.string().max(64), audio_ms: z.number().min(0) }),
]);
export type ClientEvent = z.infer<typeof clientEventSchema>;
export const CLIENT_EVENT_TYPES: readonly string[] = clientEventSchema.options.map((o) => o.shape.type.value);

/** The `error` event's body (the Realtime API's shape). */
export interface ProtocolError {
  readonly type: 'invalid_request_error' | 'server_error';
  readonly code: string;
  readonly message: string;
  readonly param?: string | null;
  readonly event_id?: string | null;
}

/** A parse result: the event, or the error to send back. */
export type Parsed = { ok: true; event: ClientEvent } | { ok: false; error: ProtocolError };

/**
 * Parses one client message: size, JSON, a known `type`, then the event's schema. Never throws.
 *
 * ```ts
 * const r = parseClientEvent('{"type":"input_audio_buffer.commit"}', 1 << 20);
 * if (!r.ok) send({ type: 'error', error: r.error });
 * ```
 */
export function parseClientEvent(data: string | Buffer, maxBytes: number): Parsed {
  const bytes = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
  if (bytes > maxBytes) return fail('message_too_large', `message of ${bytes} bytes exceeds the limit of ${maxBytes} bytes; send audio in smaller appends`);
  let json: unknown;
  try {
    json = JSON.parse(typeof data === 'string' ? data : data.toString('utf8'));
  } catch (e) {
    return fail('invalid_json', `message is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail('invalid_event', 'an event must be a JSON object with a "type"');
  const type = (json as { type?: unknown }).type;
  const id = (json as { event_id?: unknown }).event_id;
  const eventIdOf = typeof id === 'string' ? id : null;
  if (typeof type !== 'string') return fail('invalid_event', 'an event must have a string "type"', 'type', eventIdOf);
  if (!CLIENT_EVENT_TYPES.includes(type)) return fail('unknown_event_type', `unknown event type '${type.slice(0, 80)}'`, 'type', eventIdOf);
  const r = clientEventSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    const param = issue.path.join('.');
    return fail('invalid_value', `${type}: ${param || 'event'}: ${issue.message}`, param || null, eventIdOf);
  }
  return { ok: true, event: r.data };
}

function fail(code: string, message: string, param: string | null = null, event_id: string | null = null): Parsed {
  return { ok: false, error: { type: 'invalid_request_error', code, message, param, event_id } };
}

/**
 * PCM16 little-endian (base64) → float samples in [-1, 1). Odd byte counts are an error.
 *
 * ```ts
 * pcm16Base64ToFloat32('AAD/fw=='); // Float32Array [0, 0.99997]
 * ```
 */
export function pcm16Base64ToFloat32(b64: string): Float32Array {
  const bytes = Buffer.from(b64, 'base64');
  if (bytes.length % 2) throw new Error(`audio: ${bytes.length} bytes is not a whole number of PCM16 samples`);
  const out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readInt16LE(2 * i) / 32768;
  return out;
}

/**
 * Float samples → PCM16 little-endian, base64 (clipped to the 16-bit range).
 *
 * ```ts
 * float32ToPcm16Base64(new Float32Array([0, 1])); // 'AAD/fw=='
 * ```
 */
export function float32ToPcm16Base64(samples: Float32Array): string {
  const buf = Buffer.allocUnsafe(samples.length * 2);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    buf.writeInt16LE(s < 0 ? Math.round(s * 32768) : Math.round(s * 32767), 2 * i);
  }
  return buf.toString('base64');
}

/** Maps the Realtime API's 0..1 VAD `threshold` onto an energy threshold in dBFS (0.5 → -40 dBFS). */
export function thresholdToDb(threshold: number): number {
  return -70 + 60 * threshold;
}
