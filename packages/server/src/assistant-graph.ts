import { graph } from '@omniflow/core';
import { resampleAudio, type Qwen3OmniModel } from '@omniflow/nodes';
import type { Conversation } from './conversation.js';
import { respond, type RespondParams } from './respond.node.js';
import { userTurn } from './user-turn.node.js';

export interface AssistantGraphOptions {
  readonly model: Qwen3OmniModel;
  readonly conversation: Conversation;
  /** The respond node's generation and pacing (seed, maxFrames, leadFrames, frameMs, tail). */
  readonly respond?: Partial<Omit<RespondParams, 'model' | 'conversation'>>;
  /** The userTurn node's limits (maxBufferSeconds, minCommitMs). */
  readonly turns?: { readonly maxBufferSeconds?: number; readonly minCommitMs?: number };
}

/**
 * The assistant as a graph, one session per connection:
 *
 * ```
 * input 'audio' (24 kHz) → resample (16 kHz) → turns (VAD / commit, audio encoder) ─┬─ user → respond → output 'text', 'audio' (24 kHz)
 * input 'control' (commit / clear) ──────────────────────────┘                     └─ output 'events'
 * input 'requests' (response.create) ───────────────────────────────────────────────────────┘
 * ```
 *
 * ```ts
 * const session = assistantGraph({ model, conversation }).session({ id: 'c1', mode: 'realtime' });
 * session.output('audio').subscribe(play);
 * void session.start();
 * session.input('audio').push(audioPacket({ samples, sampleRate: 24_000, channels: 1, pts: 0 }));
 * ```
 */
export function assistantGraph(o: AssistantGraphOptions) {
  return graph('assistant')
    .add('resample', resampleAudio, { sampleRate: 16_000 })
    .add('turns', userTurn, { model: o.model, conversation: o.conversation, ...o.turns })
    .add('respond', respond, { model: o.model, conversation: o.conversation, ...o.respond })
    .connect('resample.audio', 'turns.audio', { capacity: '10s', policy: 'block' })
    .connect('turns.user', 'respond.requests', { capacity: 16, policy: 'block' })
    .input('audio', 'resample.audio')
    .input('control', 'turns.control')
    .input('requests', 'respond.requests')
    .output('text', 'respond.text')
    .output('audio', 'respond.audio')
    .output('events', 'turns.events');
}
