import * as tf from '@tensorflow/tfjs-core';

/*
 * The wasm backend (tfjs-backend-wasm 4.22) has no kernels for two ops that only gradients use: UnsortedSegmentSum
 * (the gradient of every tf.gather: embedding rows, the encoder's valid-row gather, MoE token grouping) and
 * Conv2DBackpropFilter (the gradient of the audio tower's conv filters). Both are registered here for 'wasm' so
 * training can run over the same forward code the nodes run. The cpu backend has its own and is left alone.
 */

interface WasmBackendLike {
  readSync(dataId: object): tf.backend_util.BackendValues;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
}

let registered = false;

/**
 * Registers UnsortedSegmentSum and Conv2DBackpropFilter for the wasm backend, and gradients of BatchMatMul, Unpack and SplitV
 * that suit it (once; later calls do nothing). Call after registerTfjsGradients, before computing gradients.
 *
 * ```ts
 * await initBackend();
 * registerWasmGradientKernels();
 * const g = tf.grad((x) => tf.sum(tf.gather(x, [0, 0, 2])))(tf.tensor1d([1, 2, 3])); // [2, 0, 1]
 * ```
 */
export function registerWasmGradientKernels(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: 'UnsortedSegmentSum', backendName: 'wasm', kernelFunc: unsortedSegmentSum as unknown as tf.KernelFunc });
  tf.registerKernel({ kernelName: 'Conv2DBackpropFilter', backendName: 'wasm', kernelFunc: conv2dBackpropFilter as unknown as tf.KernelFunc });
  tf.registerGradient({ kernelName: 'BatchMatMul', inputsToSave: ['a', 'b'], gradFunc: batchMatMulGrad as unknown as tf.GradFunc });
  // tfjs's Unpack and SplitV gradients take `dy` as an array, but the tape passes a lone tensor when the op had one
  // output (one KV head; a batch of one clip split per clip): treat it as a one-element list.
  const list = (dy: tf.Tensor | tf.Tensor[]) => (Array.isArray(dy) ? dy : [dy]);
  tf.registerGradient({
    kernelName: 'Unpack',
    gradFunc: ((dy: tf.Tensor | tf.Tensor[], _saved: tf.Tensor[], attrs: { axis: number }) => ({ value: () => tf.stack(list(dy), attrs.axis) })) as unknown as tf.GradFunc,
  });
  tf.registerGradient({
    kernelName: 'SplitV',
    gradFunc: ((dy: tf.Tensor | tf.Tensor[], _saved: tf.Tensor[], attrs: { axis: number }) => ({ x: () => tf.concat(list(dy), attrs.axis) })) as unknown as tf.GradFunc,
  });
}

/**
 * The gradient of C = op(A)·op(B) with every product untransposed. tfjs's own gradient multiplies with transposeA /
 * transposeB set, which the wasm backend runs as a scalar loop (~7x slower than XNNPACK's GEMM, and most of a training
 * step); an explicit transpose copy first is cheap next to that. Batched operands must have equal batch shapes.
 */
function batchMatMulGrad(dy: tf.Tensor, saved: tf.Tensor[], attrs: { transposeA: boolean; transposeB: boolean }) {
  const [a, b] = saved as [tf.Tensor, tf.Tensor];
  const T = (t: tf.Tensor) => (t.rank === 2 ? tf.transpose(t) : tf.transpose(t, [...t.shape.slice(0, -2).map((_, i) => i), t.rank - 1, t.rank - 2]));
  if (a.rank !== b.rank || a.shape.slice(0, -2).some((d, i) => d !== b.shape[i])) {
    throw new Error(`BatchMatMul gradient (training): operands [${a.shape}] and [${b.shape}] must have equal batch shapes`);
  }
  const { transposeA: ta, transposeB: tb } = attrs;
  return {
    a: () => (!ta ? tf.matMul(dy, tb ? b : T(b)) : tf.matMul(tb ? T(b) : b, T(dy))),
    b: () => (!tb ? tf.matMul(ta ? a : T(a), dy) : tf.matMul(T(dy), ta ? T(a) : a)),
  };
}

/** out[s, ...] = Σ over i with segmentIds[i] = s of x[i, ...]; rows with an id outside [0, numSegments) are dropped. */
function unsortedSegmentSum(args: { inputs: { x: tf.TensorInfo; segmentIds: tf.TensorInfo }; backend: WasmBackendLike; attrs: { numSegments: number } }): tf.TensorInfo {
  const { x, segmentIds } = args.inputs;
  const { numSegments } = args.attrs;
  if (x.dtype !== 'float32') throw new Error(`UnsortedSegmentSum (wasm, training): only float32 data is supported, got ${x.dtype}`);
  const data = args.backend.readSync(x.dataId) as Float32Array;
  const ids = args.backend.readSync(segmentIds.dataId) as Int32Array;
  const rows = ids.length;
  const inner = rows === 0 ? 0 : data.length / rows;
  const shape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
  const out = args.backend.makeOutput(shape, 'float32');
  const o = args.backend.typedArrayFromHeap(out) as Float32Array;
  o.fill(0);
  for (let r = 0; r < rows; r++) {
    const s = ids[r]!;
    if (s < 0 || s >= numSegments) continue;
    const src = r * inner, dst = s * inner;
    for (let j = 0; j < inner; j++) o[dst + j]! += data[src + j]!;
  }
  return out;
}

interface Conv2dBackpropFilterAttrs {
  strides: number | [number, number];
  pad: number | 'valid' | 'same';
  dataFormat: 'NHWC' | 'NCHW';
  filterShape: [number, number, number, number];
}

/**
 * dW[kh, kw, ci, co] = Σ_{n, oh, ow} x[n, oh·sh + kh − ph, ow·sw + kw − pw, ci] · dy[n, oh, ow, co]: the input patches
 * are laid out once on the host as a [kh·kw·ci, rows] matrix (zero where the window overhangs the padding) and
 * multiplied by dy [rows, co] in one matmul on the wasm backend (XNNPACK GEMM). A direct loop in JS would be ~30x slower
 * at the audio tower's sizes, and tfjs's strided slices on wasm are slower still.
 */
function conv2dBackpropFilter(args: { inputs: { x: tf.TensorInfo; dy: tf.TensorInfo }; backend: WasmBackendLike; attrs: Conv2dBackpropFilterAttrs }): tf.TensorInfo {
  const { x, dy } = args.inputs;
  const { strides, pad, dataFormat, filterShape } = args.attrs;
  if (dataFormat !== 'NHWC') throw new Error(`Conv2DBackpropFilter (wasm, training): only NHWC is supported, got ${dataFormat}`);
  if (typeof pad !== 'number') throw new Error(`Conv2DBackpropFilter (wasm, training): only numeric padding is supported, got '${pad}'`);
  const [sh, sw] = typeof strides === 'number' ? [strides, strides] : strides;
  const [kh, kw, ci, co] = filterShape;
  const [n, h, w] = x.shape as [number, number, number, number];
  const [, oh, ow] = dy.shape as [number, number, number, number];
  const xData = args.backend.readSync(x.dataId) as Float32Array;
  const dyData = args.backend.readSync(dy.dataId) as Float32Array;
  const rows = n * oh * ow;
  const cols = new Float32Array(kh * kw * ci * rows);
  for (let a = 0; a < kh; a++) {
    for (let b = 0; b < kw; b++) {
      for (let c = 0; c < ci; c++) {
        const base = ((a * kw + b) * ci + c) * rows;
        let r = 0;
        for (let i = 0; i < n; i++) {
          for (let y = 0; y < oh; y++) {
            const iy = y * sh + a - pad;
            if (iy < 0 || iy >= h) {
              r += ow;
              continue;
            }
            const rowBase = (i * h + iy) * w;
            for (let z = 0; z < ow; z++, r++) {
              const ix = z * sw + b - pad;
              if (ix >= 0 && ix < w) cols[base + r] = xData[(rowBase + ix) * ci + c]!;
            }
          }
        }
      }
    }
  }
  const result = tf.tidy(() => tf.matMul(tf.tensor2d(cols, [kh * kw * ci, rows]), tf.tensor2d(dyData, [rows, co])));
  const values = result.dataSync() as Float32Array;
  result.dispose();
  const out = args.backend.makeOutput([kh, kw, ci, co], 'float32');
  (args.backend.typedArrayFromHeap(out) as Float32Array).set(values);
  return out;
}
