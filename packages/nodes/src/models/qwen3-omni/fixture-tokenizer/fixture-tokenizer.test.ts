import { describe, expect, it } from 'vitest';
import { byteLevelAlphabet } from './byte-level-bpe.js';
import { FIXTURE_SPECIAL_TOKENS, FIXTURE_WORD_TOKENS, fixtureTokenizer, fixtureTokenizerFiles } from './fixture-tokenizer.js';

describe('fixture tokenizer', () => {
  const tok = fixtureTokenizer();

  it('uses every id 0–255 once: byte characters, the three words and the README specials', () => {
    const { tokenizerJson } = fixtureTokenizerFiles();
    const vocab = (tokenizerJson.model as { vocab: Record<string, number> }).vocab;
    const ids = [...Object.values(vocab), ...FIXTURE_WORD_TOKENS.map(([id]) => id), ...FIXTURE_SPECIAL_TOKENS.map(([id]) => id)].sort((a, b) => a - b);
    expect(ids).toEqual(Array.from({ length: 256 }, (_, i) => i));
    expect(tok.idToToken(97)).toBe('user');
    expect(tok.idToToken(244)).toBe('<|audio_pad|>');
  });

  it('keeps the GPT-2/Qwen byte id wherever the fixture did not need the slot', () => {
    const { order } = byteLevelAlphabet();
    const moved = new Set([...FIXTURE_WORD_TOKENS, ...FIXTURE_SPECIAL_TOKENS].map(([id]) => id));
    for (const id of [0, 33, 93, 198, 220]) {
      expect(moved.has(id)).toBe(false);
      expect(tok.encode(new TextDecoder().decode(Uint8Array.of(order[id])))).toEqual([id]);
    }
    expect(tok.encode('\n \n')).toEqual([198, 220, 198]);
  });

  it('encodes every byte valid UTF-8 can contain, except six rare control characters', () => {
    const unencodable: number[] = [];
    for (let cp = 0; cp < 0x80; cp++) {
      try {
        tok.encode(String.fromCharCode(cp));
      } catch {
        unencodable.push(cp);
      }
    }
    expect(unencodable).toEqual([0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13]);
    // Every continuation byte (0x80–0xBF) and every lead byte of 2-, 3- and 4-byte characters survives.
    const text = 'ÀÿĀ߿ࠀ中文한국어ｱ𐀀😀🎉\u{10FFFF}';
    expect(tok.decode(tok.encode(text))).toBe(text);
  });
});
