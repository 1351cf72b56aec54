/**
 * Every kind of packet that flows through an omniflow graph, in one place.
 *
 * A packet is a small envelope: which `session` it belongs to, which `turn` (epoch) of that
 * session produced it, its `pts` (presentation time in microseconds on the one graph-wide media
 * clock) and a payload of a known `kind`. Media packets also carry a `duration` in microseconds.
 *
 * A packet that carries a tensor owns it: whoever receives it either forwards it or disposes it
 * (see {@link disposePacket}).
 */

/** Microseconds: the graph-wide timebase of `pts` and `duration`. */
export type Micros = number;
export const MICROS_PER_SECOND = 1_000_000;

/**
 * The opaque tensor handle core knows about. The runtime fills it in (a tfjs `Tensor` satisfies it);
 * core never looks inside, it only disposes.
 */
export interface TensorHandle {
  readonly shape: readonly number[];
  readonly dtype: string;
  readonly isDisposed: boolean;
  dispose(): void;
}

export interface PacketHeader {
  /** Session (conversation or job) the packet belongs to. */
  readonly session: string;
  /** Turn epoch within the session; bumped by every interrupt. */
  readonly turn: number;
  /** Presentation time, microseconds on the graph clock. */
  readonly pts: Micros;
  /** Survives an interrupt of its turn (e.g. the turn-end marker, accounting packets). */
  readonly uninterruptible?: boolean;
}

/** Interleaved float32 PCM in [-1, 1]. */
export interface AudioPacket extends PacketHeader {
  readonly kind: 'audio';
  readonly samples: Float32Array;
  readonly sampleRate: number;
  readonly channels: number;
  readonly duration: Micros;
  /** Range of generated text this audio voices, [start, end) in characters of the turn's text. */
  readonly voices?: { readonly start: number; readonly end: number; readonly text: string };
}

export type PixelFormat = 'rgb24';

/** One decoded video frame, row-major HWC. */
export interface VideoPacket extends PacketHeader {
  readonly kind: 'video';
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly format: PixelFormat;
  readonly duration: Micros;
  /** Frame index within its source. */
  readonly index: number;
}

/** A still picture, row-major HWC. */
export interface ImagePacket extends PacketHeader {
  readonly kind: 'image';
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly format: PixelFormat;
}

/** A piece of streamed text; `final` marks the last delta of a message. */
export interface TextPacket extends PacketHeader {
  readonly kind: 'text';
  readonly text: string;
  readonly role?: 'user' | 'assistant' | 'system';
  readonly final?: boolean;
}

/** Token ids (for example, what the thinker sampled this step). */
export interface TokensPacket extends PacketHeader {
  readonly kind: 'tokens';
  readonly ids: Int32Array;
}

/** A tensor owned by this packet; `name` says what it is (e.g. 'input_features'). */
export interface TensorPacket<T extends TensorHandle = TensorHandle> extends PacketHeader {
  readonly kind: 'tensor';
  readonly name: string;
  readonly tensor: T;
  /** Extra tensors travelling with the main one (for example, DeepStack features); owned too. */
  readonly extras?: Readonly<Record<string, T>>;
}

/** Codec codes, group-major: `codes[g * frames + f]`, one frame every 80 ms for Qwen3-Omni. */
export interface CodesPacket extends PacketHeader {
  readonly kind: 'codes';
  readonly codes: Int32Array;
  readonly groups: number;
  readonly frames: number;
  readonly voices?: { readonly start: number; readonly end: number; readonly text: string };
}

export type ControlSignal =
  | 'turn-start'
  | 'turn-end'
  | 'interrupt'
  | 'flush'
  | 'end-of-stream'
  | 'speech-start'
  | 'speech-end';

/** In-band control: turn boundaries, interrupts, flushes and end of stream. */
export interface ControlPacket extends PacketHeader {
  readonly kind: 'control';
  readonly signal: ControlSignal;
  readonly reason?: string;
}

export type Packet =
  | AudioPacket
  | VideoPacket
  | ImagePacket
  | TextPacket
  | TokensPacket
  | TensorPacket
  | CodesPacket
  | ControlPacket;

export type PacketKind = Packet['kind'];
export type PacketOfKind<K extends PacketKind> = Extract<Packet, { kind: K }>;

/** Fields every constructor below fills in when they are not given. */
type Stamp = { session?: string; turn?: number; pts?: Micros; uninterruptible?: boolean };
type Body<P extends Packet> = Omit<P, keyof PacketHeader | 'kind'> & Stamp;

/**
 * Copies the body and fills in the header. Packet construction is on every node's per-packet path:
 * `Object.assign` then plain stores measured ~100x faster on Node 20 than rest destructuring or a
 * spread followed by new keys (about 0.1 µs against 15 µs per packet).
 */
function stamped<P extends Packet>(kind: P['kind'], b: Stamp & object): P {
  const p = Object.assign({}, b) as Record<string, unknown>;
  p.session = b.session ?? 'default';
  p.turn = b.turn ?? 0;
  p.pts = b.pts ?? 0;
  p.kind = kind;
  return p as unknown as P;
}

/** Duration of `frames` samples at `sampleRate`, in microseconds. */
export function samplesToMicros(frames: number, sampleRate: number): Micros {
  return (frames * MICROS_PER_SECOND) / sampleRate;
}

/**
 * ```ts
 * const p = audioPacket({ samples: new Float32Array(320), sampleRate: 16_000, channels: 1, pts: 0 });
 * p.duration; // 20_000 µs
 * ```
 */
export function audioPacket(b: Omit<Body<AudioPacket>, 'duration'> & { duration?: Micros }): AudioPacket {
  if (!(b.sampleRate > 0)) throw new Error(`audioPacket: sampleRate must be positive, got ${b.sampleRate}`);
  if (!Number.isInteger(b.channels) || b.channels < 1) throw new Error(`audioPacket: channels must be a positive integer, got ${b.channels}`);
  if (b.samples.length % b.channels !== 0) throw new Error(`audioPacket: ${b.samples.length} samples is not a multiple of ${b.channels} channels`);
  const p = stamped<AudioPacket>('audio', b);
  if (b.duration === undefined) (p as { duration: Micros }).duration = samplesToMicros(b.samples.length / b.channels, b.sampleRate);
  return p;
}

export function videoPacket(b: Body<VideoPacket>): VideoPacket {
  if (b.data.length !== b.width * b.height * 3) throw new Error(`videoPacket: ${b.data.length} bytes does not match ${b.width}x${b.height} rgb24`);
  return stamped<VideoPacket>('video', b);
}

export function imagePacket(b: Body<ImagePacket>): ImagePacket {
  if (b.data.length !== b.width * b.height * 3) throw new Error(`imagePacket: ${b.data.length} bytes does not match ${b.width}x${b.height} rgb24`);
  return stamped<ImagePacket>('image', b);
}

export function textPacket(b: Body<TextPacket>): TextPacket {
  return stamped<TextPacket>('text', b);
}

export function tokensPacket(b: Body<TokensPacket>): TokensPacket {
  return stamped<TokensPacket>('tokens', b);
}

export function tensorPacket<T extends TensorHandle>(b: Body<TensorPacket<T>>): TensorPacket<T> {
  return stamped<TensorPacket>('tensor', b) as TensorPacket<T>;
}

export function codesPacket(b: Body<CodesPacket>): CodesPacket {
  if (b.codes.length !== b.groups * b.frames) throw new Error(`codesPacket: ${b.codes.length} codes is not ${b.groups} groups x ${b.frames} frames`);
  return stamped<CodesPacket>('codes', b);
}

export function controlPacket(b: Body<ControlPacket>): ControlPacket {
  return stamped<ControlPacket>('control', b);
}

/** Type guard: `packets$.pipe(filter(isKind('audio')))`. */
export function isKind<K extends PacketKind>(kind: K): (p: Packet) => p is PacketOfKind<K> {
  return (p: Packet): p is PacketOfKind<K> => p.kind === kind;
}

/** Releases whatever the packet owns (its tensors). Safe to call twice. */
export function disposePacket(p: Packet): void {
  if (p.kind !== 'tensor') return;
  if (!p.tensor.isDisposed) p.tensor.dispose();
  if (p.extras) for (const t of Object.values(p.extras)) if (!t.isDisposed) t.dispose();
}

/** Bytes of payload a packet holds (for byte-capacity queues). */
export function packetBytes(p: Packet): number {
  switch (p.kind) {
    case 'audio':
      return p.samples.byteLength;
    case 'video':
    case 'image':
      return p.data.byteLength;
    case 'text':
      return p.text.length * 2;
    case 'tokens':
      return p.ids.byteLength;
    case 'codes':
      return p.codes.byteLength;
    case 'tensor':
      return p.tensor.shape.reduce((a, b) => a * b, 1) * 4;
    case 'control':
      return 0;
  }
}

/** Media duration of a packet in microseconds (0 for non-media kinds). */
export function packetDuration(p: Packet): Micros {
  return p.kind === 'audio' || p.kind === 'video' ? p.duration : 0;
}
