import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, fixturePath } from '@omniflow/runtime-gpu';
import { patchify, preprocessImage, preprocessVideo, resizeRgb, smartResize } from './vision-preprocess.js';

const FIXTURE = { patchSize: 8, temporalPatchSize: 2, mergeSize: 2 } as const;

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

describe('vision preprocessing (case 3_vision_encoder pixel values)', () => {
  let cases: SafetensorsFile;
  beforeAll(() => (cases = SafetensorsFile.open(fixturePath('cases.safetensors'))));
  afterAll(() => cases.close());

  it('reproduces vision.pixel_values and image_grid_thw from the uint8 image', () => {
    const img = cases.read('vision.image_uint8_hwc'); // [32, 48, 3]
    const [h, w] = img.shape;
    const data = Uint8Array.from(img.data as ArrayLike<number>);
    const got = preprocessImage({ data, width: w, height: h }, { ...FIXTURE, resize: false });
    const ref = cases.read('vision.pixel_values');
    expect(got.shape).toEqual(ref.shape);
    expect(Array.from(got.gridThw)).toEqual(Array.from(cases.read('vision.image_grid_thw').data));
    expect(got.tokens).toBe(6);
    expect(maxAbsDiff(got.pixelValues, ref.data)).toBeLessThan(1e-6);
  });

  it('reproduces vision.pixel_values_videos and video_grid_thw from 4 uint8 frames', () => {
    const vid = cases.read('vision.video_uint8_thwc'); // [4, 32, 32, 3]
    const [t, h, w] = vid.shape;
    const bytes = Uint8Array.from(vid.data as ArrayLike<number>);
    const frames = Array.from({ length: t }, (_, i) => ({ data: bytes.subarray(i * h * w * 3, (i + 1) * h * w * 3), width: w, height: h }));
    const got = preprocessVideo(frames, { ...FIXTURE, resize: false, fps: 2 });
    const ref = cases.read('vision.pixel_values_videos');
    expect(got.shape).toEqual(ref.shape);
    expect(Array.from(got.gridThw)).toEqual(Array.from(cases.read('vision.video_grid_thw').data));
    expect(got.secondPerGrid).toBe(1);
    expect(maxAbsDiff(got.pixelValues, ref.data)).toBeLessThan(1e-6);
  });

  it('pads an odd frame count by repeating the last frame', () => {
    const frame = (v: number) => ({ data: new Uint8Array(32 * 32 * 3).fill(v), width: 32, height: 32 });
    const got = patchify([frame(0), frame(255), frame(51)], FIXTURE);
    expect(got.gridThw).toEqual([2, 4, 4]);
    // Second temporal group: both frames are the last one (51 -> 51/255*2-1 = -0.6).
    const row = got.shape[1];
    const group2 = got.pixelValues.subarray(16 * row);
    expect(Math.max(...group2)).toBeCloseTo(-0.6, 6);
    expect(Math.min(...group2)).toBeCloseTo(-0.6, 6);
  });

  it('smart_resize: multiples of patch*merge, pixel bounds, Python rounding, aspect limit', () => {
    expect(smartResize(1080, 1920, { factor: 32, minPixels: 3136, maxPixels: 12_845_056 })).toEqual({ height: 1088, width: 1920 });
    // 80 / 32 = 2.5 rounds to even (2), as Python's round does.
    expect(smartResize(80, 80, { factor: 32, minPixels: 1, maxPixels: 1e9 })).toEqual({ height: 64, width: 64 });
    const big = smartResize(4000, 3000, { factor: 32, minPixels: 3136, maxPixels: 786_432 });
    expect(big.height * big.width).toBeLessThanOrEqual(786_432);
    expect(big.height % 32 + big.width % 32).toBe(0);
    expect(big).toEqual({ height: 1024, width: 768 });
    expect(smartResize(10, 10, { factor: 32, minPixels: 131_072, maxPixels: 786_432 })).toEqual({ height: 384, width: 384 });
    expect(() => smartResize(10, 2100, { factor: 32, minPixels: 1, maxPixels: 1e9 })).toThrow(/aspect ratio must be smaller than 200/);
  });

  it('resizes with antialiased bicubic: flat stays flat, a ramp stays monotone, and the image gets the smart size', () => {
    const flat = resizeRgb(new Uint8Array(100 * 60 * 3).fill(77), 100, 60, 40, 24);
    expect(new Set(flat)).toEqual(new Set([77]));
    const ramp = new Uint8Array(256 * 4 * 3);
    for (let y = 0; y < 4; y++) for (let x = 0; x < 256; x++) ramp.fill(x, (y * 256 + x) * 3, (y * 256 + x) * 3 + 3);
    const r = resizeRgb(ramp, 256, 4, 64, 4);
    for (let x = 1; x < 64; x++) expect(r[x * 3]).toBeGreaterThanOrEqual(r[(x - 1) * 3]);
    expect(Math.abs(r[32 * 3] - 130)).toBeLessThanOrEqual(2); // output pixel 32 covers inputs 128..131
    const v = preprocessImage({ data: new Uint8Array(50 * 70 * 3), width: 70, height: 50 }, { minPixels: 3136, maxPixels: 1_000_000 });
    expect([v.height, v.width]).toEqual([64, 64]);
    expect(v.gridThw).toEqual([1, 4, 4]);
    expect(() => patchify([{ data: new Uint8Array(30 * 30 * 3), width: 30, height: 30 }])).toThrow(/multiple of patchSize\*mergeSize = 32/);
  });
});
