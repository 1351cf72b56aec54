import type { Readable } from 'node:stream';

/**
 * Pulls a byte stream as fixed-size chunks (the last one may be shorter). Reading is pull-based: while the
 * consumer does not ask for the next chunk nothing is read, the stream's buffer fills to its highWaterMark and a
 * piped producer (ffmpeg's stdout) is paused. Each chunk is a fresh, 4-byte aligned buffer the caller may keep.
 */
export async function* fixedChunks(stream: Readable, bytes: number): AsyncGenerator<Uint8Array> {
  let chunk = new Uint8Array(bytes);
  let filled = 0;
  for await (const data of stream as AsyncIterable<Buffer>) {
    let offset = 0;
    while (offset < data.length) {
      const n = Math.min(bytes - filled, data.length - offset);
      chunk.set(data.subarray(offset, offset + n), filled);
      filled += n;
      offset += n;
      if (filled === bytes) {
        yield chunk;
        chunk = new Uint8Array(bytes);
        filled = 0;
      }
    }
  }
  if (filled > 0) yield chunk.slice(0, filled);
}
