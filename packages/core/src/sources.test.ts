import { describe, expect, it } from 'vitest';
import { lastValueFrom, toArray } from 'rxjs';
import { fromAsyncIterable } from './sources.js';
import { Gate } from './demand.js';

describe('fromAsyncIterable', () => {
  it('pulls an async generator and closes it on unsubscribe', async () => {
    let closed = false;
    async function* gen() {
      try {
        for (let i = 0; ; i++) yield i;
      } finally {
        closed = true;
      }
    }
    const seen: number[] = [];
    await new Promise<void>((resolve) => {
      const sub = fromAsyncIterable(gen()).subscribe((i) => {
        seen.push(i);
        if (i === 4) {
          sub.unsubscribe();
          resolve();
        }
      });
    });
    await new Promise((r) => setTimeout(r, 5));
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    expect(closed).toBe(true);
  });

  it('only pulls while its demand is ready', async () => {
    const gate = new Gate();
    let pulled = 0;
    function* items() {
      for (let i = 0; i < 10; i++) {
        pulled++;
        yield i;
      }
    }
    const seen: number[] = [];
    fromAsyncIterable(items(), { demand: gate }).subscribe((i) => {
      seen.push(i);
      if (i === 2) gate.close();
    });
    expect(seen).toEqual([0, 1, 2]);
    expect(pulled).toBe(3);
    gate.open();
    expect(seen).toHaveLength(10);
  });

  it('works on plain iterables with no graph', async () => {
    expect(await lastValueFrom(fromAsyncIterable([1, 2, 3]).pipe(toArray()))).toEqual([1, 2, 3]);
  });
});
