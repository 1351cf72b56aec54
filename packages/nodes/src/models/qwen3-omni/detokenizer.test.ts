import { describe, expect, it } from 'vitest';
import { trainByteLevelBpe } from './fixture-tokenizer/byte-level-bpe.js';
import { fixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { Qwen3OmniTokenizer } from './tokenizer.js';

const REPLACEMENT = '\uFFFD';

function stream(tok: Qwen3OmniTokenizer, ids: readonly number[]): string[] {
  const detok = tok.detokenizer();
  const deltas = ids.map((id) => detok.push(id));
  deltas.push(detok.flush());
  return deltas;
}

describe('StreamingDetokenizer', () => {
  it('never emits half a character when every byte of CJK and emoji is its own token', () => {
    const tok = fixtureTokenizer();
    const text = 'Hi 中文 😀🎉 naïve';
    const ids = tok.encode(text);
    // Precondition: single tokens of a multi-byte character decode to the replacement character.
    expect(tok.decode([ids[3]])).toBe(REPLACEMENT);
    const deltas = stream(tok, ids);
    for (const d of deltas) expect(d).not.toContain(REPLACEMENT);
    expect(deltas.join('')).toBe(text);
    // '中' is 3 byte tokens: it comes out whole with the third one, nothing before.
    expect(deltas.slice(3, 6)).toEqual(['', '', '中']);
    // '😀' is 4 byte tokens.
    const smile = ids.length - tok.encode('😀🎉 naïve').length;
    expect(deltas.slice(smile, smile + 4)).toEqual(['', '', '', '😀']);
  });

  it('handles merged BPE tokens that end inside a character', () => {
    const corpus = ['你好世界 你们好 世界和平 好的 你好吗', '😀😃😄 smile 😀😃', 'hello 你好 world 世界'];
    const { json } = trainByteLevelBpe(corpus, { numMerges: 80, specials: ['<|im_start|>', '<|im_end|>', '<|audio_start|>', '<|audio_end|>', '<|audio_pad|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>'] });
    const tok = Qwen3OmniTokenizer.fromJson(json, {});
    const text = '你好 世界!😀😃 hello 和平';
    const ids = tok.encode(text);
    const partial = ids.filter((id) => tok.decode([id]).includes(REPLACEMENT));
    expect(partial.length).toBeGreaterThan(0); // the trained vocabulary really splits characters
    expect(ids.length).toBeLessThan(new TextEncoder().encode(text).length); // and really merges
    const deltas = stream(tok, ids);
    for (const d of deltas) expect(d).not.toContain(REPLACEMENT);
    expect(deltas.join('')).toBe(text);
  });

  it('drops special tokens and keeps streaming after them', () => {
    const tok = fixtureTokenizer();
    const ids = [...tok.encode('中'), tok.specialTokens.imEnd];
    expect(stream(tok, ids).join('')).toBe('中');
  });

  it('does not stall on invalid bytes: they come out as U+FFFD once they cannot be completed', () => {
    const tok = fixtureTokenizer();
    const lead = tok.encode('中').slice(0, 1); // a lone lead byte E4
    const ids = [...lead, ...tok.encode('abc')];
    const detok = tok.detokenizer();
    const out = ids.map((id) => detok.push(id)).join('') + detok.flush();
    expect(out).toBe(`${REPLACEMENT}abc`);
  });

  it('flushes an incomplete character at the end of a message as U+FFFD', () => {
    const tok = fixtureTokenizer();
    const detok = tok.detokenizer();
    for (const id of tok.encode('ok 中').slice(0, -1)) detok.push(id);
    expect(detok.text).toBe('ok ');
    expect(detok.flush()).toBe(REPLACEMENT);
    expect(detok.text).toBe(`ok ${REPLACEMENT}`);
  });
});
