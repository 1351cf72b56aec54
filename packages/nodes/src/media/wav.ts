/**
 * WAV in and out without ffmpeg. Reading goes through the maintained `wavefile` library (PCM 8–32 bit, float
 * 32/64, A-law, µ-law, IMA ADPCM); writing streams samples to disk and fixes the RIFF and data sizes in the
 * header on close, so a file of any length is written with constant memory.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { audioPacket, samplesToMicros, type AudioPacket, type Micros } from '@omniflow/core';
import wavefile from 'wavefile';

export interface WavAudio {
  readonly sampleRate: number;
  readonly channels: number;
  /** Bit depth code of the file as wavefile names it ('16', '24', '32f', '8a' …). */
  readonly bitDepth: string;
  /** Interleaved float32 in [-1, 1]. */
  readonly samples: Float32Array;
  readonly frames: number;
  readonly durationSeconds: number;
}

/**
 * Reads a whole WAV file (path or bytes) into float32.
 *
 * ```ts
 * const { sampleRate, channels, samples } = await readWav('talk.wav');
 * ```
 */
export async function readWav(source: string | Uint8Array): Promise<WavAudio> {
  const name = typeof source === 'string' ? JSON.stringify(source) : 'WAV bytes';
  let bytes: Uint8Array;
  try {
    bytes = typeof source === 'string' ? await readFile(source) : source;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new Error(e.code === 'ENOENT' ? `readWav: file not found: ${name}` : `readWav: cannot read ${name}: ${e.message}`, { cause: err });
  }
  return decodeWav(bytes, name);
}

function decodeWav(bytes: Uint8Array, name: string): WavAudio {
  const wav = new wavefile.WaveFile();
  try {
    wav.fromBuffer(bytes);
  } catch (err) {
    throw new Error(`readWav: ${name} is not a readable WAV file: ${(err as Error).message}`, { cause: err });
  }
  const fmt = wav.fmt as { numChannels: number; sampleRate: number };
  const bitDepth = wav.bitDepth;
  // Companded and ADPCM data decode to 16-bit PCM first.
  if (bitDepth === '8a') wav.fromALaw();
  else if (bitDepth === '8m') wav.fromMuLaw();
  else if (bitDepth === '4') wav.fromIMAADPCM();
  const depth = wav.bitDepth;
  const raw = wav.getSamples(true, Float64Array) as unknown as Float64Array;
  const samples = new Float32Array(raw.length);
  if (depth === '32f' || depth === '64') samples.set(raw);
  else {
    const bits = Number(depth);
    if (!Number.isInteger(bits)) throw new Error(`readWav: ${name} has an unsupported bit depth '${depth}'`);
    // 8-bit WAV is unsigned around 128; every other integer depth is signed.
    const offset = bits === 8 ? 128 : 0;
    const scale = 1 / 2 ** (bits - 1);
    for (let i = 0; i < raw.length; i++) samples[i] = (raw[i] - offset) * scale;
  }
  const channels = fmt.numChannels;
  const frames = samples.length / channels;
  return { sampleRate: fmt.sampleRate, channels, bitDepth, samples, frames, durationSeconds: frames / fmt.sampleRate };
}

/**
 * A WAV file as audio packets of `chunkMs` (no ffmpeg involved).
 *
 * ```ts
 * for (const p of wavPackets(await readWav('talk.wav'), { chunkMs: 20 })) console.log(p.pts);
 * ```
 */
export function* wavPackets(wav: WavAudio, o: { chunkMs?: number; startPts?: Micros; session?: string; turn?: number } = {}): Generator<AudioPacket> {
  const chunkMs = o.chunkMs ?? 100;
  if (!(chunkMs > 0)) throw new RangeError(`wavPackets: chunkMs must be positive, got ${chunkMs}`);
  const frames = Math.max(1, Math.round((wav.sampleRate * chunkMs) / 1000));
  for (let f = 0; f < wav.frames; f += frames) {
    const n = Math.min(frames, wav.frames - f);
    yield audioPacket({
      samples: wav.samples.slice(f * wav.channels, (f + n) * wav.channels),
      sampleRate: wav.sampleRate,
      channels: wav.channels,
      pts: (o.startPts ?? 0) + samplesToMicros(f, wav.sampleRate),
      session: o.session,
      turn: o.turn,
    });
  }
}

export type WavSampleFormat = 'f32' | 's16';

export interface WavWriterOptions {
  readonly sampleRate: number;
  readonly channels: number;
  /** 'f32' (IEEE float, default) or 's16' (16-bit PCM, clipped to [-1, 1]). */
  readonly format?: WavSampleFormat;
}

/**
 * Converts float samples to little-endian bytes: float32 as is, or 16-bit clipped to ±32767.
 *
 * ```ts
 * encodePcm(Float32Array.of(0.5, -1), 's16'); // Uint8Array of Int16 [16384, -32767]
 * ```
 */
export function encodePcm(samples: Float32Array, format: WavSampleFormat | 'f32le' | 's16le'): Uint8Array {
  if (format === 'f32' || format === 'f32le') return new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength).slice();
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i];
    out[i] = s >= 1 ? 32767 : s <= -1 ? -32767 : Math.round(s * 32767);
  }
  return new Uint8Array(out.buffer);
}

/**
 * Streaming WAV writer: the header (from `wavefile`) is written first with zero sizes and fixed up on `close()`.
 *
 * ```ts
 * const w = await WavWriter.create('out.wav', { sampleRate: 24_000, channels: 1, format: 's16' });
 * await w.write(packet.samples);
 * await w.close(); // { frames, bytes }
 * ```
 */
export class WavWriter {
  private position: number;
  private frames = 0;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly file: FileHandle,
    readonly options: Required<WavWriterOptions>,
    private readonly dataSizeOffset: number,
    headerLength: number,
  ) {
    this.position = headerLength;
  }

  static async create(path: string, options: WavWriterOptions): Promise<WavWriter> {
    const { sampleRate, channels } = options;
    const format = options.format ?? 'f32';
    if (!Number.isInteger(sampleRate) || sampleRate <= 0) throw new RangeError(`WavWriter: sampleRate must be a positive integer, got ${sampleRate}`);
    if (!Number.isInteger(channels) || channels <= 0) throw new RangeError(`WavWriter: channels must be a positive integer, got ${channels}`);
    if (format !== 'f32' && format !== 's16') throw new RangeError(`WavWriter: format must be 'f32' or 's16', got ${JSON.stringify(format)}`);
    const header = new wavefile.WaveFile();
    header.fromScratch(channels, sampleRate, format === 'f32' ? '32f' : '16', []);
    const bytes = header.toBuffer();
    const dataAt = findChunk(bytes, 'data');
    if (dataAt < 0 || dataAt + 8 !== bytes.length) throw new Error(`WavWriter: unexpected header layout from wavefile (data chunk at ${dataAt} of ${bytes.length})`);
    const file = await open(path, 'w');
    await file.write(bytes, 0, bytes.length, 0);
    return new WavWriter(path, file, { sampleRate, channels, format }, dataAt + 4, bytes.length);
  }

  /** Appends interleaved samples (a multiple of `channels`). */
  async write(samples: Float32Array): Promise<void> {
    if (this.closed) throw new Error(`WavWriter: ${this.path} is closed`);
    if (samples.length % this.options.channels !== 0) {
      throw new RangeError(`WavWriter.write: ${samples.length} samples is not a multiple of ${this.options.channels} channels`);
    }
    const bytes = encodePcm(samples, this.options.format);
    await this.file.write(bytes, 0, bytes.length, this.position);
    this.position += bytes.length;
    this.frames += samples.length / this.options.channels;
  }

  /** Writes the final sizes into the header and closes the file. */
  async close(): Promise<{ frames: number; bytes: number }> {
    if (this.closed) return { frames: this.frames, bytes: this.position };
    this.closed = true;
    try {
      const size = Buffer.alloc(4);
      size.writeUInt32LE(this.position - 8, 0);
      await this.file.write(size, 0, 4, 4); // RIFF chunk size
      size.writeUInt32LE(this.position - this.dataSizeOffset - 4, 0);
      await this.file.write(size, 0, 4, this.dataSizeOffset); // data chunk size
    } finally {
      await this.file.close();
    }
    return { frames: this.frames, bytes: this.position };
  }
}

function findChunk(bytes: Uint8Array, id: string): number {
  let at = 12; // after "RIFF" <size> "WAVE"
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  while (at + 8 <= bytes.length) {
    const name = String.fromCharCode(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
    if (name === id) return at;
    at += 8 + view.getUint32(at + 4, true) + (view.getUint32(at + 4, true) & 1);
  }
  return -1;
}

/**
 * Writes audio packets to a WAV file; resolves with the frames written once the header is final.
 *
 * ```ts
 * await writeWav(decodeAudio('talk.mp3'), 'talk.wav', { format: 's16' });
 * ```
 */
export async function writeWav(packets: AsyncIterable<AudioPacket> | Iterable<AudioPacket>, path: string, o: { format?: WavSampleFormat } = {}): Promise<{ frames: number; bytes: number }> {
  let writer: WavWriter | undefined;
  try {
    for await (const p of packets) {
      writer ??= await WavWriter.create(path, { sampleRate: p.sampleRate, channels: p.channels, format: o.format });
      if (p.sampleRate !== writer.options.sampleRate || p.channels !== writer.options.channels) {
        throw new Error(`writeWav: packet at pts ${p.pts} is ${p.sampleRate} Hz ${p.channels} ch but ${path} is ${writer.options.sampleRate} Hz ${writer.options.channels} ch`);
      }
      await writer.write(p.samples);
    }
  } finally {
    if (writer) await writer.close();
  }
  if (!writer) throw new Error(`writeWav: no audio packets to write to ${path}`);
  return writer.close();
}
