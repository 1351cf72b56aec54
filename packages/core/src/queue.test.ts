import { describe, expect, it } from 'vitest';
import { BoundedQueue, EdgeOverflowError, formatCapacity, parseCapacity, Ring } from './queue.js';
import { audioPacket, tensorPacket, textPacket } from './packets.js';
import { TensorTracker } from './testing/tracked-tensor.js';

describe('capacity', () => {
  it('parses packets, bytes and media time', () => {
    expect(parseCapacity(8)).toEqual({ amount: 8, unit: 'packets' });
    expect(parseCapacity('8 packets')).toEqual({ amount: 8, unit: 'packets' });
    expect(parseCapacity('400ms')).toEqual({ amount: 400_000, unit: 'micros' });
    expect(parseCapacity('1.5s')).toEqual({ amount: 1_500_000, unit: 'micros' });
    expect(parseCapacity('64kB')).toEqual({ amount: 65_536, unit: 'bytes' });
    expect(parseCapacity('2MB')).toEqual({ amount: 2 * 1024 ** 2, unit: 'bytes' });
    expect(formatCapacity(parseCapacity('400ms'))).toBe('400ms');
    expect(formatCapacity(parseCapacity('64kB'))).toBe('64kB');
    expect(() => parseCapacity('0')).toThrow('capacity: must be at least 1 packets, got "0"');
    expect(() => parseCapacity('lots')).toThrow(`capacity: expected a number of packets or a size like '400ms', '2s', '64kB', got "lots"`);
  });
});

describe('BoundedQueue', () => {
  const audio = (ms: number) => audioPacket({ samples: new Float32Array(16 * ms), sampleRate: 16_000, channels: 1 });

  it('measures media milliseconds', () => {
    const q = new BoundedQueue('a->b', parseCapacity('100ms'), 'drop-oldest');
    for (let i = 0; i < 5; i++) q.offer(audio(20));
    expect(q.full).toBe(true);
    q.offer(audio(40));
    expect(q.drops.overflow).toBe(1);
    expect(q.size).toBe(120_000);
  });

  it('measures bytes', () => {
    const q = new BoundedQueue('a->b', parseCapacity('2kB'), 'drop-newest');
    expect(q.offer(audio(20))).toBe(true); // 1280 bytes
    expect(q.offer(audio(20))).toBe(true); // 2560 ≥ 2048: now full
    expect(q.offer(audio(20))).toBe(false);
    expect(q.drops.overflow).toBe(1);
  });

  it('disposes what it drops and what it fences', () => {
    const tracker = new TensorTracker();
    const q = new BoundedQueue('a->b', parseCapacity(1), 'latest');
    q.offer(tensorPacket({ name: 'x', tensor: tracker.tensor() }));
    q.offer(tensorPacket({ name: 'x', tensor: tracker.tensor(), turn: 1 }));
    expect(tracker.live).toBe(1);
    expect(q.fence((p) => p.turn < 2)).toBe(1);
    expect(tracker.live).toBe(0);
    expect(q.drops).toEqual({ overflow: 1, fenced: 1, late: 0, stopped: 0 });
  });

  it('throws under the error policy, naming the edge', () => {
    const q = new BoundedQueue('mic.audio->vad.audio', parseCapacity(1), 'error');
    q.offer(textPacket({ text: 'a' }));
    expect(() => q.offer(textPacket({ text: 'b' }))).toThrow(EdgeOverflowError);
    expect(() => q.offer(textPacket({ text: 'b' }))).toThrow("edge mic.audio->vad.audio: queue full (capacity 1, policy 'error')");
  });
});

describe('Ring', () => {
  it('is a FIFO that grows', () => {
    const r = new Ring<number>();
    for (let i = 0; i < 100; i++) r.push(i);
    for (let i = 0; i < 50; i++) expect(r.shift()).toBe(i);
    for (let i = 100; i < 130; i++) r.push(i);
    expect(r.toArray()).toEqual(Array.from({ length: 80 }, (_, i) => i + 50));
    expect(r.remove((x) => x % 2 === 0)).toHaveLength(40);
    expect(r.peek()).toBe(51);
  });
});
