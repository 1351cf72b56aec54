import { InvalidArgumentError } from 'commander';

/*
 * Commander argument parsers shared by every command: a bad value stops the command with commander's usage error,
 * naming the option, what it must be and what came.
 */

/**
 * Parses an integer option of at least `min`.
 *
 * ```ts
 * program.option('--steps <n>', 'training steps', int('--steps', 1), 100);
 * ```
 */
export const int = (name: string, min: number) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got '${v}'`);
  return n;
};

/**
 * Parses a finite number option; with `nonNegative`, one that is not below 0.
 *
 * ```ts
 * program.option('--lr <x>', 'peak learning rate', num('--lr', { nonNegative: true }), 3e-3);
 * ```
 */
export const num = (name: string, { nonNegative = false } = {}) => (v: string): number => {
  const n = Number(v);
  if (!Number.isFinite(n) || (nonNegative && n < 0)) throw new InvalidArgumentError(`${name} must be a ${nonNegative ? 'non-negative ' : ''}number, got '${v}'`);
  return n;
};
