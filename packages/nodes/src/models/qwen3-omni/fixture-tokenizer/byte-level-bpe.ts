import { Tokenizer } from '@huggingface/tokenizers';

/*
 * Builders for byte-level BPE `tokenizer.json` files in the Hugging Face format Qwen uses (Split with the Qwen2
 * regex, then ByteLevel; ByteLevel decoder). They exist so tests and the tiny fixture checkpoint have real tokenizers
 * that @huggingface/tokenizers loads exactly like the released Qwen3-Omni one: the fixture tokenizer is built from the
 * byte alphabet alone, and `trainByteLevelBpe` learns merges from a small corpus, so some tokens end in the middle
 * of a UTF-8 character (what streaming detokenisation must survive).
 */

/** Qwen2/Qwen3's pre-tokenisation regex (tokenizer.json `pre_tokenizer.pretokenizers[0].pattern.Regex`). */
export const QWEN2_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/**
 * GPT-2's reversible byte → printable character map, in GPT-2 vocabulary order: `order[i]` is the byte whose
 * character is token id i of every GPT-2-derived vocab (Qwen's too: id 198 is '\n', id 220 is ' ').
 *
 * ```ts
 * const { order, charOf } = byteLevelAlphabet();
 * order[198]; // 10
 * charOf[32]; // 'Ġ'
 * ```
 */
export function byteLevelAlphabet(): { order: number[]; charOf: string[] } {
  const order: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) order.push(b);
  for (let b = 0xa1; b <= 0xac; b++) order.push(b);
  for (let b = 0xae; b <= 0xff; b++) order.push(b);
  const charOf: string[] = new Array(256);
  for (const b of order) charOf[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (charOf[b] !== undefined) continue;
    order.push(b);
    // Bytes without a printable Latin-1 glyph are shifted above 255, as GPT-2 does.
    charOf[b] = String.fromCodePoint(256 + n++);
  }
  return { order, charOf };
}

/** One entry of tokenizer.json's `added_tokens`. */
export interface AddedTokenSpec {
  readonly id: number;
  readonly content: string;
  /** Special tokens are dropped by `decode(ids, { skip_special_tokens: true })`; plain added words are not. */
  readonly special: boolean;
}

/**
 * Assembles a byte-level BPE tokenizer.json object (the layout of Qwen's released file).
 *
 * ```ts
 * const json = byteLevelBpeJson({ vocab: { a: 0, b: 1, ab: 2 }, merges: [['a', 'b']], addedTokens: [] });
 * const tok = new Tokenizer(json, {});
 * ```
 */
export function byteLevelBpeJson(spec: {
  vocab: Record<string, number>;
  merges: ReadonlyArray<readonly [string, string]>;
  addedTokens: readonly AddedTokenSpec[];
}): Record<string, unknown> {
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: spec.addedTokens.map((t) => ({
      id: t.id, content: t.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t.special,
    })),
    normalizer: { type: 'NFC' },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'Split', pattern: { Regex: QWEN2_SPLIT_REGEX }, behavior: 'Isolated', invert: false }, byteLevel],
    },
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: spec.vocab,
      merges: spec.merges.map(([a, b]) => [a, b]),
    },
  };
}

/**
 * Learns `numMerges` byte-level BPE merges from `corpus` (pre-tokenised with the Qwen2 regex, as the tokenizer
 * itself will be) and returns a tokenizer.json object: ids 0–255 are the bytes in GPT-2 order, merges follow, then
 * `specials` (given as strings; their ids are returned in `specialIds`). Deterministic: ties break on the pair text.
 *
 * ```ts
 * const { json, specialIds } = trainByteLevelBpe(['你好世界 hello 😀'], { numMerges: 20, specials: ['<|im_end|>'] });
 * const tok = new Tokenizer(json, {});
 * ```
 */
export function trainByteLevelBpe(
  corpus: readonly string[],
  options: { numMerges: number; specials?: readonly string[] },
): { json: Record<string, unknown>; specialIds: Record<string, number> } {
  const { order, charOf } = byteLevelAlphabet();
  const vocab: Record<string, number> = {};
  order.forEach((b, id) => (vocab[charOf[b]] = id));
  // Borrow the real pre-tokenizer (regex split + byte-level mapping) from a merge-less tokenizer.
  const splitter = new Tokenizer(byteLevelBpeJson({ vocab, merges: [], addedTokens: [] }), {});
  const words = new Map<string, number>();
  for (const text of corpus) {
    for (const w of splitter.pre_tokenizer!.pre_tokenize(text.normalize('NFC'))) words.set(w, (words.get(w) ?? 0) + 1);
  }
  const seqs = [...words].map(([w, count]) => ({ parts: [...w], count }));
  const merges: Array<[string, string]> = [];
  for (let m = 0; m < options.numMerges; m++) {
    const pairs = new Map<string, number>();
    for (const { parts, count } of seqs) {
      for (let i = 0; i + 1 < parts.length; i++) {
        const key = `${parts[i]}\u0000${parts[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best: string | undefined;
    let bestCount = 0;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && best !== undefined && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === undefined) break;
    const [a, b] = best.split('\u0000') as [string, string];
    merges.push([a, b]);
    // Two merge paths can spell the same piece ('ab'+'c', 'a'+'bc'); it keeps its first id.
    if (vocab[a + b] === undefined) vocab[a + b] = Object.keys(vocab).length;
    for (const s of seqs) {
      const out: string[] = [];
      for (let i = 0; i < s.parts.length; i++) {
        if (i + 1 < s.parts.length && s.parts[i] === a && s.parts[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(s.parts[i]);
      }
      s.parts = out;
    }
  }
  const specialIds: Record<string, number> = {};
  const addedTokens: AddedTokenSpec[] = [];
  let next = Object.keys(vocab).length;
  for (const content of options.specials ?? []) {
    specialIds[content] = next;
    addedTokens.push({ id: next++, content, special: true });
  }
  return { json: byteLevelBpeJson({ vocab, merges, addedTokens }), specialIds };
}
