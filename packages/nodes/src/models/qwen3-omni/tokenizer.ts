import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import {
  QWEN3_OMNI_CHAT_TEMPLATE,
  expandMultimodalPlaceholders,
  renderChatTemplate,
  type ChatMessage,
  type ChatTemplateTokens,
  type ContentPart,
  type MultimodalPrompt,
  type MultimodalTokenIds,
  type PlaceholderOptions,
} from './chat-template.js';
import { StreamingDetokenizer } from './detokenizer.js';

/*
 * The Qwen3-Omni tokenizer: @huggingface/tokenizers over a local tokenizer.json (no hub, no network), the chat
 * template from the model folder (or the built-in one), multimodal placeholder expansion and streaming decoding.
 */

/** Ids of the tokens the prompt format and generation rely on. */
export interface Qwen3OmniSpecialTokenIds extends MultimodalTokenIds {
  readonly imStart: number;
  readonly imEnd: number;
}

/** The released token strings, used to find ids when no config gives them. */
const DEFAULT_STRINGS: Record<keyof Qwen3OmniSpecialTokenIds, string> = {
  imStart: '<|im_start|>',
  imEnd: '<|im_end|>',
  audioStart: '<|audio_start|>',
  audioEnd: '<|audio_end|>',
  audioPad: '<|audio_pad|>',
  visionStart: '<|vision_start|>',
  visionEnd: '<|vision_end|>',
  imagePad: '<|image_pad|>',
  videoPad: '<|video_pad|>',
};

/** tokenizer_config.json attributes naming the same tokens (Qwen3OmniMoeProcessor reads these). */
const CONFIG_ATTRIBUTES: Partial<Record<keyof Qwen3OmniSpecialTokenIds, string>> = {
  audioPad: 'audio_token',
  imagePad: 'image_token',
  videoPad: 'video_token',
  audioStart: 'audio_bos_token',
  audioEnd: 'audio_eos_token',
  visionStart: 'vision_bos_token',
  visionEnd: 'vision_eos_token',
};

export interface TokenizerOptions {
  /** Ids from the model's config.json; each must exist in the vocabulary and agree with tokenizer_config.json. */
  readonly specialTokenIds?: Partial<Qwen3OmniSpecialTokenIds>;
  /** A jinja chat template overriding the folder's. */
  readonly chatTemplate?: string;
  /** Name used in error messages (the folder). */
  readonly source?: string;
}

/** Where the chat template came from. */
export type ChatTemplateSource = 'option' | 'chat_template.jinja' | 'chat_template.json' | 'tokenizer_config.json' | 'built-in';

/**
 * A Qwen3-Omni tokenizer read from a model folder's `tokenizer.json` + `tokenizer_config.json`
 * (+ `chat_template.jinja` / `chat_template.json` when present).
 *
 * ```ts
 * const tok = Qwen3OmniTokenizer.fromDir('models/Qwen3-Omni-30B-A3B-Instruct');
 * const prompt = tok.encodeChat([{ role: 'user', content: [{ type: 'audio', frames: 300 }, { type: 'text', text: 'What is this?' }] }]);
 * tok.decode(prompt.ids);
 * ```
 */
export class Qwen3OmniTokenizer {
  readonly specialTokens: Qwen3OmniSpecialTokenIds;
  /** Ids that end an assistant turn: <|im_end|>, and <|endoftext|> when the vocabulary has it. */
  readonly stopTokenIds: readonly number[];
  private readonly specialIds: Set<number>;

  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly chatTemplate: string,
    readonly chatTemplateSource: ChatTemplateSource,
    readonly source: string,
    tokenizerConfig: Record<string, unknown>,
    overrides: Partial<Qwen3OmniSpecialTokenIds>,
    private readonly byteLevel: boolean,
  ) {
    const ids = {} as Record<keyof Qwen3OmniSpecialTokenIds, number>;
    for (const key of Object.keys(DEFAULT_STRINGS) as Array<keyof Qwen3OmniSpecialTokenIds>) {
      ids[key] = this.resolveSpecial(key, tokenizerConfig, overrides[key]);
    }
    this.specialTokens = ids;
    const eot = tokenizer.token_to_id('<|endoftext|>');
    this.stopTokenIds = eot === undefined ? [ids.imEnd] : [ids.imEnd, eot];
    this.specialIds = new Set([...tokenizer.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
  }

  /** Reads a model folder. Errors name the folder and the missing or malformed file. */
  static fromDir(dir: string, options: TokenizerOptions = {}): Qwen3OmniTokenizer {
    const jsonPath = join(dir, 'tokenizer.json');
    if (!existsSync(jsonPath)) {
      throw new Error(`tokenizer ${dir}: no tokenizer.json (a Qwen3-Omni folder ships tokenizer.json and tokenizer_config.json)`);
    }
    const tokenizerJson = readJson(jsonPath);
    const configPath = join(dir, 'tokenizer_config.json');
    const tokenizerConfig = existsSync(configPath) ? readJson(configPath) : {};
    let chatTemplate = options.chatTemplate;
    let templateSource: ChatTemplateSource = 'option';
    if (chatTemplate === undefined && existsSync(join(dir, 'chat_template.jinja'))) {
      chatTemplate = readFileSync(join(dir, 'chat_template.jinja'), 'utf8');
      templateSource = 'chat_template.jinja';
    }
    if (chatTemplate === undefined && existsSync(join(dir, 'chat_template.json'))) {
      const t = readJson(join(dir, 'chat_template.json')).chat_template;
      if (typeof t !== 'string') throw new Error(`tokenizer ${dir}: chat_template.json has no string 'chat_template'`);
      chatTemplate = t;
      templateSource = 'chat_template.json';
    }
    return Qwen3OmniTokenizer.build(tokenizerJson, tokenizerConfig, { ...options, source: options.source ?? dir, chatTemplate }, templateSource);
  }

  /**
   * Builds from already parsed tokenizer.json / tokenizer_config.json objects.
   *
   * ```ts
   * const { tokenizerJson, tokenizerConfig } = fixtureTokenizerFiles();
   * const tok = Qwen3OmniTokenizer.fromJson(tokenizerJson, tokenizerConfig);
   * ```
   */
  static fromJson(tokenizerJson: object, tokenizerConfig: object = {}, options: TokenizerOptions = {}): Qwen3OmniTokenizer {
    return Qwen3OmniTokenizer.build(tokenizerJson, tokenizerConfig, options, 'option');
  }

  private static build(
    tokenizerJson: object,
    tokenizerConfig: object,
    options: TokenizerOptions,
    templateSource: ChatTemplateSource,
  ): Qwen3OmniTokenizer {
    const source = options.source ?? 'tokenizer.json';
    const json = tokenizerJson as Record<string, unknown>;
    const model = json.model as Record<string, unknown> | undefined;
    if (!model || typeof model !== 'object' || typeof model.type !== 'string') {
      throw new Error(`tokenizer ${source}: tokenizer.json has no model.type (not a Hugging Face tokenizers file?)`);
    }
    // Qwen's tokenizer_config sets this false; the library's default (true) would rewrite " ." to "." in decoded text.
    const config: Record<string, unknown> = { clean_up_tokenization_spaces: false, ...(tokenizerConfig as Record<string, unknown>) };
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(json, config);
    } catch (err) {
      throw new Error(`tokenizer ${source}: @huggingface/tokenizers rejected tokenizer.json (${(err as Error).message})`, { cause: err });
    }
    let chatTemplate = options.chatTemplate;
    if (chatTemplate === undefined && typeof config.chat_template === 'string') {
      chatTemplate = config.chat_template;
      templateSource = 'tokenizer_config.json';
    }
    if (chatTemplate === undefined) {
      chatTemplate = QWEN3_OMNI_CHAT_TEMPLATE;
      templateSource = 'built-in';
    }
    const byteLevel = (json.decoder as { type?: string } | null | undefined)?.type === 'ByteLevel';
    return new Qwen3OmniTokenizer(tokenizer, chatTemplate, templateSource, source, config, options.specialTokenIds ?? {}, byteLevel);
  }

  private resolveSpecial(key: keyof Qwen3OmniSpecialTokenIds, tokenizerConfig: Record<string, unknown>, override?: number): number {
    const attr = CONFIG_ATTRIBUTES[key];
    const named = attr && typeof tokenizerConfig[attr] === 'string' ? (tokenizerConfig[attr] as string) : undefined;
    if (override !== undefined) {
      const token = this.tokenizer.id_to_token(override);
      if (token === undefined) throw new Error(`tokenizer ${this.source}: ${key} id ${override} from config.json is not in the vocabulary`);
      const namedId = named === undefined ? undefined : this.tokenizer.token_to_id(named);
      if (namedId !== undefined && namedId !== override) {
        throw new Error(`tokenizer ${this.source}: config.json gives ${key} id ${override} ('${token}') but tokenizer_config.json's ${attr} '${named}' is id ${namedId}`);
      }
      return override;
    }
    const str = named ?? DEFAULT_STRINGS[key];
    const id = this.tokenizer.token_to_id(str);
    if (id === undefined) throw new Error(`tokenizer ${this.source}: no token '${str}' (${key}) in the vocabulary and no id given for it`);
    return id;
  }

  /** Number of ids, added tokens included. */
  get vocabSize(): number {
    return this.tokenizer.get_vocab(true).size;
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * Text to ids. Special-token strings in the text become their ids (the chat template relies on it).
   *
   * ```ts
   * tok.encode('<|im_start|>user\nHi'); // [im_start, …]
   * ```
   */
  encode(text: string): number[] {
    const { ids } = this.tokenizer.encode(text, { add_special_tokens: false });
    if (this.byteLevel) {
      // A byte-level BPE without a byte in its vocabulary drops that character silently; say which one instead.
      const expected = text.normalize('NFC');
      const got = this.decode(ids, { skipSpecialTokens: false });
      if (got !== expected) {
        let i = 0;
        while (i < got.length && got[i] === expected[i]) i++;
        const ch = String.fromCodePoint(expected.codePointAt(i) ?? 0);
        throw new Error(`tokenizer ${this.source}: character ${JSON.stringify(ch)} (U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}) at offset ${i} has no token in the vocabulary`);
      }
    }
    return ids;
  }

  /** Ids to text; special tokens are dropped unless `skipSpecialTokens` is false. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? true, clean_up_tokenization_spaces: false });
  }

  /** The chat template rendered to text (placeholders not yet expanded). */
  applyChatTemplate(messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    return renderChatTemplate(this.chatTemplate, messages, { tokens: this.templateTokens(), addGenerationPrompt: options.addGenerationPrompt });
  }

  /**
   * Messages to model input: template, tokenise, expand media placeholders (spec 5.4). Options default to the
   * released model's values; pass the loaded config's (spatial_merge_size, n_window, position_id_per_seconds).
   *
   * ```ts
   * const p = tok.encodeChat([{ role: 'user', content: [{ type: 'audio', frames: 150 }, { type: 'text', text: 'Caption it.' }] }]);
   * p.ids.length; p.audioTokens; // [20]
   * ```
   */
  encodeChat(
    messages: readonly ChatMessage[],
    options: Partial<PlaceholderOptions> & { addGenerationPrompt?: boolean } = {},
  ): MultimodalPrompt & { text: string } {
    const text = this.applyChatTemplate(messages, options);
    const media: ContentPart[] = [];
    for (const m of messages) if (typeof m.content !== 'string') for (const p of m.content) if (p.type !== 'text') media.push(p);
    const prompt = expandMultimodalPlaceholders(this.encode(text), media, this.specialTokens, {
      spatialMergeSize: options.spatialMergeSize ?? 2,
      nWindow: options.nWindow ?? 50,
      positionIdPerSeconds: options.positionIdPerSeconds ?? 13,
    });
    return { ...prompt, text };
  }

  /**
   * A streaming decoder for generated ids (never emits half a UTF-8 character; special tokens dropped).
   *
   * ```ts
   * const detok = tok.detokenizer();
   * for await (const id of ids) process.stdout.write(detok.push(id));
   * ```
   */
  detokenizer(): StreamingDetokenizer {
    return new StreamingDetokenizer((ids) => this.decode(ids));
  }

  private templateTokens(): ChatTemplateTokens {
    const s = (id: number) => this.tokenizer.id_to_token(id)!;
    const t = this.specialTokens;
    return {
      im_start: s(t.imStart),
      im_end: s(t.imEnd),
      audio_token: s(t.audioPad),
      audio_bos_token: s(t.audioStart),
      audio_eos_token: s(t.audioEnd),
      image_token: s(t.imagePad),
      video_token: s(t.videoPad),
      vision_bos_token: s(t.visionStart),
      vision_eos_token: s(t.visionEnd),
    };
  }
}

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`tokenizer: cannot read ${path} (${(err as Error).message})`, { cause: err });
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (err) {
    throw new Error(`tokenizer: ${path} is not a JSON object (${(err as Error).message})`, { cause: err });
  }
}
