import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/*
 * Where the built-in captioner lives: models/omniflow-captioner at the repository root, a model omniflow trained
 * itself on generated scenes (docs/model-card.md). Everything that falls back to a built-in model asks here.
 */

/** Folder name of the built-in captioner under `models/`. */
export const BUILTIN_CAPTIONER_NAME = 'omniflow-captioner';

/**
 * Absolute path of the built-in captioner's folder (config.json, model.safetensors, tokenizer files). Throws naming
 * the path when it is missing (a checkout without the models/ folder).
 *
 * ```ts
 * const model = await loadQwen3Omni(builtinCaptionerDir());
 * ```
 */
export function builtinCaptionerDir(): string {
  // packages/nodes/src/training → repository root (sources) or packages/nodes/dist → root (build): both are 3–4 levels up.
  for (const up of ['../../../../models/', '../../../models/']) {
    const dir = fileURLToPath(new URL(`${up}${BUILTIN_CAPTIONER_NAME}`, import.meta.url));
    if (existsSync(`${dir}/config.json`)) return dir;
  }
  throw new Error(`built-in captioner not found: expected models/${BUILTIN_CAPTIONER_NAME} (config.json, model.safetensors, tokenizer.json) at the repository root; pass --model <folder> instead`);
}
