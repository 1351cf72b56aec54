import { builtinCaptionerDir, modelFolderId, Qwen3OmniCaptioner, type CaptionModel } from '@omniflow/nodes';

/**
 * The model folder used when none is named: `OMNIFLOW_MODEL` when set, else the captioner shipped in the repo's
 * `models/omniflow-captioner` when it is there; undefined otherwise.
 *
 * ```ts
 * const dir = builtinModelDir() ?? '/models/my-captioner';
 * ```
 */
export function builtinModelDir(): string | undefined {
  if (process.env.OMNIFLOW_MODEL) return process.env.OMNIFLOW_MODEL;
  // The one place that knows where the shipped model lives (@omniflow/nodes' builtinCaptionerDir).
  try {
    return builtinCaptionerDir();
  } catch {
    return undefined;
  }
}

function modelDirOf(dir: string | null): string {
  const d = dir ?? builtinModelDir();
  if (!d) throw new Error('no model: pass --model <dir> (a folder with config.json, model.safetensors and tokenizer.json) or set OMNIFLOW_MODEL');
  return d;
}

/**
 * The id outputs carry for a model folder (`null`: the built-in one), without loading it; see `modelFolderId`.
 *
 * ```ts
 * captionModelId('/models/qwen3-omni-tiny'); // 'qwen3-omni-tiny@3f9a0c1d2b4e'
 * ```
 */
export function captionModelId(dir: string | null): string {
  return modelFolderId(modelDirOf(dir));
}

/**
 * Loads a captioner from a model folder (`null`: the built-in one): the thinker and audio encoder of a Qwen3-Omni
 * checkpoint in the Hugging Face layout.
 *
 * ```ts
 * const model = await loadCaptionModel('/models/qwen3-omni-tiny');
 * model.dispose();
 * ```
 */
export async function loadCaptionModel(dir: string | null): Promise<CaptionModel> {
  const d = modelDirOf(dir);
  return Qwen3OmniCaptioner.load(d, { id: modelFolderId(d) });
}
