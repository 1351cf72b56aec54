/**
 * Re-stamping: sources whose timestamps are missing, jittery or go backwards get a clean media clock.
 * The expected pts of a packet is the previous packet's pts plus its duration; `restamp` snaps small
 * deviations to it, fills missing ones with it, and never lets pts run backwards.
 */
import { Observable, type MonoTypeOperatorFunction } from 'rxjs';
import { packetDuration, type Micros, type Packet } from './packets.js';

export interface RestampOptions {
  /** pts of the first packet when it has none (default 0). */
  origin?: Micros;
  /** Deviations from the expected pts up to this are treated as jitter and snapped (default 2 ms). */
  tolerance?: Micros;
  /**
   * Ignore incoming pts entirely and derive them from durations (sample counts): for sources whose
   * clock cannot be trusted at all.
   */
  fromDurations?: boolean;
}

/**
 * An operator that rewrites `pts` into a monotonic media clock.
 *
 * ```ts
 * micPackets$.pipe(restamp({ tolerance: 5_000 })); // 20 ms chunks arriving at 0, 21_300, 39_100 → 0, 20_000, 40_000
 * ```
 */
export function restamp<P extends Packet>(options: RestampOptions = {}): MonoTypeOperatorFunction<P> {
  const tolerance = options.tolerance ?? 2_000;
  return (source) =>
    new Observable<P>((subscriber) => {
      let expected: number | undefined;
      return source.subscribe({
        next: (p) => {
          const given = p.pts;
          let pts: number;
          if (expected === undefined) pts = Number.isFinite(given) && !options.fromDurations ? given : (options.origin ?? 0);
          else if (options.fromDurations || !Number.isFinite(given)) pts = expected; // missing: continue the clock
          else if (Math.abs(given - expected) <= tolerance) pts = expected; // jitter: snap
          else if (given < expected) pts = expected; // backwards or overlapping: never rewind
          else pts = given; // a real gap (dropped audio): keep it
          expected = pts + packetDuration(p);
          subscriber.next(pts === given ? p : ({ ...p, pts } as P));
        },
        error: (e) => subscriber.error(e),
        complete: () => subscriber.complete(),
      });
    });
}
