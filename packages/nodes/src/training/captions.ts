/*
 * The caption grammar of generated scenes, and how a predicted caption is scored against the reference.
 *
 *   caption  := segment (" then " segment)*
 *   segment  := event | bed " with " event        (the second event sounds over the first)
 *   event    := "a steady tone at " PITCH " for about " DURATION
 *             | ("a rising chirp" | "a falling chirp")
 *             | ("white" | "pink" | "brown") " noise for about " DURATION
 *             | "a click repeated " COUNT " times"
 *             | "a " ("low" | "high") " beep repeated " COUNT " times"
 *             | "silence for about " DURATION
 *
 * Every event phrase is a fixed word sequence with no "then" or "with" inside, so a caption splits back into its
 * events unambiguously, and one vocabulary word is one token.
 */

export const PITCHES = ['A3', 'A4', 'A5'] as const;
export const DURATIONS = ['half a second', 'one second', 'two seconds'] as const;
export const NOISE_COLOURS = ['white', 'pink', 'brown'] as const;
export const COUNTS = ['two', 'three', 'four', 'five'] as const;

export type Pitch = (typeof PITCHES)[number];
export type DurationWords = (typeof DURATIONS)[number];
export type NoiseColour = (typeof NOISE_COLOURS)[number];

/** One sound event of a scene, as the caption names it. */
export type SceneEvent =
  | { kind: 'tone'; pitch: Pitch; duration: DurationWords }
  | { kind: 'chirp'; direction: 'rising' | 'falling' }
  | { kind: 'noise'; colour: NoiseColour; duration: DurationWords }
  | { kind: 'clicks'; count: number }
  | { kind: 'beeps'; pitch: 'low' | 'high'; count: number }
  | { kind: 'silence'; duration: DurationWords };

/** Events that play one after another; a segment of two is a bed with a second event over it. */
export type SceneSegment = readonly [SceneEvent] | readonly [SceneEvent, SceneEvent];

/**
 * The words of one event.
 *
 * ```ts
 * eventPhrase({ kind: 'beeps', pitch: 'high', count: 3 }); // 'a high beep repeated three times'
 * ```
 */
export function eventPhrase(e: SceneEvent): string {
  switch (e.kind) {
    case 'tone':
      return `a steady tone at ${e.pitch} for about ${e.duration}`;
    case 'chirp':
      return `a ${e.direction} chirp`;
    case 'noise':
      return `${e.colour} noise for about ${e.duration}`;
    case 'clicks':
      return `a click repeated ${countWord(e.count)} times`;
    case 'beeps':
      return `a ${e.pitch} beep repeated ${countWord(e.count)} times`;
    case 'silence':
      return `silence for about ${e.duration}`;
  }
}

function countWord(n: number): string {
  const w = COUNTS[n - 2];
  if (!w) throw new Error(`caption grammar: a train of ${n} repeats has no count word (2–5)`);
  return w;
}

/**
 * The caption of a scene.
 *
 * ```ts
 * sceneCaption([[{ kind: 'clicks', count: 2 }], [{ kind: 'noise', colour: 'pink', duration: 'two seconds' }, { kind: 'chirp', direction: 'rising' }]]);
 * // 'a click repeated two times then pink noise for about two seconds with a rising chirp'
 * ```
 */
export function sceneCaption(segments: readonly SceneSegment[]): string {
  return segments.map((s) => s.map(eventPhrase).join(' with ')).join(' then ');
}

/**
 * Splits a caption into its event phrases in order (the unit event-level F1 counts).
 *
 * ```ts
 * captionEvents('white noise for about one second with a falling chirp then a click repeated four times');
 * // ['white noise for about one second', 'a falling chirp', 'a click repeated four times']
 * ```
 */
export function captionEvents(caption: string): string[] {
  const words = normaliseCaption(caption);
  if (!words) return [];
  return words.split(/ (?:then|with) /).map((p) => p.trim()).filter((p) => p.length > 0);
}

/**
 * Single spaces, no surrounding space, no final period (what exact match compares).
 *
 * ```ts
 * normaliseCaption(' a rising  chirp. '); // 'a rising chirp'
 * ```
 */
export function normaliseCaption(caption: string): string {
  return caption.trim().replace(/\.$/, '').replace(/\s+/g, ' ');
}

/**
 * Length of the longest common subsequence of two phrase lists: the events named correctly and in the right order.
 *
 * ```ts
 * orderedMatches(['a rising chirp', 'pink noise for about one second'], ['pink noise for about one second', 'a rising chirp']); // 1
 * ```
 */
export function orderedMatches(predicted: readonly string[], reference: readonly string[]): number {
  const m = predicted.length, n = reference.length;
  let prev = new Array<number>(n + 1).fill(0);
  for (let i = 1; i <= m; i++) {
    const cur = new Array<number>(n + 1).fill(0);
    for (let j = 1; j <= n; j++) cur[j] = predicted[i - 1] === reference[j - 1] ? prev[j - 1]! + 1 : Math.max(prev[j]!, cur[j - 1]!);
    prev = cur;
  }
  return prev[n]!;
}

/** Scores of a set of predicted captions against their references. */
export interface CaptionScores {
  readonly count: number;
  /** Fraction of captions equal to the reference word for word. */
  readonly exactMatch: number;
  /** Micro-averaged over all events: an event counts when its whole phrase is right and in order (LCS). */
  readonly eventPrecision: number;
  readonly eventRecall: number;
  readonly eventF1: number;
}

/**
 * Exact-match rate and event-level precision/recall/F1 in order.
 *
 * ```ts
 * scoreCaptions([{ predicted: 'a rising chirp', reference: 'a rising chirp then a click repeated two times' }]);
 * // { count: 1, exactMatch: 0, eventPrecision: 1, eventRecall: 0.5, eventF1: 0.667 }
 * ```
 */
export function scoreCaptions(pairs: ReadonlyArray<{ predicted: string; reference: string }>): CaptionScores {
  let exact = 0, matched = 0, predictedEvents = 0, referenceEvents = 0;
  for (const { predicted, reference } of pairs) {
    if (normaliseCaption(predicted) === normaliseCaption(reference)) exact++;
    const p = captionEvents(predicted), r = captionEvents(reference);
    matched += orderedMatches(p, r);
    predictedEvents += p.length;
    referenceEvents += r.length;
  }
  const precision = predictedEvents ? matched / predictedEvents : 0;
  const recall = referenceEvents ? matched / referenceEvents : 0;
  return {
    count: pairs.length,
    exactMatch: pairs.length ? exact / pairs.length : 0,
    eventPrecision: precision,
    eventRecall: recall,
    eventF1: precision + recall > 0 ? (2 * precision * recall) / (precision + recall) : 0,
  };
}

/** Every word the grammar can produce, in a fixed order (the built-in tokenizer's vocabulary). */
export const CAPTION_WORDS: readonly string[] = [
  'a', 'steady', 'tone', 'at', ...PITCHES, 'for', 'about', 'half', 'second', 'one', 'seconds', ...COUNTS.filter((c) => c !== 'two'), 'two',
  'rising', 'falling', 'chirp', ...NOISE_COLOURS, 'noise', 'click', 'repeated', 'times', 'low', 'high', 'beep', 'silence', 'then', 'with',
];
