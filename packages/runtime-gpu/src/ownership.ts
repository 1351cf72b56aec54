import * as tf from '@tensorflow/tfjs-core';
import { disposePacket, tensorPacket, type Packet, type TensorPacket } from '@omniflow/core';
import { map, type OperatorFunction } from 'rxjs';

/** Tensor count and bytes alive on the active backend. */
export interface MemorySnapshot {
  readonly numTensors: number;
  readonly numBytes: number;
}

/** A started leak check: `check()` compares memory now with memory at the start. */
export interface LeakCheck {
  readonly before: MemorySnapshot;
  /** Tensors and bytes created since the start and still alive. */
  delta(): MemorySnapshot;
  /** Throws, naming `label` and the counts, if any tensor or byte created since the start is alive. */
  check(label?: string): void;
}

/** Current tensor count and bytes (`tf.memory()`). */
export function memorySnapshot(): MemorySnapshot {
  const m = tf.memory();
  return { numTensors: m.numTensors, numBytes: m.numBytes };
}

/**
 * Starts a leak check. Usable in any test or at run time around a stage.
 *
 * ```ts
 * const leaks = leakCheck();
 * tf.tidy(() => tf.add(a, b));
 * leaks.check('add'); // throws if a tensor outlived the work
 * ```
 */
export function leakCheck(): LeakCheck {
  const before = memorySnapshot();
  const delta = (): MemorySnapshot => {
    const now = memorySnapshot();
    return { numTensors: now.numTensors - before.numTensors, numBytes: now.numBytes - before.numBytes };
  };
  return {
    before,
    delta,
    check(label = 'run') {
      const d = delta();
      if (d.numTensors !== 0 || d.numBytes !== 0) {
        throw new Error(`tensor leak in ${label}: ${d.numTensors} tensors and ${d.numBytes} bytes more than before (${before.numTensors} tensors, ${before.numBytes} bytes)`);
      }
    },
  };
}

/**
 * Runs `fn` (sync or async) and throws if it left tensors behind; returns what `fn` returned.
 * Results that are tensors count as leaks, so return plain values (e.g. `await t.data()`).
 *
 * ```ts
 * const sum = await expectNoLeaks(() => tf.tidy(() => tf.sum(x).dataSync()[0]));
 * ```
 */
export async function expectNoLeaks<T>(fn: () => T | Promise<T>, label?: string): Promise<T> {
  const leaks = leakCheck();
  const result = await fn();
  leaks.check(label);
  return result;
}

/**
 * Hands a packet's ownership over to a new tensor: returns a packet with the same header and name
 * (unless `name` is given) carrying `tensor`, and disposes the old tensor if it is not reused.
 * Extras travel along unchanged.
 *
 * ```ts
 * const out = forwardTensor(p, tf.tidy(() => tf.relu(p.tensor as tf.Tensor)));
 * ```
 */
export function forwardTensor<T extends tf.Tensor>(p: TensorPacket, tensor: T, name?: string): TensorPacket<T> {
  if (p.tensor !== tensor && !p.tensor.isDisposed) p.tensor.dispose();
  return tensorPacket<T>({
    session: p.session,
    turn: p.turn,
    pts: p.pts,
    ...(p.uninterruptible ? { uninterruptible: true } : {}),
    name: name ?? p.name,
    tensor,
    ...(p.extras ? { extras: p.extras as Record<string, T> } : {}),
  });
}

/**
 * Splits a packet's tensor along `axis` into pieces of `sizes` (or `n` equal pieces), one packet
 * each, owning its piece; the input tensor is disposed. Extras stay with the first piece.
 *
 * ```ts
 * const [a, b] = splitTensorPacket(p, [160, 160], 0); // 20 ms of 16 kHz in two 10 ms packets
 * ```
 */
export function splitTensorPacket(p: TensorPacket, sizes: number[] | number, axis = 0): TensorPacket<tf.Tensor>[] {
  const x = p.tensor as unknown as tf.Tensor;
  const dim = x.shape[axis];
  if (dim === undefined) throw new Error(`splitTensorPacket(${p.name}): axis ${axis} is out of range for shape [${x.shape}]`);
  if (Array.isArray(sizes) ? sizes.reduce((a, b) => a + b, 0) !== dim : dim % sizes !== 0) {
    throw new Error(`splitTensorPacket(${p.name}): sizes ${JSON.stringify(sizes)} do not split axis ${axis} of length ${dim}`);
  }
  const pieces = tf.split(x, sizes, axis);
  x.dispose();
  return pieces.map((t, i) =>
    tensorPacket<tf.Tensor>({
      session: p.session,
      turn: p.turn,
      pts: p.pts,
      ...(p.uninterruptible ? { uninterruptible: true } : {}),
      name: p.name,
      tensor: t,
      ...(i === 0 && p.extras ? { extras: p.extras as Record<string, tf.Tensor> } : {}),
    }),
  );
}

/** Disposes every packet's tensors (packets without tensors are ignored). */
export function disposePackets(packets: Iterable<Packet>): void {
  for (const p of packets) disposePacket(p);
}

/**
 * An RxJS operator that maps each tensor packet's tensor through `fn` in one tf.tidy, disposes the
 * input tensor and forwards every other packet untouched.
 *
 * ```ts
 * features$.pipe(mapTensor((x) => tf.mul(x, 2)));
 * ```
 */
export function mapTensor(fn: (x: tf.Tensor) => tf.Tensor, name?: string): OperatorFunction<Packet, Packet> {
  return map((p: Packet) => {
    if (p.kind !== 'tensor') return p;
    const y = tf.tidy(() => fn(p.tensor as unknown as tf.Tensor));
    return forwardTensor(p, y, name);
  });
}
