/**
 * Typed ports: what a node's inputs and outputs carry.
 *
 * A port says which packet kinds may flow through it and, for audio, the format it expects. Graph
 * validation compares the two ends of every edge with {@link portMismatch}; the TypeScript types of a
 * node's streams come from the same declaration (`PacketOfPort`), so they are never written twice.
 */
import type {
  AudioPacket,
  CodesPacket,
  ControlPacket,
  ImagePacket,
  Packet,
  PacketKind,
  PacketOfKind,
  TensorPacket,
  TextPacket,
  TokensPacket,
  VideoPacket,
} from './packets.js';

/** Declaration of one port. `P` is the packet type flowing through it (type-level only). */
export interface PortSpec<P extends Packet = Packet> {
  /** Packet kinds accepted; `null` accepts every kind. */
  readonly kinds: readonly PacketKind[] | null;
  /** An optional input may stay unconnected; required inputs must be connected. */
  readonly optional: boolean;
  /** Audio: sample rate in Hz the port expects / produces (undefined = any). */
  readonly sampleRate?: number;
  /** Audio: channel count (undefined = any). */
  readonly channels?: number;
  /** Tensor: what the tensor is, e.g. 'input_features' (informational). */
  readonly name?: string;
  /** Tensor: dtype, e.g. 'float32' (informational). */
  readonly dtype?: string;
  /** Codes: number of code groups (undefined = any). */
  readonly groups?: number;
  readonly description?: string;
  /** Phantom field carrying the packet type; never set at runtime. */
  readonly __packet?: P;
}

/** Packet type of a port declaration. */
export type PacketOfPort<S> = S extends PortSpec<infer P> ? P : never;

/** Named ports of a node. */
export type PortMap = Record<string, PortSpec<any>>;

export interface PortOptions {
  optional?: boolean;
  description?: string;
}

function port<P extends Packet>(kinds: readonly PacketKind[] | null, o: PortOptions & object): PortSpec<P> {
  const spec: Record<string, unknown> = { kinds, optional: o.optional ?? false };
  for (const [k, v] of Object.entries(o)) if (v !== undefined && k !== 'optional') spec[k] = v;
  return Object.freeze(spec) as unknown as PortSpec<P>;
}

/**
 * Port constructors.
 *
 * ```ts
 * const inputs = { audio: ports.audio({ sampleRate: 16_000, channels: 1 }), hint: ports.text({ optional: true }) };
 * const outputs = { features: ports.tensor({ name: 'input_features', dtype: 'float32' }) };
 * ```
 */
export const ports = {
  audio: (o: PortOptions & { sampleRate?: number; channels?: number } = {}) => port<AudioPacket>(['audio'], o),
  video: (o: PortOptions = {}) => port<VideoPacket>(['video'], o),
  image: (o: PortOptions = {}) => port<ImagePacket>(['image'], o),
  text: (o: PortOptions = {}) => port<TextPacket>(['text'], o),
  tokens: (o: PortOptions = {}) => port<TokensPacket>(['tokens'], o),
  tensor: (o: PortOptions & { name?: string; dtype?: string } = {}) => port<TensorPacket>(['tensor'], o),
  codes: (o: PortOptions & { groups?: number } = {}) => port<CodesPacket>(['codes'], o),
  control: (o: PortOptions = {}) => port<ControlPacket>(['control'], o),
  /** Accepts every packet kind. */
  any: (o: PortOptions = {}) => port<Packet>(null, o),
  /** Accepts the listed kinds: `ports.of(['text', 'control'])`. */
  of: <K extends PacketKind>(kinds: readonly K[], o: PortOptions = {}) => port<PacketOfKind<K>>([...kinds], o),
};

/** Short human form of a port, e.g. `audio 16000Hz 1ch` or `any`. */
export function describePort(p: PortSpec): string {
  const parts = [p.kinds === null ? 'any' : p.kinds.join('|')];
  if (p.sampleRate !== undefined) parts.push(`${p.sampleRate}Hz`);
  if (p.channels !== undefined) parts.push(`${p.channels}ch`);
  if (p.name !== undefined) parts.push(p.name);
  if (p.dtype !== undefined) parts.push(p.dtype);
  if (p.groups !== undefined) parts.push(`${p.groups} groups`);
  if (p.optional) parts.push('optional');
  return parts.join(' ');
}

/**
 * Why packets from port `from` cannot flow into port `to`, or `undefined` when they can.
 *
 * ```ts
 * portMismatch(ports.audio({ sampleRate: 16_000 }), ports.audio({ sampleRate: 24_000 }));
 * // 'audio sample rate 16000 Hz does not match 24000 Hz'
 * ```
 */
export function portMismatch(from: PortSpec, to: PortSpec): string | undefined {
  if (from.kinds !== null && to.kinds !== null) {
    const accepted = from.kinds.filter((k) => to.kinds!.includes(k));
    if (accepted.length === 0) return `kind ${from.kinds.join('|')} does not match ${to.kinds.join('|')}`;
  }
  if (from.sampleRate !== undefined && to.sampleRate !== undefined && from.sampleRate !== to.sampleRate)
    return `audio sample rate ${from.sampleRate} Hz does not match ${to.sampleRate} Hz`;
  if (from.channels !== undefined && to.channels !== undefined && from.channels !== to.channels)
    return `audio channels ${from.channels} does not match ${to.channels}`;
  if (from.groups !== undefined && to.groups !== undefined && from.groups !== to.groups)
    return `code groups ${from.groups} does not match ${to.groups}`;
  return undefined;
}

/** True when a packet may flow through the port at runtime. */
export function portAccepts(p: PortSpec, packet: Packet): boolean {
  return p.kinds === null || p.kinds.includes(packet.kind);
}
