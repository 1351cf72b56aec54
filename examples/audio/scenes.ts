/** Which generated scenes the demo clips are: seed 7 (training never used it), these scene indices, in file order. */
export const DEMO_SEED = 7;
export const DEMO_INDICES = [1, 2, 24, 26, 28] as const;
export const demoFileName = (k: number): string => `scene-${String(k + 1).padStart(2, '0')}.wav`;
