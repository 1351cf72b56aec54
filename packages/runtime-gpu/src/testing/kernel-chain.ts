import * as tf from '@tensorflow/tfjs-core';
import { defineNode, graph, ports } from '@omniflow/core';
import { z } from 'zod';
import { activationKernel, biasAddKernel, matMulKernel, scaleKernel } from '../kernels.js';

/**
 * A graph of four small kernel nodes over 20 ms audio chunks ([1, 320] at 16 kHz), for the fusion
 * tests and benchmark: gain (a constant scale) → proj (320→width) → bias → relu. Weights are deterministic.
 */
export function kernelChainGraph(width = 256) {
  const weight = tf.tensor2d(Float32Array.from({ length: 320 * width }, (_, i) => Math.sin(i * 0.37) * 0.06), [320, width]);
  const bias = tf.tensor1d(Float32Array.from({ length: width }, (_, i) => Math.cos(i) * 0.05));
  const tensorIn = { x: ports.tensor() }, tensorOut = { y: ports.tensor() };
  const gain = defineNode({
    type: 'gain',
    inputs: tensorIn,
    outputs: tensorOut,
    params: z.object({ factor: z.number().default(0.5) }),
    kernel: ({ factor }) => scaleKernel(factor),
  });
  const proj = defineNode({ type: 'proj', inputs: tensorIn, outputs: tensorOut, kernel: () => matMulKernel(weight) });
  const addBias = defineNode({ type: 'bias', inputs: tensorIn, outputs: tensorOut, kernel: () => biasAddKernel(bias) });
  const relu = defineNode({ type: 'relu', inputs: tensorIn, outputs: tensorOut, kernel: () => activationKernel('relu') });
  const g = graph('kernel-chain')
    .add('gain', gain)
    .add('proj', proj)
    .add('bias', addBias)
    .add('relu', relu)
    .connect('gain.y', 'proj.x')
    .connect('proj.y', 'bias.x')
    .connect('bias.y', 'relu.x')
    .input('x', 'gain.x')
    .output('y', 'relu.y');
  return { graph: g, dispose: () => tf.dispose([weight, bias]) };
}

/** `n` chunks of 20 ms of a 440 Hz tone as [1, 320] tensors. */
export function audioChunks(n: number): tf.Tensor2D[] {
  return Array.from({ length: n }, (_, c) => tf.tensor2d(Float32Array.from({ length: 320 }, (_, i) => Math.sin((2 * Math.PI * 440 * (c * 320 + i)) / 16_000)), [1, 320]));
}
