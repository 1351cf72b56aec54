/*
 * Streaming detokenisation. Byte-level BPE tokens are byte strings, not characters: '中' (E4 B8 AD) may arrive as one
 * token ending in E4 and another starting with B8 AD, and decoding the first alone gives U+FFFD. Decoding token by
 * token would print that replacement character; decoding everything every step is quadratic. This keeps a short
 * window (the approach of text-generation-inference's `decode_token`): decode the tokens from the last emitted
 * boundary, and emit the new suffix only once it no longer ends in an incomplete character.
 */

/** Bytes of one UTF-8 character at most, so at most this many tokens can be waiting for one character to complete. */
const MAX_HELD_TOKENS = 4;
const REPLACEMENT = '\uFFFD';

/**
 * Turns a stream of token ids into text deltas that never split a UTF-8 character.
 *
 * ```ts
 * const detok = new StreamingDetokenizer((ids) => tokenizer.decode(ids));
 * for (const id of ids) process.stdout.write(detok.push(id));
 * process.stdout.write(detok.flush());
 * ```
 */
export class StreamingDetokenizer {
  private ids: number[] = [];
  // ids[prefix, read) were decoded and emitted; they stay as left context for tokenizers whose decoding of a token
  // depends on its neighbour (SentencePiece's leading-space rule).
  private prefix = 0;
  private read = 0;
  private emitted = '';

  constructor(private readonly decode: (ids: number[]) => string) {}

  /** Adds one token; returns the text it completes ('' while a character is still incomplete). */
  push(id: number): string {
    if (!Number.isInteger(id) || id < 0) throw new Error(`StreamingDetokenizer: token id ${id} is not a non-negative integer`);
    this.ids.push(id);
    const before = this.read > this.prefix ? this.decode(this.ids.slice(this.prefix, this.read)) : '';
    const after = this.decode(this.ids.slice(this.prefix));
    const held = this.ids.length - this.read;
    if (after.length > before.length && !after.endsWith(REPLACEMENT)) return this.advance(after.slice(before.length));
    if (held >= MAX_HELD_TOKENS && after.length > before.length) {
      // Still incomplete after four tokens: the bytes are invalid, not pending. Emit them (as U+FFFD) and restart.
      const delta = after.slice(before.length);
      this.prefix = this.ids.length;
      this.read = this.ids.length;
      this.emitted += delta;
      return delta;
    }
    return '';
  }

  /** Emits whatever is held (an incomplete character becomes U+FFFD); call at the end of a message. */
  flush(): string {
    if (this.read === this.ids.length) return '';
    const before = this.read > this.prefix ? this.decode(this.ids.slice(this.prefix, this.read)) : '';
    const after = this.decode(this.ids.slice(this.prefix));
    const delta = after.slice(before.length);
    this.prefix = this.read = this.ids.length;
    this.emitted += delta;
    return delta;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /** Token ids pushed so far. */
  get tokens(): readonly number[] {
    return this.ids;
  }

  private advance(delta: string): string {
    this.prefix = this.read;
    this.read = this.ids.length;
    this.emitted += delta;
    return delta;
  }
}
