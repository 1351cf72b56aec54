import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Qwen3OmniTokenizer } from '../tokenizer.js';
import { byteLevelAlphabet, byteLevelBpeJson, type AddedTokenSpec } from './byte-level-bpe.js';

/*
 * A tokenizer for the tiny golden-fixture checkpoint (../shared/fixtures/qwen3-omni-tiny), whose 256-token vocabulary
 * has no tokenizer of its own. The ids follow the fixture README's table:
 *  - every id is the GPT-2/Qwen byte-level character of the same id (so id 198 is '\n', the fixture's random text
 *    ids < 90 are printable ASCII), except:
 *  - 97, 98, 99 are the whole words 'user', 'assistant', 'system' (the fixture's user/assistant/system_token_id);
 *  - 240–251 are the special tokens of the README (im_start … tts_eos), 252 is <|endoftext|>, 253–255 are reserved.
 * The 19 bytes those ids displace are all UTF-8 continuation bytes, which CJK and emoji need, so they are moved into
 * the slots of 19 bytes text never needs: 0xC0, 0xC1 and 0xF5–0xFF (never valid in UTF-8) and the control bytes
 * 0x0E–0x13. Any valid UTF-8 text without those six control characters therefore round-trips.
 */

/** The fixture's special tokens, at the ids of its README (real Qwen3-Omni strings; tts strings are unverified). */
export const FIXTURE_SPECIAL_TOKENS: ReadonlyArray<readonly [number, string]> = [
  [240, '<|im_start|>'],
  [241, '<|im_end|>'],
  [242, '<|audio_start|>'],
  [243, '<|audio_end|>'],
  [244, '<|audio_pad|>'],
  [245, '<|vision_start|>'],
  [246, '<|vision_end|>'],
  [247, '<|image_pad|>'],
  [248, '<|video_pad|>'],
  [249, '<tts_pad>'],
  [250, '<tts_text_bos>'],
  [251, '<tts_text_eod>'],
  [252, '<|endoftext|>'],
  [253, '<|fixture_reserved_253|>'],
  [254, '<|fixture_reserved_254|>'],
  [255, '<|fixture_reserved_255|>'],
];

/** Whole-word tokens at the fixture's user/assistant/system_token_id. */
export const FIXTURE_WORD_TOKENS: ReadonlyArray<readonly [number, string]> = [
  [97, 'user'],
  [98, 'assistant'],
  [99, 'system'],
];

// Bytes that never occur in valid UTF-8 text, plus six rarely used control characters.
const SPARE_BYTES = [0xc0, 0xc1, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13];

/**
 * The fixture tokenizer's `tokenizer.json` and `tokenizer_config.json` contents.
 *
 * ```ts
 * const { tokenizerJson, tokenizerConfig } = fixtureTokenizerFiles();
 * const tok = Qwen3OmniTokenizer.fromJson(tokenizerJson, tokenizerConfig);
 * ```
 */
export function fixtureTokenizerFiles(): { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  const { order, charOf } = byteLevelAlphabet();
  const idOfByte = new Map<number, number>(order.map((b, id) => [b, id]));
  const taken = new Set<number>([...FIXTURE_SPECIAL_TOKENS, ...FIXTURE_WORD_TOKENS].map(([id]) => id));
  const displaced = [...taken].sort((a, b) => a - b).map((id) => order[id]);
  const freeSlots = SPARE_BYTES.map((b) => idOfByte.get(b)!).sort((a, b) => a - b);
  if (displaced.length !== freeSlots.length) throw new Error('fixture tokenizer: displaced bytes and spare slots differ in number');
  const byteAt = new Map<number, number>(); // id -> byte
  order.forEach((b, id) => {
    if (!taken.has(id) && !SPARE_BYTES.includes(b)) byteAt.set(id, b);
  });
  freeSlots.forEach((id, i) => byteAt.set(id, displaced[i]));
  const vocab: Record<string, number> = {};
  for (const [id, b] of byteAt) vocab[charOf[b]] = id;
  const addedTokens: AddedTokenSpec[] = [
    ...FIXTURE_WORD_TOKENS.map(([id, content]) => ({ id, content, special: false })),
    ...FIXTURE_SPECIAL_TOKENS.map(([id, content]) => ({ id, content, special: true })),
  ];
  const tokenizerConfig = {
    tokenizer_class: 'Qwen2Tokenizer',
    model_max_length: 65536,
    clean_up_tokenization_spaces: false,
    split_special_tokens: false,
    eos_token: '<|im_end|>',
    pad_token: '<|endoftext|>',
    audio_token: '<|audio_pad|>',
    image_token: '<|image_pad|>',
    video_token: '<|video_pad|>',
    audio_bos_token: '<|audio_start|>',
    audio_eos_token: '<|audio_end|>',
    vision_bos_token: '<|vision_start|>',
    vision_eos_token: '<|vision_end|>',
    additional_special_tokens: FIXTURE_SPECIAL_TOKENS.map(([, s]) => s),
  };
  return { tokenizerJson: byteLevelBpeJson({ vocab, merges: [], addedTokens }), tokenizerConfig };
}

/**
 * Writes the fixture tokenizer as `tokenizer.json` + `tokenizer_config.json` into `dir` (created if needed), so it
 * can sit next to a copy of the fixture checkpoint like a real model folder.
 *
 * ```ts
 * writeFixtureTokenizer('/tmp/qwen3-omni-tiny');
 * ```
 */
export function writeFixtureTokenizer(dir: string): void {
  const { tokenizerJson, tokenizerConfig } = fixtureTokenizerFiles();
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig, null, 2));
}

/**
 * The fixture tokenizer, ready to use (special ids are those of the fixture's config.json).
 *
 * ```ts
 * const tok = fixtureTokenizer();
 * tok.encode('<|im_start|>user\n'); // [240, 97, 198]
 * ```
 */
export function fixtureTokenizer(): Qwen3OmniTokenizer {
  const { tokenizerJson, tokenizerConfig } = fixtureTokenizerFiles();
  return Qwen3OmniTokenizer.fromJson(tokenizerJson, tokenizerConfig, { source: 'fixture tokenizer' });
}
