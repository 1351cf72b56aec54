import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, SafetensorsFile, fixtureDir, fixturePath, initBackend } from '@omniflow/runtime-gpu';
import { readQwen3OmniConfig } from './config.js';
import { Code2Wav } from './code2wav.js';
import { Code2WavStream } from './code2wav-stream.js';
import { StreamState } from '../../layers/stream-state.js';

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

/** [1, C, L] channels-first reference layout -> channels-last flat, as our stages produce. */
const channelsLast = (data: Float32Array, C: number, L: number): Float32Array => {
  const out = new Float32Array(C * L);
  for (let c = 0; c < C; c++) for (let l = 0; l < L; l++) out[l * C + c] = data[c * L + l];
  return out;
};

describe('Code2Wav (fixture case 8)', () => {
  let ckpt: Checkpoint;
  let cases: SafetensorsFile;
  let c2w: Code2Wav;
  let codes: Int32Array;
  let frames: number;
  let start: number;
  const ref = (name: string) => cases.read(`code2wav.${name}`).data as Float32Array;

  beforeAll(async () => {
    await initBackend();
    start = tf.memory().numTensors;
    const { config } = readQwen3OmniConfig(fixtureDir());
    ckpt = Checkpoint.open(fixturePath('model.safetensors'));
    c2w = Code2Wav.load(ckpt, config.code2wav_config!);
    cases = SafetensorsFile.open(fixturePath('cases.safetensors'));
    const c = cases.read('code2wav.codes');
    codes = c.data as Int32Array;
    frames = c.shape[2];
  });

  afterAll(() => {
    c2w.dispose();
    ckpt.close();
    cases.close();
    expect(tf.memory().numTensors).toBe(start);
  });

  it('reads every code2wav tensor and derives the frame geometry', () => {
    expect(ckpt.unused().filter((k) => k.startsWith('code2wav.'))).toEqual([]);
    expect(c2w.samplesPerFrame).toBe(24);
    expect(c2w.outputLength(frames)).toBe(279); // 24·12 − 9: the transposed convs' look-ahead
    expect(c2w.lookaheadSamples).toBe(9);
  });

  it('matches every intermediate stage of the reference', () => {
    const before = tf.memory().numTensors;
    const H = c2w.config.hidden_size;
    const embed = c2w.embed(codes, frames);
    const pre = c2w.preTransformer(embed);
    const up = c2w.upsample(pre);
    const raw = c2w.decoder(up, undefined, false);
    expect(maxAbsDiff(embed.dataSync(), ref('embed_mean'))).toBeLessThan(2e-4);
    expect(maxAbsDiff(pre.dataSync(), ref('pre_transformer'))).toBeLessThan(3e-4);
    expect(up.shape).toEqual([1, 48, H]);
    expect(maxAbsDiff(up.dataSync(), channelsLast(ref('upsampled'), H, 48))).toBeLessThan(4e-4);
    expect(maxAbsDiff(raw.dataSync(), ref('wav_unclamped'))).toBeLessThan(2e-4);
    tf.dispose([embed, pre, up, raw]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('decodes the waveform and the reference chunked decode', () => {
    const before = tf.memory().numTensors;
    expect(maxAbsDiff(c2w.decode(codes, frames), ref('wav'))).toBeLessThan(1e-4);
    expect(maxAbsDiff(c2w.chunkedDecode(codes, frames, 5, 2), ref('wav_chunked'))).toBeLessThan(1e-4);
    // HF's defaults (300, 25) decode these 12 frames in one chunk: no seam, identical to the full decode.
    expect(maxAbsDiff(c2w.chunkedDecode(codes, frames), ref('wav'))).toBeLessThan(1e-4);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('streams frame by frame exactly like the offline decode, then flushes the look-ahead tail', () => {
    const before = tf.memory().numTensors;
    const offline = c2w.decode(codes, frames);
    for (const split of [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [3, 1, 5, 2, 1], [12]]) {
      const stream = new Code2WavStream(c2w);
      const pieces: Float32Array[] = [];
      let at = 0;
      for (const n of split) {
        const chunk = new Int32Array(4 * n);
        for (let g = 0; g < 4; g++) chunk.set(codes.subarray(g * frames + at, g * frames + at + n), g * n);
        const wav = stream.push(chunk, n);
        // Each push completes exactly the samples the frames so far determine.
        expect(stream.samplesOut).toBe(c2w.outputLength(at + n));
        pieces.push(wav);
        at += n;
      }
      const streamed = Float32Array.from(pieces.flatMap((p) => [...p]));
      expect(maxAbsDiff(streamed, offline)).toBeLessThan(1e-5);
      expect(maxAbsDiff(streamed, ref('wav'))).toBeLessThan(1e-4);
      const tail = stream.flush();
      expect(tail.length).toBe(c2w.lookaheadSamples);
      expect(tail.every((x) => x >= -1 && x <= 1 && Number.isFinite(x))).toBe(true);
      expect(() => stream.push(chunk1(codes, frames), 1)).toThrow(/after flush/);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('over a long utterance the stream equals the reference chunked decode everywhere but its seam (300-frame chunks)', () => {
    const before = tf.memory().numTensors;
    const T = 310;
    let seed = 5;
    const long = Int32Array.from({ length: 4 * T }, () => (seed = (seed * 1103515245 + 12345) >>> 0) % 32);
    const stream = new Code2WavStream(c2w);
    const pieces: Float32Array[] = [];
    for (let at = 0; at < T; at += 7) {
      const n = Math.min(7, T - at);
      const chunk = new Int32Array(4 * n);
      for (let g = 0; g < 4; g++) chunk.set(long.subarray(g * T + at, g * T + at + n), g * n);
      pieces.push(stream.push(chunk, n));
    }
    stream.dispose();
    const streamed = Float32Array.from(pieces.flatMap((p) => [...p]));
    expect(streamed.length).toBe(24 * T - 9);
    const ref = c2w.chunkedDecode(long, T); // HF defaults: chunks of 300 frames, 25 frames of left context
    const seam = 24 * 300 - 9; // the first chunk loses its 9-sample look-ahead tail; the second starts at frame 300
    expect(ref.length).toBe(streamed.length - 9);
    expect(maxAbsDiff(ref.subarray(0, seam), streamed.subarray(0, seam))).toBeLessThan(1e-5);
    expect(maxAbsDiff(ref.subarray(seam), streamed.subarray(24 * 300))).toBeLessThan(1e-5);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('streams past the attention window with bounded state (window 4 < 12 frames)', () => {
    const stream = new Code2WavStream(c2w);
    const before = tf.memory().numTensors;
    stream.push(chunk1(codes, frames), 1);
    const afterOne = tf.memory().numTensors;
    for (let f = 1; f < frames; f++) stream.push(chunk1(codes, frames, f), 1);
    expect(tf.memory().numTensors).toBe(afterOne); // state tensors replaced, never accumulated
    stream.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a decoder cut at any step (two states, as the two-thread pipeline runs it) equals the whole stream, tail included', () => {
    const before = tf.memory().numTensors;
    const whole = new Code2WavStream(c2w);
    const want = [...Array.from({ length: frames }, (_, f) => [...whole.push(chunk1(codes, frames, f), 1)]).flat(), ...whole.flush()];
    expect(c2w.decoderSteps).toBe(2 + 4 * c2w.config.upsample_rates.length);
    for (let split = 0; split <= c2w.decoderSteps; split++) {
      const front = new StreamState(), back = new StreamState();
      const got: number[] = [];
      for (let f = 0; f < frames; f++) {
        const wav = tf.tidy(() => {
          const x = c2w.upsample(c2w.preTransformer(c2w.embed(chunk1(codes, frames, f), 1), front, f), front);
          return c2w.decoderPart(c2w.decoderPart(x, front, { from: 0, to: split }), back, { from: split, to: c2w.decoderSteps });
        });
        got.push(...wav.dataSync());
        wav.dispose();
        front.commit();
        back.commit();
      }
      const midTail = c2w.decoderTailPart(undefined, front, { from: 0, to: split });
      const tail = c2w.decoderTailPart(midTail, back, { from: split, to: c2w.decoderSteps });
      got.push(...(tail?.dataSync() ?? []));
      tf.dispose([midTail!, tail!].filter(Boolean));
      front.dispose();
      back.dispose();
      expect(got.length).toBe(want.length);
      expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    }
    expect(() => tf.tidy(() => c2w.decoderPart(tf.zeros([1, 1, 1]) as tf.Tensor3D, undefined, { from: 3, to: 99 })))
      .toThrow(new RegExp(`decoder steps \\[3, 99\\) are not a range within \\[0, ${c2w.decoderSteps}\\]`));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('with bf16 weights equals the float32 model on the same bf16-rounded checkpoint', () => {
    const before = tf.memory().numTensors;
    // A checkpoint whose bf16-packed layers hold bf16 values, as the release stores them.
    const toBf16 = (x: Float32Array) => {
      const u = new Uint32Array(Float32Array.from(x).buffer);
      for (let i = 0; i < u.length; i++) u[i] = (((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16) >>> 0;
      return new Float32Array(u.buffer);
    };
    const rounded = {
      get: (name: string, shape?: readonly number[]) => {
        const t = ckpt.get(name, shape);
        const packed = /pre_transformer\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$|upsample\.\d+\.(0\.conv|1\.pwconv\d)\.weight$|decoder\.(0|1\.block\.1)\.conv\.weight$/;
        return packed.test(name) ? { ...t, data: toBf16(t.data as Float32Array) } : t;
      },
    } as unknown as Checkpoint;
    const { config } = readQwen3OmniConfig(fixtureDir());
    const f32 = Code2Wav.load(rounded, config.code2wav_config!);
    const bf16 = Code2Wav.load(rounded, config.code2wav_config!, 'code2wav', { weights: 'bf16' });
    const want = f32.decode(codes, frames);
    expect(maxAbsDiff(bf16.decode(codes, frames), want)).toBeLessThan(2e-6);
    const stream = new Code2WavStream(bf16);
    const streamed = Array.from({ length: frames }, (_, f) => [...stream.push(chunk1(codes, frames, f), 1)]).flat();
    stream.dispose();
    expect(maxAbsDiff(streamed, want)).toBeLessThan(2e-6);
    // And the rounding itself moves the waveform only slightly from the reference.
    expect(maxAbsDiff(want, ref('wav'))).toBeLessThan(2e-2);
    f32.dispose();
    bf16.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('with int8 weights streams exactly like its own offline decode, close to float32 (SNR bound), every tensor freed', () => {
    const before = tf.memory().numTensors;
    const { config } = readQwen3OmniConfig(fixtureDir());
    const q = Code2Wav.load(ckpt, config.code2wav_config!, 'code2wav', { weights: 'int8' });
    const offline = q.decode(codes, frames);
    for (const split of [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [3, 1, 5, 2, 1]]) {
      const stream = new Code2WavStream(q);
      const pieces: number[] = [];
      let at = 0;
      for (const n of split) {
        const chunk = new Int32Array(4 * n);
        for (let g = 0; g < 4; g++) chunk.set(codes.subarray(g * frames + at, g * frames + at + n), g * n);
        pieces.push(...stream.push(chunk, n));
        at += n;
      }
      stream.dispose();
      // Every int8 product quantizes x per row, so an output row never depends on how the frames were chunked.
      expect(pieces).toEqual([...offline]); // measured: bit-identical
    }
    // Against the float32 decode of the same checkpoint: signal-to-noise ratio of the waveform.
    const want = c2w.decode(codes, frames);
    let signal = 0, noise = 0;
    for (let i = 0; i < want.length; i++) [signal, noise] = [signal + want[i] ** 2, noise + (offline[i] - want[i]) ** 2];
    const snrDb = 10 * Math.log10(signal / noise);
    expect(snrDb).toBeGreaterThan(33); // measured 37.2 dB (largest sample error 0.026 on a waveform within ±1)
    expect(snrDb).toBeLessThan(200); // the int8 path really ran (identical output would be infinite)
    q.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('places the default pipeline cut where the cost model balances the two threads', () => {
    const { config } = readQwen3OmniConfig(fixtureDir());
    const release = { ...config.code2wav_config!, hidden_size: 1024, num_attention_heads: 16, num_key_value_heads: 16, intermediate_size: 3072,
      num_hidden_layers: 8, decoder_dim: 1536, upsample_rates: [8, 5, 4, 3], upsampling_ratios: [2, 2] };
    for (const c of [config.code2wav_config!, release]) {
      for (const weights of ['float32', 'bf16', 'int8'] as const) {
        const { front, steps } = Code2Wav.frameCostMs(c, weights);
        expect(steps.length).toBe(2 + 4 * c.upsample_rates.length);
        const loads = steps.map((_, k) => k).concat(steps.length).map((k) => {
          const f = front + steps.slice(0, k).reduce((a, b) => a + b, 0);
          return Math.max(f, front + steps.reduce((a, b) => a + b, 0) - f);
        });
        expect(loads[Code2Wav.pipelineSplit(c, weights)]).toBe(Math.min(...loads));
      }
    }
    // bf16 halves the transformer's bytes, so the front thread takes on more of the decoder.
    expect(Code2Wav.pipelineSplit(release, 'bf16')).toBeGreaterThanOrEqual(Code2Wav.pipelineSplit(release, 'float32'));
    // int8 makes the transformer a quarter of float32's bytes and the decoder ~3x faster: the cut stays at least as late.
    expect(Code2Wav.pipelineSplit(release, 'int8')).toBeGreaterThanOrEqual(Code2Wav.pipelineSplit(release, 'bf16'));
  });

  it('names what is wrong with bad codes', () => {
    expect(() => c2w.decode(codes.subarray(1), frames)).toThrow(/expected 4 code groups x 12 frames = 48 codes, got 47/);
    const bad = codes.slice();
    bad[2 * frames + 5] = 32;
    expect(() => c2w.decode(bad, frames)).toThrow(/code 32 at group 2, frame 5 is outside the codebook \[0, 32\)/);
  });
});

/** Frame `f` of group-major codes as a one-frame chunk. */
function chunk1(codes: Int32Array, frames: number, f = 0): Int32Array {
  const groups = codes.length / frames;
  return Int32Array.from({ length: groups }, (_, g) => codes[g * frames + f]);
}
