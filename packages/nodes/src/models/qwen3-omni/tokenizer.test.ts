import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixturePath } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { fixtureTokenizer, fixtureTokenizerFiles, writeFixtureTokenizer } from './fixture-tokenizer/fixture-tokenizer.js';
import { trainByteLevelBpe } from './fixture-tokenizer/byte-level-bpe.js';
import { Qwen3OmniTokenizer } from './tokenizer.js';

const cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
const ids = (name: string) => [...cases.read(name).data];
const tmp = mkdtempSync(join(tmpdir(), 'omniflow-tokenizer-'));
afterAll(() => {
  cases.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('Qwen3OmniTokenizer on the fixture vocabulary', () => {
  const tok = fixtureTokenizer();
  const { thinker_config: thinker } = readQwen3OmniConfig(fixturePath('config.json')).config;

  it('resolves the special ids of the fixture config', () => {
    expect(tok.specialTokens).toEqual({
      imStart: 240, imEnd: 241, audioStart: thinker.audio_start_token_id, audioEnd: thinker.audio_end_token_id,
      audioPad: thinker.audio_token_id, visionStart: thinker.vision_start_token_id, visionEnd: thinker.vision_end_token_id,
      imagePad: thinker.image_token_id, videoPad: thinker.video_token_id,
    });
    expect(tok.stopTokenIds).toEqual([241, 252]);
    expect(tok.vocabSize).toBe(256);
  });

  it('reproduces the reference multimodal prompt of case 4 (audio, image, video) token for token', () => {
    // The fixture's random text ids < 90 are byte-level characters: 80 53 12 = "qV-", 41 = "J", 81 78 = "ro".
    const prompt = tok.encodeChat([
      { role: 'system', content: 'qV-' },
      {
        role: 'user',
        content: [
          { type: 'audio', frames: ids('rope.audio_seqlens')[0] },
          { type: 'image', gridThw: ids('rope.image_grid_thw') as [number, number, number] },
          { type: 'text', text: 'J' },
          { type: 'video', gridThw: ids('rope.video_grid_thw') as [number, number, number], secondPerGrid: 1 },
          { type: 'text', text: 'ro' },
        ],
      },
    ], { spatialMergeSize: 2, nWindow: 50, positionIdPerSeconds: 13 });
    expect(prompt.ids).toEqual(ids('rope.input_ids'));
    expect(prompt.audioTokens).toEqual([20]);
    expect(prompt.imageGridThw).toEqual([[1, 4, 6]]);
    expect(prompt.useAudioInVideo).toBe(false);
  });

  it('interleaves a video soundtrack with its frames exactly as the reference processor (case 4, audio-in-video)', () => {
    const prompt = tok.encodeChat([
      {
        role: 'user',
        content: [
          { type: 'video', gridThw: ids('rope_aiv.video_grid_thw') as [number, number, number], secondPerGrid: 1, audioFrames: 150 },
          { type: 'text', text: 'ej' },
        ],
      },
    ]);
    expect(prompt.ids).toEqual(ids('rope_aiv.input_ids'));
    expect(prompt.audioFrames).toEqual(ids('rope_aiv.audio_seqlens'));
    expect(prompt.useAudioInVideo).toBe(true);
  });

  it('round-trips CJK and emoji although every byte is its own token', () => {
    const text = '中文 naïve 😀🎉 ✓';
    const encoded = tok.encode(text);
    expect(encoded.length).toBe(new TextEncoder().encode(text).length);
    expect(tok.decode(encoded)).toBe(text);
  });

  it('names the piece it cannot encode', () => {
    expect(() => tok.encode('a\u000eb')).toThrow(/character "\\u000e" \(U\+000E\) at offset 1 has no token in the vocabulary/);
  });

  it('drops special tokens when decoding, unless asked to keep them', () => {
    expect(tok.decode([240, 98, 198, 71, 72, 241])).toBe('assistant\nhi');
    expect(tok.decode([240, 98, 198, 71, 72, 241], { skipSpecialTokens: false })).toBe('<|im_start|>assistant\nhi<|im_end|>');
  });
});

describe('Qwen3OmniTokenizer.fromDir', () => {
  it('reads tokenizer.json and tokenizer_config.json from a folder and uses the built-in template', () => {
    const dir = join(tmp, 'plain');
    writeFixtureTokenizer(dir);
    const tok = Qwen3OmniTokenizer.fromDir(dir);
    expect(tok.chatTemplateSource).toBe('built-in');
    expect(tok.applyChatTemplate([{ role: 'user', content: 'Hi' }])).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  });

  it('prefers chat_template.jinja, then chat_template.json, then tokenizer_config.json', () => {
    const dir = join(tmp, 'templates');
    writeFixtureTokenizer(dir);
    const { tokenizerConfig } = fixtureTokenizerFiles();
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tokenizerConfig, chat_template: 'C{{ messages[0].content }}' }));
    expect(Qwen3OmniTokenizer.fromDir(dir).applyChatTemplate([{ role: 'user', content: 'x' }])).toBe('Cx');
    writeFileSync(join(dir, 'chat_template.json'), JSON.stringify({ chat_template: 'J{{ messages[0].content }}' }));
    expect(Qwen3OmniTokenizer.fromDir(dir).chatTemplateSource).toBe('chat_template.json');
    // An HF-style template that tests `'audio' in part`.
    writeFileSync(join(dir, 'chat_template.jinja'), "{% for p in messages[0].content %}{% if 'audio' in p %}<|audio_pad|>{% else %}{{ p.text }}{% endif %}{% endfor %}");
    const tok = Qwen3OmniTokenizer.fromDir(dir);
    expect(tok.chatTemplateSource).toBe('chat_template.jinja');
    const p = tok.encodeChat([{ role: 'user', content: [{ type: 'audio', frames: 100 }, { type: 'text', text: '?' }] }]);
    expect(p.ids).toEqual([...new Array(13).fill(244), tok.encode('?')[0]]);
  });

  it('fails clearly on a folder without tokenizer.json, and on config ids the vocabulary disagrees with', () => {
    expect(() => Qwen3OmniTokenizer.fromDir(join(tmp, 'nothing-here'))).toThrow(/nothing-here: no tokenizer\.json/);
    const { tokenizerJson, tokenizerConfig } = fixtureTokenizerFiles();
    expect(() => Qwen3OmniTokenizer.fromJson(tokenizerJson, tokenizerConfig, { specialTokenIds: { audioPad: 999 } }))
      .toThrow(/audioPad id 999 from config\.json is not in the vocabulary/);
    expect(() => Qwen3OmniTokenizer.fromJson(tokenizerJson, tokenizerConfig, { specialTokenIds: { audioPad: 247 } }))
      .toThrow(/audioPad id 247 \('<\|image_pad\|>'\) but tokenizer_config\.json's audio_token '<\|audio_pad\|>' is id 244/);
  });
});

describe('a trained byte-level BPE tokenizer', () => {
  const corpus = ['你好，世界！你好吗？世界很大。', 'hello world, hello tokenizer', '😀 emoji 😀 and 🎉 party', '中文和英文 mixed text 中文'];
  const { json, specialIds } = trainByteLevelBpe(corpus, { numMerges: 60, specials: ['<|im_start|>', '<|im_end|>', '<|audio_start|>', '<|audio_end|>', '<|audio_pad|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>'] });
  const tok = Qwen3OmniTokenizer.fromJson(json, {});

  it('learns merges and round-trips multilingual text', () => {
    const text = '你好世界, hello 😀 中文!';
    const encoded = tok.encode(text);
    expect(encoded.length).toBeLessThan(new TextEncoder().encode(text).length / 2);
    expect(tok.decode(encoded)).toBe(text);
    expect(tok.specialTokens.imEnd).toBe(specialIds['<|im_end|>']);
  });
});
