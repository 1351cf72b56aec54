import { videoPacket, MICROS_PER_SECOND, type VideoPacket } from '@omniflow/core';
import { fixedChunks } from './byte-chunks.js';
import { MediaError, type MediaInput } from './ffmpeg-process.js';
import { mediaDecode, type DecodeInputOptions, type MediaDecode } from './media-decode.js';
import type { MediaStreamInfo } from './media-info.js';

export interface DecodeVideoOptions extends DecodeInputOptions {
  /** Sample frames at this rate (ffmpeg's `fps` filter). Default: the stream's own rate. */
  readonly fps?: number;
  /** Scale down (never up) so that the longer side is at most this many pixels, keeping the aspect (even sizes). */
  readonly maxSize?: number;
  /** Scale to exactly this size (wins over maxSize), e.g. a smart_resize result. */
  readonly size?: { readonly width: number; readonly height: number };
  /** ffmpeg scaler used for resizing. Default `bicubic` (what the Qwen2-VL processor uses). */
  readonly scaler?: 'bicubic' | 'bilinear' | 'area' | 'lanczos' | 'neighbor';
}

/**
 * Decodes the first video stream of any input ffmpeg reads into rgb24 {@link VideoPacket}s, sampled at `fps` and
 * scaled by `maxSize`/`size`. Pull-based like {@link decodeAudio}; frame k has pts `startPts + k / fps`.
 *
 * ```ts
 * for await (const f of decodeVideo('clip.mp4', { fps: 2, maxSize: 448 })) {
 *   console.log(f.index, f.pts, `${f.width}x${f.height}`);
 * }
 * ```
 */
export function decodeVideo(input: MediaInput, options: DecodeVideoOptions = {}): MediaDecode<VideoPacket> {
  const { fps, maxSize, size } = options;
  if (fps !== undefined && !(fps > 0)) throw new RangeError(`decodeVideo: option fps must be positive, got ${fps}`);
  if (maxSize !== undefined && !(Number.isInteger(maxSize) && maxSize >= 2)) throw new RangeError(`decodeVideo: option maxSize must be an integer >= 2, got ${maxSize}`);
  if (size && !(Number.isInteger(size.width) && Number.isInteger(size.height) && size.width > 0 && size.height > 0)) {
    throw new RangeError(`decodeVideo: option size must have positive integer width and height, got ${JSON.stringify(size)}`);
  }
  const flags = options.scaler ?? 'bicubic';
  const filters: string[] = [];
  if (fps !== undefined) filters.push(`fps=${fps}`);
  if (size) filters.push(`scale=${size.width}:${size.height}:flags=${flags}`);
  else if (maxSize !== undefined) {
    // Longer side clamped to maxSize; -2 keeps the aspect with an even size. Commas inside '' are not filter separators.
    filters.push(`scale=w='if(gte(iw,ih),min(iw,${maxSize}),-2)':h='if(gte(iw,ih),-2,min(ih,${maxSize}))':flags=${flags}`);
  }
  return mediaDecode(
    'decodeVideo',
    input,
    options,
    'video',
    ['-map', '0:v:0', '-an', '-sn', '-dn', ...(filters.length ? ['-vf', filters.join(',')] : []), '-pix_fmt', 'rgb24', '-flush_packets', '1', '-f', 'rawvideo'],
    async function* ({ proc, out, reportInfo }) {
      // ffmpeg prints the output header (with the frame size) before it writes the first frame.
      const s = await new Promise<MediaStreamInfo | undefined>((resolve) => {
        proc.stderr.onOutputStream((stream) => stream.type === 'video' && resolve(stream));
        void proc.done.then(() => resolve(undefined), () => resolve(undefined));
      });
      reportInfo();
      if (!s) return;
      if (!s.width || !s.height) throw new MediaError('ffmpeg-failed', `decodeVideo: could not read the output frame size from ffmpeg's stream line for ${JSON.stringify(String(input))}`);
      const rate = fps ?? s.fps;
      if (!rate) throw new MediaError('ffmpeg-failed', `decodeVideo: the input has no frame rate; pass options.fps`);
      const frameBytes = s.width * s.height * 3;
      let index = 0;
      for await (const data of fixedChunks(out, frameBytes)) {
        if (data.length < frameBytes) break; // a torn last frame (ffmpeg killed mid-write) is not a frame
        yield videoPacket({
          data,
          width: s.width,
          height: s.height,
          format: 'rgb24',
          index,
          pts: (options.startPts ?? 0) + (index * MICROS_PER_SECOND) / rate,
          duration: MICROS_PER_SECOND / rate,
          session: options.session,
          turn: options.turn,
        });
        index++;
      }
    },
  );
}
