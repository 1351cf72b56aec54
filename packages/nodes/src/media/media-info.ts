/**
 * What ffmpeg says about its inputs and outputs, parsed from its stderr (`Input #0 …`, `Stream #0:1: Audio: …`).
 * No ffprobe is needed: the bundled binary ships without one, and every decode prints this anyway.
 */

export interface MediaStreamInfo {
  /** Stream index within its file (`Stream #0:<index>`). */
  readonly index: number;
  readonly type: 'audio' | 'video' | 'subtitle' | 'data' | 'attachment';
  /** Codec name as ffmpeg prints it first (`aac`, `h264`, `pcm_s16le`, `rawvideo`). */
  readonly codec: string;
  readonly language?: string;
  readonly sampleRate?: number;
  readonly channels?: number;
  readonly width?: number;
  readonly height?: number;
  /** Frame rate (`fps`, else `tbr`). */
  readonly fps?: number;
}

export interface MediaFileInfo {
  /** Container as ffmpeg names it (`wav`, `mov,mp4,m4a,3gp,3g2,mj2`, `f32le`). */
  readonly format: string;
  /** Seconds, when ffmpeg knows it (`Duration: N/A` for most pipes). */
  readonly durationSeconds?: number;
  readonly startSeconds?: number;
  readonly streams: MediaStreamInfo[];
}

export interface MediaInfo {
  readonly inputs: MediaFileInfo[];
  readonly outputs: MediaFileInfo[];
}

const LAYOUT_CHANNELS: Record<string, number> = {
  mono: 1, stereo: 2, '2.1': 3, '3.0': 3, '3.0(back)': 3, quad: 4, '4.0': 4, 'quad(side)': 4, '4.1': 5, '5.0': 5, '5.0(side)': 5,
  '5.1': 6, '5.1(side)': 6, '6.0': 6, '6.1': 7, '7.0': 7, '7.1': 8, '7.1(wide)': 8, downmix: 2,
};

const seconds = (hms: string): number | undefined => {
  const m = /^(\d+):(\d\d):(\d\d(?:\.\d+)?)$/.exec(hms);
  return m ? Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3]) : undefined;
};

/**
 * Parses one `Stream #…` line; undefined if the line is something else.
 *
 * ```ts
 * parseStreamLine('  Stream #0:1(und): Audio: aac (LC), 44100 Hz, stereo, fltp'); // { index: 1, type: 'audio', codec: 'aac', sampleRate: 44100, channels: 2 }
 * ```
 */
export function parseStreamLine(line: string): MediaStreamInfo | undefined {
  const m = /^\s*Stream #\d+:(\d+)(?:\[0x[0-9a-f]+\])?(?:\(([^)]*)\))?(?:\[0x[0-9a-f]+\])?: (Audio|Video|Subtitle|Data|Attachment): (.*)$/.exec(line);
  if (!m) return undefined;
  const [, index, language, kind, details] = m;
  const type = kind.toLowerCase() as MediaStreamInfo['type'];
  const codec = details.split(/[\s,]/)[0];
  const base = { index: Number(index), type, codec, ...(language && language !== 'und' ? { language } : {}) };
  if (type === 'audio') {
    const rate = /(\d+) Hz/.exec(details);
    const parts = details.split(', ').map((s) => s.trim());
    const hzAt = parts.findIndex((p) => / Hz$/.test(p));
    const layout = hzAt >= 0 ? parts[hzAt + 1] : undefined;
    const counted = layout ? /^(\d+) channels/.exec(layout) : null;
    const channels = counted ? Number(counted[1]) : layout ? LAYOUT_CHANNELS[layout.replace(/\s.*$/, '')] : undefined;
    return { ...base, ...(rate ? { sampleRate: Number(rate[1]) } : {}), ...(channels ? { channels } : {}) };
  }
  if (type === 'video') {
    // ", 320x240" — anchored on the comma so codec tags like "0x31637661" do not match.
    const size = /, (\d{1,5})x(\d{1,5})(?=[\s,[]|$)/.exec(details);
    const fps = /, ([\d.]+)(k?) fps/.exec(details) ?? /, ([\d.]+)(k?) tbr/.exec(details);
    return {
      ...base,
      ...(size ? { width: Number(size[1]), height: Number(size[2]) } : {}),
      ...(fps ? { fps: Number(fps[1]) * (fps[2] ? 1000 : 1) } : {}),
    };
  }
  return base;
}

/**
 * Incremental parser for ffmpeg's stderr. Feed it lines as they come; `info` is what is known so far.
 *
 * ```ts
 * const p = new FfmpegStderrParser();
 * for (const line of stderr.split('\n')) p.feed(line);
 * p.info.inputs[0].streams; // [{ index: 0, type: 'audio', codec: 'pcm_s16le', sampleRate: 48000, channels: 2 }]
 * ```
 */
export class FfmpegStderrParser {
  readonly info: { inputs: Array<{ format: string; durationSeconds?: number; startSeconds?: number; streams: MediaStreamInfo[] }>; outputs: Array<{ format: string; streams: MediaStreamInfo[] }> } = {
    inputs: [],
    outputs: [],
  };
  /** The last lines seen, for error messages. */
  readonly tail: string[] = [];
  private section: 'none' | 'input' | 'output' | 'other' = 'none';
  private readonly outputListeners: Array<(s: MediaStreamInfo) => void> = [];

  /** Calls `fn` with each output stream as soon as its line is seen (the output header precedes any data). */
  onOutputStream(fn: (s: MediaStreamInfo) => void): void {
    this.outputListeners.push(fn);
  }

  feed(line: string): void {
    if (line.trim() === '') return;
    this.tail.push(line);
    if (this.tail.length > 40) this.tail.shift();
    const input = /^Input #\d+, (.*), from '.*':\s*$/.exec(line);
    if (input) {
      this.section = 'input';
      this.info.inputs.push({ format: input[1], streams: [] });
      return;
    }
    const output = /^Output #\d+, ([^,]*), to '.*':\s*$/.exec(line);
    if (output) {
      this.section = 'output';
      this.info.outputs.push({ format: output[1], streams: [] });
      return;
    }
    if (/^\S/.test(line)) {
      this.section = 'other';
      return;
    }
    if (this.section === 'input') {
      const file = this.info.inputs[this.info.inputs.length - 1];
      const d = /^\s*Duration: ([^,]+), start: ([-\d.]+)/.exec(line) ?? /^\s*Duration: ([^,]+)/.exec(line);
      if (d) {
        const dur = seconds(d[1]);
        if (dur !== undefined) file.durationSeconds = dur;
        if (d[2] !== undefined) file.startSeconds = Number(d[2]);
        return;
      }
      const s = parseStreamLine(line);
      if (s) file.streams.push(s);
    } else if (this.section === 'output') {
      const s = parseStreamLine(line);
      if (s) {
        this.info.outputs[this.info.outputs.length - 1].streams.push(s);
        for (const fn of this.outputListeners) fn(s);
      }
    }
  }

  /** Short description of the input streams, e.g. `video h264 320x240 25fps, audio aac 44100Hz 1ch`. */
  describeInputStreams(): string {
    const streams = this.info.inputs.flatMap((i) => i.streams);
    if (streams.length === 0) return 'no streams';
    return streams.map(describeStream).join(', ');
  }
}

/**
 * One-line description of a stream.
 *
 * ```ts
 * describeStream({ index: 0, type: 'video', codec: 'h264', width: 320, height: 240, fps: 25 }); // 'video h264 320x240 25fps'
 * ```
 */
export function describeStream(s: MediaStreamInfo): string {
  const parts: string[] = [s.type, s.codec];
  if (s.width && s.height) parts.push(`${s.width}x${s.height}`);
  if (s.fps) parts.push(`${s.fps}fps`);
  if (s.sampleRate) parts.push(`${s.sampleRate}Hz`);
  if (s.channels) parts.push(`${s.channels}ch`);
  return parts.join(' ');
}
