import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { CaptionGeneration } from './caption-model.js';

/**
 * Everything that changes what a caption job writes. Two runs with equal options (and the same model)
 * write the same captions, which is what lets a restarted job skip the files it already did.
 */
export const captionJobOptionsSchema = z
  .object({
    /** Text after the audio in the user turn; empty: the audio alone, as the Qwen3-Omni Captioner is prompted. */
    prompt: z.string().default(''),
    summaryPrompt: z.string().min(1).default('Summarize in one sentence this recording, given captions of its parts:'),
    segmentSeconds: z.number().positive().max(600).default(30),
    maxDurationSeconds: z.number().positive().default(4 * 3600),
    maxNewTokens: z.number().int().positive().max(8192).default(64),
    temperature: z.number().min(0).max(10).default(0),
    topK: z.number().int().min(0).default(0),
    topP: z.number().gt(0).max(1).default(1),
    seed: z.number().int().min(0).default(0),
  })
  .strict();

export type CaptionJobOptions = z.infer<typeof captionJobOptionsSchema>;
export type CaptionJobOptionsInput = z.input<typeof captionJobOptionsSchema>;

/**
 * Validates caption options, naming the bad field: `parseCaptionOptions({ segmentSeconds: -1 })` throws
 * `caption options: segmentSeconds: Too small: expected number to be >0`.
 *
 * ```ts
 * const options = parseCaptionOptions({ prompt: 'What do you hear?', segmentSeconds: 20 });
 * ```
 */
export function parseCaptionOptions(input: CaptionJobOptionsInput = {}): CaptionJobOptions {
  const r = captionJobOptionsSchema.safeParse(input);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`).join('; ');
    throw new Error(`caption options: ${issues}`);
  }
  return r.data;
}

/** The generation part of the options, as a `CaptionModel` takes it. */
export function generationOf(options: CaptionJobOptions): CaptionGeneration {
  return { maxNewTokens: options.maxNewTokens, temperature: options.temperature, topK: options.topK, topP: options.topP, seed: options.seed };
}

/**
 * A short stable hash of the options and the model id: the resume key of caption outputs. Keys are
 * sorted so the hash does not depend on how the options object was built.
 *
 * ```ts
 * const key = captionOptionsHash(parseCaptionOptions(), 'qwen3-omni-tiny@1a2b3c4d'); // 16 hex digits
 * ```
 */
export function captionOptionsHash(options: CaptionJobOptions, modelId: string): string {
  const sorted = Object.fromEntries(Object.entries(options).sort(([a], [b]) => a.localeCompare(b)));
  return createHash('sha256').update(JSON.stringify({ model: modelId, options: sorted })).digest('hex').slice(0, 16);
}
