import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Checkpoint, initBackend, qwen3OmniExpectedTensors, type BackendName, type Qwen3OmniConfigLike } from '@omniflow/runtime-gpu';
import { AudioEncoder } from './audio-encoder.js';
import { CodePredictor } from './code-predictor.js';
import { CodecHead } from './codec-head.js';
import { Code2Wav } from './code2wav.js';
import { readQwen3OmniConfig, type Qwen3OmniConfig } from './config.js';
import { TextModel, THINKER_TEXT_KEYS } from './text-model.js';
import type { WeightDtype } from '../../layers/linear.js';
import { Talker } from './talker.js';
import { Qwen3OmniTokenizer } from './tokenizer.js';
import { VisionEncoder } from './vision-encoder.js';

/*
 * loadQwen3Omni: one call from a model folder to modules on the tensor backend. The folder is the Hugging Face
 * layout (config.json, tokenizer.json, tokenizer_config.json, model.safetensors or model-0000i-of-0000n.safetensors +
 * model.safetensors.index.json). Modules are loaded when the checkpoint holds them — an Instruct checkpoint has a
 * talker and Code2Wav, the Captioner and Thinking checkpoints are the thinker alone — and the whole checkpoint is
 * checked against the config before any weight is read, so a broken download fails once, naming every bad tensor.
 */

/** A loadable part of the checkpoint, named by its key prefix. */
export type Qwen3OmniModuleName = 'thinker' | 'audio_tower' | 'visual' | 'talker' | 'code2wav';

/** Key prefixes that identify each module in the checkpoint. */
const MODULE_PREFIXES: Record<Qwen3OmniModuleName, readonly string[]> = {
  thinker: ['thinker.model.', 'thinker.lm_head.'],
  audio_tower: ['thinker.audio_tower.'],
  visual: ['thinker.visual.'],
  talker: ['talker.'],
  code2wav: ['code2wav.'],
};

function moduleOf(key: string): Qwen3OmniModuleName | undefined {
  for (const [name, prefixes] of Object.entries(MODULE_PREFIXES) as Array<[Qwen3OmniModuleName, readonly string[]]>) {
    if (prefixes.some((p) => key.startsWith(p))) return name;
  }
  return undefined;
}

export interface LoadQwen3OmniOptions {
  /**
   * The tokenizer: a folder holding tokenizer.json (+ tokenizer_config.json), or a ready instance (for the tiny fixture
   * checkpoint, which ships none: `fixtureTokenizer()`). Default: the model folder itself.
   */
  readonly tokenizer?: string | Qwen3OmniTokenizer;
  /** Load only these modules (each must be in the checkpoint). Default: every module the checkpoint holds. */
  readonly modules?: readonly Qwen3OmniModuleName[];
  /** Force a tensor backend (see initBackend). */
  readonly backend?: BackendName;
  /**
   * 'bf16': the thinker's, talker's, codec head's and code predictor's matmul weights, and Code2Wav's weight-streaming
   * layers (see Code2Wav.load), are kept as packed bf16 (half the memory and half the bytes per decode step; exact for
   * the released bf16 checkpoint; inference only). The encoders and Code2Wav's decoder convolutions stay float32.
   * 'int8': the same matrices of the thinker, talker, codec head and code predictor quantized per output column (a
   * quarter of float32's bytes; approximate, see WeightDtype), and Code2Wav's as Code2Wav.load describes.
   * Routers and norms stay float32 in every format. Default 'float32'.
   */
  readonly weights?: WeightDtype;
}

/** What one module took. */
export interface LoadedModuleReport {
  readonly name: Qwen3OmniModuleName;
  readonly tensors: number;
  readonly parameters: number;
  /** Bytes the module would occupy as float32 (weights are converted from bf16/f16 on load; with `weights: 'bf16'` the packed matrices take half). */
  readonly bytes: number;
}

/** Everything `loadQwen3Omni` did, for logs and for checking a download. */
export interface Qwen3OmniLoadReport {
  readonly dir: string;
  readonly backend: string;
  readonly modules: readonly LoadedModuleReport[];
  /** Modules present in the checkpoint but not loaded, and why. */
  readonly skipped: ReadonlyArray<{ name: string; reason: string }>;
  readonly tensors: number;
  readonly parameters: number;
  readonly bytes: number;
  /** Size of the checkpoint files' tensor data as stored (bf16 for the release). */
  readonly storedBytes: number;
  /** Checkpoint keys no loaded module read (skipped modules' keys included). */
  readonly unusedKeys: readonly string[];
  /** config.json fields no schema knows, and disagreements between config and checkpoint. */
  readonly configWarnings: readonly string[];
  readonly tokenizer: { readonly source: string; readonly chatTemplate: string; readonly vocabSize: number };
  readonly seconds: number;
}

/** The speech-generating half of an Instruct checkpoint (`talker.*`). */
export interface TalkerModules {
  readonly talker: Talker;
  readonly codecHead: CodecHead;
  readonly codePredictor: CodePredictor;
}

/**
 * A loaded Qwen3-Omni checkpoint: the thinker's text model, the encoders and speech modules it has, the tokenizer.
 * Owns every tensor; `dispose()` frees them.
 */
export class Qwen3OmniModel {
  constructor(
    readonly config: Qwen3OmniConfig,
    readonly tokenizer: Qwen3OmniTokenizer,
    readonly thinker: TextModel,
    readonly audioEncoder: AudioEncoder | undefined,
    readonly visionEncoder: VisionEncoder | undefined,
    readonly talker: TalkerModules | undefined,
    readonly code2wav: Code2Wav | undefined,
    readonly report: Qwen3OmniLoadReport,
  ) {}

  /** One line per loaded module, then totals and warnings: what to print after loading. */
  describe(): string {
    const r = this.report;
    const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    const lines = [`Qwen3-Omni from ${r.dir} on ${r.backend} in ${r.seconds.toFixed(2)} s`];
    for (const m of r.modules) lines.push(`  ${m.name.padEnd(12)} ${String(m.tensors).padStart(6)} tensors ${String(m.parameters).padStart(14)} params ${mb(m.bytes).padStart(12)}`);
    for (const s of r.skipped) lines.push(`  ${s.name.padEnd(12)} not loaded: ${s.reason}`);
    lines.push(`  total        ${String(r.tensors).padStart(6)} tensors ${String(r.parameters).padStart(14)} params ${mb(r.bytes).padStart(12)} (stored ${mb(r.storedBytes)})`);
    lines.push(`  tokenizer    ${r.tokenizer.vocabSize} tokens from ${r.tokenizer.source}, chat template: ${r.tokenizer.chatTemplate}`);
    // Keys of modules skipped on purpose are expected to be unused; anything else is worth a look.
    const skipped = new Set(r.skipped.map((s) => s.name));
    const stray = r.unusedKeys.filter((k) => !skipped.has(moduleOf(k) ?? ''));
    if (stray.length) lines.push(`  unused keys  ${stray.length}: ${stray.slice(0, 5).join(', ')}${stray.length > 5 ? ', …' : ''}`);
    for (const w of r.configWarnings) lines.push(`  warning      ${w}`);
    return lines.join('\n');
  }

  dispose(): void {
    this.thinker.dispose();
    this.audioEncoder?.dispose();
    this.visionEncoder?.dispose();
    this.talker?.talker.dispose();
    this.talker?.codecHead.dispose();
    this.talker?.codePredictor.dispose();
    this.code2wav?.dispose();
  }
}

/**
 * Loads a Qwen3-Omni checkpoint folder: config.json (validated), the tokenizer, and every module the checkpoint holds,
 * single-file or sharded, bf16 converted to float32 on load. Before reading any weight the checkpoint is compared
 * with what the config implies, and all missing or mis-shaped tensors are reported in one error.
 *
 * ```ts
 * const model = await loadQwen3Omni('models/Qwen3-Omni-30B-A3B-Captioner');
 * console.log(model.describe());
 * model.dispose();
 * ```
 */
export async function loadQwen3Omni(dir: string, options: LoadQwen3OmniOptions = {}): Promise<Qwen3OmniModel> {
  const t0 = performance.now();
  const backend = await initBackend(options.backend ? { backend: options.backend } : {});
  const { config, unknownFields } = readQwen3OmniConfig(join(dir, 'config.json'));
  const configWarnings = unknownFields.map((f) => `config.json: unknown field ${f}`);
  const tokenizer = loadTokenizer(dir, config, options.tokenizer);

  const ckpt = Checkpoint.open(dir);
  try {
    const present = new Set<Qwen3OmniModuleName>();
    for (const k of ckpt.keys()) {
      const m = moduleOf(k);
      if (m) present.add(m);
    }
    if (!present.has('thinker')) throw new Error(`checkpoint ${dir}: no thinker.model.* tensors — not a Qwen3-Omni checkpoint`);
    const wanted = new Set<Qwen3OmniModuleName>(options.modules ?? [...present]);
    wanted.add('thinker');
    const skipped: Array<{ name: string; reason: string }> = [];
    for (const m of wanted) if (!present.has(m)) throw new Error(`checkpoint ${dir}: module '${m}' was asked for but the checkpoint has no ${MODULE_PREFIXES[m].join(' / ')}* tensors`);
    for (const m of Object.keys(MODULE_PREFIXES) as Qwen3OmniModuleName[]) if (present.has(m) && !wanted.has(m)) skipped.push({ name: m, reason: 'not asked for' });
    if ((wanted.has('code2wav') || present.has('talker')) && !config.enable_audio_output) {
      configWarnings.push('config.json: enable_audio_output is false but the checkpoint holds speech modules');
    }
    if (config.enable_audio_output && !present.has('talker')) configWarnings.push('config.json: enable_audio_output is true but the checkpoint has no talker');
    if (wanted.has('code2wav') && !config.code2wav_config) throw new Error(`${dir}/config.json: the checkpoint holds code2wav.* tensors but config.json has no code2wav_config`);
    if (wanted.has('talker') && !config.talker_config) throw new Error(`${dir}/config.json: the checkpoint holds talker.* tensors but config.json has no talker_config`);

    // Every tensor of every module we load must be there with its shape; report all problems at once.
    // The derivation skips speech modules when enable_audio_output is false; here the checkpoint decides.
    const speech = wanted.has('talker') || wanted.has('code2wav');
    const expected = qwen3OmniExpectedTensors({ ...config, enable_audio_output: speech || config.enable_audio_output } as unknown as Qwen3OmniConfigLike);
    const needed = new Map([...expected].filter(([k]) => wanted.has(moduleOf(k)!)));
    ckpt.validate(needed, { allowUnexpected: true });

    const loaded: Array<{ dispose(): void }> = [];
    try {
      const th = config.thinker_config;
      const weights = { weights: options.weights ?? 'float32' } as const;
      const thinker = TextModel.load(ckpt, th.text_config, THINKER_TEXT_KEYS, weights);
      loaded.push(thinker);
      const audioEncoder = wanted.has('audio_tower') ? AudioEncoder.load(ckpt, th.audio_config) : undefined;
      if (audioEncoder) loaded.push(audioEncoder);
      const visionEncoder = wanted.has('visual') ? VisionEncoder.load(ckpt, th.vision_config) : undefined;
      if (visionEncoder) loaded.push(visionEncoder);
      let talker: TalkerModules | undefined;
      if (wanted.has('talker')) {
        const t = Talker.load(ckpt, config, weights);
        loaded.push(t);
        const codecHead = CodecHead.load(ckpt, config.talker_config!, undefined, weights);
        loaded.push(codecHead);
        const codePredictor = CodePredictor.load(ckpt, config.talker_config!.code_predictor_config, undefined, weights);
        loaded.push(codePredictor);
        talker = { talker: t, codecHead, codePredictor };
      }
      const code2wav = wanted.has('code2wav') ? Code2Wav.load(ckpt, config.code2wav_config!, 'code2wav', weights) : undefined;
      if (code2wav) loaded.push(code2wav);

      const unusedKeys = ckpt.unused();
      const unused = new Set(unusedKeys);
      const modules: LoadedModuleReport[] = [];
      let storedBytes = 0;
      for (const m of (Object.keys(MODULE_PREFIXES) as Qwen3OmniModuleName[]).filter((n) => wanted.has(n))) {
        let tensors = 0;
        let parameters = 0;
        for (const k of ckpt.keys()) {
          if (moduleOf(k) !== m || unused.has(k)) continue;
          const e = ckpt.entry(k);
          tensors++;
          parameters += e.shape.reduce((a, b) => a * b, 1);
          storedBytes += e.byteLength;
        }
        modules.push({ name: m, tensors, parameters, bytes: parameters * 4 });
      }
      const sum = (f: (m: LoadedModuleReport) => number) => modules.reduce((a, m) => a + f(m), 0);
      const report: Qwen3OmniLoadReport = {
        dir,
        backend: backend.name,
        modules,
        skipped,
        tensors: sum((m) => m.tensors),
        parameters: sum((m) => m.parameters),
        bytes: sum((m) => m.bytes),
        storedBytes,
        unusedKeys,
        configWarnings,
        tokenizer: { source: tokenizer.source, chatTemplate: tokenizer.chatTemplateSource, vocabSize: tokenizer.vocabSize },
        seconds: (performance.now() - t0) / 1000,
      };
      return new Qwen3OmniModel(config, tokenizer, thinker, audioEncoder, visionEncoder, talker, code2wav, report);
    } catch (err) {
      for (const m of loaded) m.dispose();
      throw err;
    }
  } finally {
    // Every module copied its weights out; the files are no longer needed.
    ckpt.close();
  }
}

function loadTokenizer(dir: string, config: Qwen3OmniConfig, given: string | Qwen3OmniTokenizer | undefined): Qwen3OmniTokenizer {
  const th = config.thinker_config;
  const specialTokenIds = {
    ...(config.im_start_token_id !== undefined ? { imStart: config.im_start_token_id } : {}),
    ...(config.im_end_token_id !== undefined ? { imEnd: config.im_end_token_id } : {}),
    audioStart: th.audio_start_token_id,
    audioEnd: th.audio_end_token_id,
    audioPad: th.audio_token_id,
    visionStart: th.vision_start_token_id,
    visionEnd: th.vision_end_token_id,
    imagePad: th.image_token_id,
    videoPad: th.video_token_id,
  };
  let tokenizer: Qwen3OmniTokenizer;
  if (given instanceof Qwen3OmniTokenizer) tokenizer = given;
  else {
    const folder = given ?? dir;
    if (!existsSync(join(folder, 'tokenizer.json'))) {
      throw new Error(
        `${folder}: no tokenizer.json. Pass { tokenizer: <folder with tokenizer.json> }` +
          (given === undefined ? ' (the tiny fixture checkpoint has none: pass { tokenizer: fixtureTokenizer() })' : ''),
      );
    }
    tokenizer = Qwen3OmniTokenizer.fromDir(folder, { specialTokenIds });
  }
  // The model embeds every id the tokenizer can produce; a mismatch would index past the embedding table.
  const vocab = th.text_config.vocab_size;
  if (tokenizer.vocabSize > vocab) throw new Error(`tokenizer ${tokenizer.source}: ${tokenizer.vocabSize} tokens, but the thinker's vocab_size is ${vocab}`);
  for (const [name, id] of Object.entries(specialTokenIds)) {
    const got = tokenizer.specialTokens[name as keyof typeof tokenizer.specialTokens];
    if (got !== id) throw new Error(`tokenizer ${tokenizer.source}: ${name} is id ${got} but config.json says ${id}`);
  }
  return tokenizer;
}
