import { FfmpegProcess, type MediaInput } from './ffmpeg-process.js';
import type { MediaFileInfo } from './media-info.js';

/**
 * Reads a file's or URL's container and streams from ffmpeg's own report (`ffmpeg -i … -t 0 -f null -`), with no
 * ffprobe and without decoding the media.
 *
 * ```ts
 * const info = await probeMedia('clip.mp4');
 * info.streams.find((s) => s.type === 'video'); // { codec: 'h264', width: 1280, height: 720, fps: 30, … }
 * ```
 */
export async function probeMedia(input: string | URL, options: { ffmpegPath?: string; inputFormat?: string } = {}): Promise<MediaFileInfo> {
  const proc = FfmpegProcess.start({
    input: input as MediaInput,
    ffmpegPath: options.ffmpegPath,
    inputOptions: options.inputFormat ? ['-f', options.inputFormat] : [],
    outputOptions: ['-t', '0', '-map', '0?', '-c', 'copy', '-f', 'null'],
    output: '-',
  });
  try {
    await proc.done;
  } catch (err) {
    // Failing after the input header was printed (e.g. a stream the null muxer refuses) still answers the question.
    if (!proc.stderr.info.inputs[0]) throw err;
  }
  const file = proc.stderr.info.inputs[0];
  if (!file) throw new Error(`probeMedia: ffmpeg printed no input description for ${String(input)}`);
  return file;
}
