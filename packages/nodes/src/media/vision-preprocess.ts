/**
 * Image and video preprocessing for the Qwen3-Omni vision encoder (Qwen2VLImageProcessor and the Qwen3-VL video
 * processor, spec/qwen3-omni.md §5.2–5.3): smart_resize to multiples of patch·merge within min/max pixels, rescale and
 * normalise, temporal patching, and the Qwen2-VL patch layout that the encoder's Conv3d patch embedding expects.
 */

/** Something with rgb24 HWC pixels: an ImagePacket, a VideoPacket or a plain object. */
export interface RgbImage {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
}

export interface VisionPreprocessOptions {
  /** Spatial patch side. Default 16 (the released model; the tiny fixture uses 8). */
  readonly patchSize?: number;
  /** Frames per temporal patch. Default 2. */
  readonly temporalPatchSize?: number;
  /** Spatial merge (patches per side merged into one token). Default 2. */
  readonly mergeSize?: number;
  /** Lower bound on resized pixels per frame. Default 3136 for images, 131 072 (128·32·32) for video. */
  readonly minPixels?: number;
  /** Upper bound on resized pixels per frame. Default 12 845 056 for images, 786 432 (768·32·32) for video. */
  readonly maxPixels?: number;
  /** Per-channel mean after rescaling. Default [0.5, 0.5, 0.5]. */
  readonly imageMean?: readonly [number, number, number];
  /** Per-channel std after rescaling. Default [0.5, 0.5, 0.5]. */
  readonly imageStd?: readonly [number, number, number];
  /** Default 1/255. */
  readonly rescaleFactor?: number;
  /** Resize with smart_resize (default true). When false the size must already be a multiple of patch·merge. */
  readonly resize?: boolean;
}

/** What the vision encoder consumes: `pixel_values` [rows, cols] and `grid_thw`. */
export interface VisionInput {
  /** Row-major [rows, cols] = [t·h·w patches, 3·temporalPatch·patch·patch]. */
  readonly pixelValues: Float32Array;
  readonly shape: readonly [number, number];
  /** Patch grid [t, h, w]. */
  readonly gridThw: readonly [number, number, number];
  /** Tokens the thinker sees for this input: t·h·w / merge². */
  readonly tokens: number;
  /** Resized frame size. */
  readonly width: number;
  readonly height: number;
}

/** A video input also carries its sampling rate, so audio and video positions line up (MRoPE time axis). */
export interface VideoVisionInput extends VisionInput {
  /** Frames per second at which the frames were sampled. */
  readonly fps: number;
  /** temporalPatchSize / fps: seconds covered by one temporal grid step (HF's `video_second_per_grid`). */
  readonly secondPerGrid: number;
}

const IMAGE_PIXELS = { min: 3136, max: 12_845_056 };
const VIDEO_PIXELS = { min: 128 * 32 * 32, max: 768 * 32 * 32 };

// Python's round(): halves go to the even neighbour. smart_resize relies on it (round(2.5) == 2).
const roundHalfEven = (x: number): number => {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
};

/**
 * Qwen2-VL's resize rule: both sides multiples of `factor` (patch·merge), aspect kept, area within
 * [minPixels, maxPixels]. Throws for aspect ratios of 200 or more, like the reference.
 *
 * ```ts
 * smartResize(1080, 1920, { factor: 32, minPixels: 3136, maxPixels: 12_845_056 }); // { height: 1088, width: 1920 }
 * ```
 */
export function smartResize(height: number, width: number, o: { factor: number; minPixels: number; maxPixels: number }): { height: number; width: number } {
  const { factor, minPixels, maxPixels } = o;
  if (!(height > 0 && width > 0)) throw new RangeError(`smartResize: height and width must be positive, got ${height}x${width}`);
  if (Math.max(height, width) / Math.min(height, width) > 200) {
    throw new RangeError(`smartResize: absolute aspect ratio must be smaller than 200, got ${Math.max(height, width) / Math.min(height, width)} (${width}x${height})`);
  }
  let h = Math.max(factor, roundHalfEven(height / factor) * factor);
  let w = Math.max(factor, roundHalfEven(width / factor) * factor);
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return { height: h, width: w };
}

// Bicubic kernel with a = -0.5, as PIL (the HF image processor's resampler) uses it.
const cubic = (x: number): number => {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
};

/** Per output index: first input index and normalised weights, PIL's antialiased (support grows on downscale) scheme. */
function resampleWeights(inSize: number, outSize: number): { start: Int32Array; count: Int32Array; weights: Float32Array; taps: number } {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 2 * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float32Array(outSize * taps);
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const lo = Math.max(0, Math.floor(center - support + 0.5));
    const hi = Math.min(inSize, Math.floor(center + support + 0.5));
    let sum = 0;
    for (let x = lo; x < hi; x++) sum += cubic((x - center + 0.5) / filterScale);
    for (let x = lo; x < hi; x++) weights[i * taps + (x - lo)] = sum ? cubic((x - center + 0.5) / filterScale) / sum : 0;
    start[i] = lo;
    count[i] = hi - lo;
  }
  return { start, count, weights, taps };
}

const clip8 = (v: number): number => (v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v));

/**
 * Resizes rgb24 pixels with PIL-style antialiased bicubic (horizontal pass, then vertical, 8-bit in between).
 *
 * ```ts
 * const small = resizeRgb(img.data, 1920, 1080, 448, 256); // Uint8Array(448 * 256 * 3)
 * ```
 */
export function resizeRgb(src: Uint8Array, width: number, height: number, newWidth: number, newHeight: number): Uint8Array {
  if (src.length !== width * height * 3) throw new RangeError(`resizeRgb: ${src.length} bytes is not ${width}x${height} rgb24`);
  if (newWidth === width && newHeight === height) return src;
  const hw = resampleWeights(width, newWidth);
  const tmp = new Uint8Array(newWidth * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < newWidth; x++) {
      let r = 0, g = 0, b = 0;
      const s = hw.start[x];
      for (let k = 0; k < hw.count[x]; k++) {
        const w = hw.weights[x * hw.taps + k];
        const p = (y * width + s + k) * 3;
        r += w * src[p]; g += w * src[p + 1]; b += w * src[p + 2];
      }
      const o = (y * newWidth + x) * 3;
      tmp[o] = clip8(r); tmp[o + 1] = clip8(g); tmp[o + 2] = clip8(b);
    }
  }
  const vw = resampleWeights(height, newHeight);
  const out = new Uint8Array(newWidth * newHeight * 3);
  for (let y = 0; y < newHeight; y++) {
    const s = vw.start[y];
    for (let x = 0; x < newWidth; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < vw.count[y]; k++) {
        const w = vw.weights[y * vw.taps + k];
        const p = ((s + k) * newWidth + x) * 3;
        r += w * tmp[p]; g += w * tmp[p + 1]; b += w * tmp[p + 2];
      }
      const o = (y * newWidth + x) * 3;
      out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b);
    }
  }
  return out;
}

interface Resolved {
  patch: number;
  tps: number;
  merge: number;
  lut: Float32Array[]; // per channel: uint8 value -> normalised float
}

function resolveOptions(o: VisionPreprocessOptions): Resolved {
  const patch = o.patchSize ?? 16;
  const tps = o.temporalPatchSize ?? 2;
  const merge = o.mergeSize ?? 2;
  for (const [k, v] of Object.entries({ patchSize: patch, temporalPatchSize: tps, mergeSize: merge })) {
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`visionPreprocess: ${k} must be a positive integer, got ${v}`);
  }
  const mean = o.imageMean ?? [0.5, 0.5, 0.5];
  const std = o.imageStd ?? [0.5, 0.5, 0.5];
  const rescale = o.rescaleFactor ?? 1 / 255;
  if (std.some((s) => !(s > 0))) throw new RangeError(`visionPreprocess: imageStd must be positive, got [${std.join(', ')}]`);
  const lut = [0, 1, 2].map((c) => Float32Array.from({ length: 256 }, (_, v) => (v * rescale - mean[c]) / std[c]));
  return { patch, tps, merge, lut };
}

/**
 * The Qwen2-VL patch layout over already-sized frames: frames are grouped in temporal patches (the last frame
 * repeated to fill a group), then `reshape(gt, tps, C, gh/m, m, p, gw/m, m, p).transpose(0,3,6,4,7,2,1,5,8)` —
 * rows in spatial-merge-block order, columns (channel, frame, row, col).
 *
 * ```ts
 * const v = patchify([frame0, frame1], { patchSize: 16 }); // v.shape = [h/16 * w/16, 1536]
 * ```
 */
export function patchify(frames: readonly RgbImage[], options: VisionPreprocessOptions = {}): VisionInput {
  const { patch, tps, merge, lut } = resolveOptions(options);
  if (frames.length === 0) throw new RangeError('patchify: need at least one frame');
  const { width: W, height: H } = frames[0];
  const factor = patch * merge;
  frames.forEach((f, i) => {
    if (f.width !== W || f.height !== H) throw new RangeError(`patchify: frame ${i} is ${f.width}x${f.height}, frame 0 is ${W}x${H}; all frames must share one size`);
    if (f.data.length !== W * H * 3) throw new RangeError(`patchify: frame ${i} has ${f.data.length} bytes, expected ${W}x${H}x3 rgb24`);
  });
  if (W % factor !== 0 || H % factor !== 0) {
    throw new RangeError(`patchify: frame size ${W}x${H} must be a multiple of patchSize*mergeSize = ${factor} on both sides (resize with smartResize first)`);
  }
  const gt = Math.ceil(frames.length / tps);
  const gh = H / patch;
  const gw = W / patch;
  const cols = 3 * tps * patch * patch;
  const rows = gt * gh * gw;
  const out = new Float32Array(rows * cols);
  let o = 0;
  for (let g = 0; g < gt; g++) {
    for (let bh = 0; bh < gh / merge; bh++) {
      for (let bw = 0; bw < gw / merge; bw++) {
        for (let mh = 0; mh < merge; mh++) {
          for (let mw = 0; mw < merge; mw++) {
            const y0 = (bh * merge + mh) * patch;
            const x0 = (bw * merge + mw) * patch;
            for (let c = 0; c < 3; c++) {
              const table = lut[c];
              for (let t = 0; t < tps; t++) {
                // Reference pads a short last group by repeating the last frame.
                const frame = frames[Math.min(g * tps + t, frames.length - 1)].data;
                for (let py = 0; py < patch; py++) {
                  let p = ((y0 + py) * W + x0) * 3 + c;
                  for (let px = 0; px < patch; px++, p += 3) out[o++] = table[frame[p]];
                }
              }
            }
          }
        }
      }
    }
  }
  return { pixelValues: out, shape: [rows, cols], gridThw: [gt, gh, gw], tokens: rows / (merge * merge), width: W, height: H };
}

function sized(img: RgbImage, o: VisionPreprocessOptions, bounds: { min: number; max: number }): RgbImage {
  if (o.resize === false) return img;
  const factor = (o.patchSize ?? 16) * (o.mergeSize ?? 2);
  const { height, width } = smartResize(img.height, img.width, { factor, minPixels: o.minPixels ?? bounds.min, maxPixels: o.maxPixels ?? bounds.max });
  if (height === img.height && width === img.width) return img;
  return { data: resizeRgb(img.data, img.width, img.height, width, height), width, height };
}

/**
 * One image → `pixel_values` and `image_grid_thw` (grid_t = 1: the frame is tiled over the temporal patch).
 *
 * ```ts
 * const { pixelValues, shape, gridThw, tokens } = preprocessImage(imagePacket);
 * ```
 */
export function preprocessImage(image: RgbImage, options: VisionPreprocessOptions = {}): VisionInput {
  const img = sized(image, options, IMAGE_PIXELS);
  return patchify([img], options);
}

/**
 * Video frames sampled at `fps` → `pixel_values_videos`, `video_grid_thw` and `secondPerGrid` (temporalPatch / fps).
 * Every frame is resized to the first frame's smart_resize size; a frame count that is not a multiple of the
 * temporal patch is padded by repeating the last frame, as the reference does.
 *
 * ```ts
 * const clip = preprocessVideo(frames, { fps: 2 }); // clip.secondPerGrid === 1
 * ```
 */
export function preprocessVideo(frames: readonly RgbImage[], options: VisionPreprocessOptions & { fps: number }): VideoVisionInput {
  const { fps } = options;
  if (!(fps > 0)) throw new RangeError(`preprocessVideo: fps (the rate the frames were sampled at) must be positive, got ${fps}`);
  if (frames.length === 0) throw new RangeError('preprocessVideo: need at least one frame');
  const first = sized(frames[0], options, VIDEO_PIXELS);
  const all = frames.map((f, i) => {
    if (i === 0) return first;
    if (f.width === first.width && f.height === first.height) return f;
    return { data: resizeRgb(f.data, f.width, f.height, first.width, first.height), width: first.width, height: first.height };
  });
  const input = patchify(all, options);
  const tps = options.temporalPatchSize ?? 2;
  return { ...input, fps, secondPerGrid: tps / fps };
}
