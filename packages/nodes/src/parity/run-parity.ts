import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Checkpoint, SafetensorsFile, type HostTensor } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from '../models/qwen3-omni/config.js';
import { parityRunners } from './registry.js';
import type { CaseSpec, CasesFile, ParityContext, ParityRunner, ParityValue } from './types.js';

/** The comparison of one expected tensor with what our implementation produced. */
export interface TensorResult {
  case: string;
  tensor: string;
  role: 'intermediate' | 'output';
  /** null when nothing comparable was produced (missing, wrong shape, runner error). */
  maxAbsDiff: number | null;
  atol: number;
  ok: boolean;
  /** Why it failed when it is not a plain tolerance miss. */
  error?: string;
}

/** What happened to one case as a whole. */
export interface CaseResult {
  case: string;
  title: string;
  /** Kinds of the runners that ran it; empty when no runner matches (the case is not run). */
  runners: string[];
  ran: boolean;
  error?: string;
  seconds: number;
  /** tfjs tensors still alive after the case that were not before it (a runner leak). */
  leakedTensors: number;
}

export interface ParityReport {
  fixtureDir: string;
  unknownConfigFields: string[];
  cases: CaseResult[];
  tensors: TensorResult[];
  passed: number;
  failed: number;
  /** Failed tensors whose role is output (these decide the exit code), counting cases not run. */
  failedOutputs: number;
  notRun: string[];
}

export interface RunParityOptions {
  runners?: readonly ParityRunner[];
  /** Runs only the cases this accepts (by case name). */
  filter?: (caseName: string) => boolean;
  onCase?: (c: CaseResult) => void;
  onTensor?: (t: TensorResult) => void;
}

/**
 * Runs every case of a fixture folder (config.json, model.safetensors, cases.json, cases.safetensors) through the
 * registered runners and compares each produced tensor that cases.json lists as output or intermediate with its atol
 * (integers exactly). Expected tensors nobody produced fail with `error: 'not produced'`; a case no runner matches is
 * not run and its tensors fail with `error: 'case not run: no runner'`.
 *
 * ```ts
 * await initBackend();
 * const report = await runParity(fixtureDir(), { onTensor: (t) => console.log(JSON.stringify(t)) });
 * console.log(`parity: ${report.passed} passed, ${report.failed} failed`);
 * ```
 */
export async function runParity(fixtureDir: string, options: RunParityOptions = {}): Promise<ParityReport> {
  const runners = options.runners ?? parityRunners;
  const casesPath = join(fixtureDir, 'cases.json');
  const casesTensorsPath = join(fixtureDir, 'cases.safetensors');
  for (const p of [casesPath, casesTensorsPath, join(fixtureDir, 'config.json')]) {
    if (!existsSync(p)) throw new Error(`parity: fixture folder ${fixtureDir} has no ${p.slice(fixtureDir.length + 1)}`);
  }
  const casesFile = parseCasesFile(casesPath);
  const { config, unknownFields } = readQwen3OmniConfig(fixtureDir);
  const ckpt = Checkpoint.open(fixtureDir);
  const caseTensors = SafetensorsFile.open(casesTensorsPath);
  const report: ParityReport = { fixtureDir, unknownConfigFields: unknownFields, cases: [], tensors: [], passed: 0, failed: 0, failedOutputs: 0, notRun: [] };
  const record = (t: TensorResult): void => {
    report.tensors.push(t);
    if (t.ok) report.passed++;
    else {
      report.failed++;
      if (t.role === 'output') report.failedOutputs++;
    }
    options.onTensor?.(t);
  };
  try {
    for (const [caseName, spec] of Object.entries(casesFile.cases)) {
      if (options.filter && !options.filter(caseName)) continue;
      const matching = runners.filter((r) => r.matches(caseName, spec));
      const expected = Object.entries(spec.tensors).filter(([, t]) => t.role !== 'input') as [string, CaseSpec['tensors'][string] & { role: 'intermediate' | 'output' }][];
      const caseResult: CaseResult = { case: caseName, title: spec.title, runners: matching.map((r) => r.kind), ran: matching.length > 0, seconds: 0, leakedTensors: 0 };
      if (!matching.length) {
        report.notRun.push(caseName);
        caseResult.error = 'no runner matches this case';
        options.onCase?.(caseResult);
        report.cases.push(caseResult);
        for (const [name, t] of expected) record({ case: caseName, tensor: name, role: t.role, maxAbsDiff: null, atol: t.atol, ok: false, error: 'case not run: no runner' });
        continue;
      }
      const tensors: Record<string, HostTensor> = {};
      for (const name of Object.keys(spec.tensors)) if (caseTensors.has(name)) tensors[name] = caseTensors.read(name);
      const ctx = makeContext(fixtureDir, config, ckpt, caseName, spec, tensors, caseTensors);
      const before = tf.memory().numTensors;
      const t0 = performance.now();
      const produced: Record<string, HostTensor | { shape?: number[]; data: ArrayLike<number> }> = {};
      try {
        for (const runner of matching) {
          const out = await runner.run(ctx);
          for (const [name, value] of Object.entries(out)) produced[name] = await toHost(value);
        }
      } catch (err) {
        caseResult.error = (err as Error).stack ?? String(err);
      }
      caseResult.seconds = (performance.now() - t0) / 1000;
      caseResult.leakedTensors = Math.max(0, tf.memory().numTensors - before);
      options.onCase?.(caseResult);
      report.cases.push(caseResult);
      for (const [name, t] of expected) {
        const got = produced[name];
        const want = tensors[name];
        if (!want) record({ case: caseName, tensor: name, role: t.role, maxAbsDiff: null, atol: t.atol, ok: false, error: `expected tensor missing from cases.safetensors` });
        else if (!got) {
          const why = caseResult.error ? `runner failed: ${caseResult.error.split('\n')[0]}` : 'not produced';
          record({ case: caseName, tensor: name, role: t.role, maxAbsDiff: null, atol: t.atol, ok: false, error: why });
        } else record({ case: caseName, tensor: name, role: t.role, ...compare(want, got, isIntegerDtype(t.dtype) ? 0 : t.atol) });
      }
    }
  } finally {
    caseTensors.close();
    ckpt.close();
  }
  return report;
}

function parseCasesFile(path: string): CasesFile {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`parity: ${path} is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  const cases = (json as CasesFile | null)?.cases;
  if (!cases || typeof cases !== 'object') throw new Error(`parity: ${path} has no "cases" object`);
  for (const [name, c] of Object.entries(cases)) {
    if (!c || typeof c.tensors !== 'object') throw new Error(`parity: ${path}: case '${name}' has no "tensors" object`);
    for (const [tn, t] of Object.entries(c.tensors)) {
      if (!['input', 'intermediate', 'output'].includes(t.role)) throw new Error(`parity: ${path}: ${name}/${tn}: role '${t.role}' is not input/intermediate/output`);
      if (typeof t.atol !== 'number') throw new Error(`parity: ${path}: ${name}/${tn}: atol is not a number`);
    }
    c.params ??= {};
  }
  return json as CasesFile;
}

function makeContext(
  fixtureDir: string, config: ParityContext['config'], ckpt: Checkpoint, caseName: string, caseSpec: CaseSpec,
  tensors: Record<string, HostTensor>, file: SafetensorsFile,
): ParityContext {
  return {
    fixtureDir, config, ckpt, caseName, caseSpec, params: caseSpec.params, tensors,
    tensor(name) {
      const t = tensors[name];
      if (!t) throw new Error(`parity case ${caseName}: tensor '${name}' is not in cases.safetensors (have: ${Object.keys(tensors).join(', ')})`);
      return t;
    },
    fixtureTensor: (name) => tensors[name] ?? (file.has(name) ? file.read(name) : undefined),
    param<T>(name: string): T {
      if (!(name in caseSpec.params)) throw new Error(`parity case ${caseName}: parameter '${name}' is not in cases.json (have: ${Object.keys(caseSpec.params).join(', ')})`);
      return caseSpec.params[name] as T;
    },
  };
}

const isIntegerDtype = (dtype: string): boolean => /^(u?int|bool|[ui]\d)/i.test(dtype);

async function toHost(v: ParityValue): Promise<{ shape?: number[]; data: ArrayLike<number> }> {
  if (v instanceof tf.Tensor) {
    try {
      return { shape: v.shape, data: (await v.data()) as Float32Array | Int32Array };
    } finally {
      v.dispose();
    }
  }
  if (v instanceof Float32Array || v instanceof Int32Array) return { data: v };
  if (Array.isArray(v)) return { data: (v as unknown[]).flat(Infinity as 1) as number[] };
  return v;
}

function compare(want: HostTensor, got: { shape?: number[]; data: ArrayLike<number> }, atol: number): { maxAbsDiff: number | null; atol: number; ok: boolean; error?: string } {
  if (got.shape && (got.shape.length !== want.shape.length || got.shape.some((d, i) => d !== want.shape[i]))) {
    return { maxAbsDiff: null, atol, ok: false, error: `shape [${got.shape}] but expected [${want.shape}]` };
  }
  if (got.data.length !== want.data.length) {
    return { maxAbsDiff: null, atol, ok: false, error: `${got.data.length} elements but expected ${want.data.length}` };
  }
  let max = 0;
  for (let i = 0; i < want.data.length; i++) {
    const d = Math.abs(got.data[i]! - want.data[i]!);
    if (!(d <= max)) max = Number.isNaN(d) ? Infinity : d; // NaN never passes
  }
  return { maxAbsDiff: max, atol, ok: max <= atol };
}
