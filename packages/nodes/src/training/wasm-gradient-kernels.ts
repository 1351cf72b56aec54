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
 * Registers UnsortedSegmentSum and Conv2DBackpropFilter for the wasm backend, a faster Conv2DBackpropInput, and
 * gradients of BatchMatMul, Unpack and SplitV that suit it (once; later calls do nothing). Call after
 * registerTfjsGradients, once the wasm backend is loaded (initBackend, loadQwen3Omni) and before computing gradients;
 * it throws if the backend's kernels are not registered yet (they would replace the faster Conv2DBackpropInput).
 *
 * ```ts
 * await initBackend();
 * registerWasmGradientKernels();
 * const g = tf.grad((x) => tf.sum(tf.gather(x, [0, 0, 2])))(tf.tensor1d([1, 2, 3])); // [2, 0, 1]
 * ```
 */
export function registerWasmGradientKernels(): void {
  if (registered) return;
  const original = tf.getKernel('Conv2DBackpropInput', 'wasm');
  if (!original) throw new Error('registerWasmGradientKernels: the wasm backend is not loaded yet (call initBackend() or load the model first)');
  registered = true;
  tf.registerKernel({ kernelName: 'UnsortedSegmentSum', backendName: 'wasm', kernelFunc: unsortedSegmentSum as unknown as tf.KernelFunc });
  tf.registerKernel({ kernelName: 'Conv2DBackpropFilter', backendName: 'wasm', kernelFunc: conv2dBackpropFilter as unknown as tf.KernelFunc });
  // tfjs-backend-wasm's own Conv2DBackpropInput is a scalar loop (~0.7 GMAC/s here); strided NHWC cases go through
  // XNNPACK's forward convolution instead (conv2dBackpropInputByPhases), anything else to the original.
  tf.unregisterKernel('Conv2DBackpropInput', 'wasm');
  tf.registerKernel({ ...original, kernelFunc: ((args: Parameters<typeof conv2dBackpropInputByPhases>[0]) => conv2dBackpropInputByPhases(args) ?? original.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0])) as unknown as tf.KernelFunc });
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
 * are laid out once on the host as a [kh·kw·ci, rows] matrix (zero where the window overhangs the padding; one pass
 * over x per tap, reading each pixel's ci channels together) and multiplied by dy [rows, co] in one matmul on the wasm
 * backend (XNNPACK GEMM, whose packed right operand is then the small dy). A direct loop in JS would be ~30x slower
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
      const base = (a * kw + b) * ci * rows;
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
            if (ix < 0 || ix >= w) continue;
            const src = (rowBase + ix) * ci;
            for (let c = 0; c < ci; c++) cols[base + c * rows + r] = xData[src + c]!;
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

interface Conv2dBackpropInputAttrs {
  strides: number | [number, number];
  pad: number | 'valid' | 'same';
  dataFormat: 'NHWC' | 'NCHW';
  dilations?: number | [number, number];
  inputShape: [number, number, number, number];
}

/**
 * dx of a strided convolution as stride² forward convolutions, one per output phase: the input rows iy = s·q + r (and
 * likewise columns) receive dy[q + t] through filter tap a = r + pad − s·t only, so phase (ry, rx) is a stride-1
 * 'valid' convolution of a padded window of dy with the taps it uses (swapped in/out channels), and the phases
 * interleave into dx. The same multiply-adds as the direct sum, on XNNPACK. Returns undefined for what it does not
 * cover (NCHW, string padding, dilation), which the original kernel then computes.
 */
function conv2dBackpropInputByPhases(args: { inputs: { dy: tf.TensorInfo; filter: tf.TensorInfo }; backend: WasmBackendLike; attrs: Conv2dBackpropInputAttrs }): tf.TensorInfo | undefined {
  const { dy, filter } = args.inputs;
  const { strides, pad, dataFormat, inputShape, dilations = 1 } = args.attrs;
  const dil = typeof dilations === 'number' ? [dilations, dilations] : dilations;
  if (dataFormat !== 'NHWC' || typeof pad !== 'number' || dil[0] !== 1 || dil[1] !== 1 || dy.dtype !== 'float32') return undefined;
  const [sh, sw] = typeof strides === 'number' ? [strides, strides] : strides;
  const [kh, kw, ci, co] = filter.shape as [number, number, number, number];
  const [n, h, w] = inputShape;
  const [, oh, ow] = dy.shape as [number, number, number, number];
  const dyData = args.backend.readSync(dy.dataId) as Float32Array;
  const fData = args.backend.readSync(filter.dataId) as Float32Array;
  const Qy = Math.ceil(h / sh), Qx = Math.ceil(w / sw);
  // Offsets t of dy rows feeding phase r: tap a = r + pad − s·t must lie in [0, k).
  const taps = (r: number, s: number, k: number) => {
    const lo = Math.ceil((r + pad - k + 1) / s), hi = Math.floor((r + pad) / s);
    return { lo, hi, count: Math.max(0, hi - lo + 1) };
  };
  // Host copies of the phases' outputs (gathered outside tidy's return value, which it would walk element by element).
  const phases: Float32Array[] = [];
  tf.tidy(() => {
    const dyT = tf.tensor4d(dyData, [n, oh, ow, co]);
    const phase = (ry: number, rx: number): tf.Tensor4D => {
      const ty = taps(ry, sh, kh), tx = taps(rx, sw, kw);
      if (ty.count === 0 || tx.count === 0) return tf.zeros([n, Qy, Qx, ci]);
      // Filter [ty, tx, co, ci]: tap (lo + j, lo + l) of the phase is W[a, b, :, :] transposed.
      const wp = new Float32Array(ty.count * tx.count * co * ci);
      for (let j = 0; j < ty.count; j++) {
        const a = ry + pad - sh * (ty.lo + j);
        for (let l = 0; l < tx.count; l++) {
          const b = rx + pad - sw * (tx.lo + l);
          for (let c = 0; c < ci; c++) for (let o = 0; o < co; o++) wp[((j * tx.count + l) * co + o) * ci + c] = fData[((a * kw + b) * ci + c) * co + o]!;
        }
      }
      // dy rows lo … Qy − 1 + hi (zeros outside [0, oh)), likewise columns.
      const before = [Math.max(0, -ty.lo), Math.max(0, -tx.lo)];
      const after = [Math.max(0, Qy - 1 + ty.hi - (oh - 1)), Math.max(0, Qx - 1 + tx.hi - (ow - 1))];
      const padded = tf.pad(dyT, [[0, 0], [before[0]!, after[0]!], [before[1]!, after[1]!], [0, 0]]);
      const window = tf.slice(padded, [0, ty.lo + before[0]!, tx.lo + before[1]!, 0], [n, Qy + ty.count - 1, Qx + tx.count - 1, co]);
      return tf.conv2d(window, tf.tensor4d(wp, [ty.count, tx.count, co, ci]), 1, 'valid');
    };
    for (let p = 0; p < sh * sw; p++) phases.push(phase(Math.floor(p / sw), p % sw).dataSync() as Float32Array);
  });
  // Interleave on the host: phase (ry, rx) row qy, column qx is dx row s·qy + ry, column s·qx + rx (inside the input).
  const out = args.backend.makeOutput([n, h, w, ci], 'float32');
  const dx = args.backend.typedArrayFromHeap(out) as Float32Array;
  for (let ry = 0; ry < sh; ry++) {
    for (let rx = 0; rx < sw; rx++) {
      const src = phases[ry * sw + rx]!;
      for (let i = 0; i < n; i++) {
        for (let qy = 0, iy = ry; iy < h; qy++, iy += sh) {
          for (let qx = 0, ix = rx; ix < w; qx++, ix += sw) {
            const from = ((i * Qy + qy) * Qx + qx) * ci, to = ((i * h + iy) * w + ix) * ci;
            for (let c = 0; c < ci; c++) dx[to + c] = src[from + c]!;
          }
        }
      }
    }
  }
  return out;
}
