import * as tf from '@tensorflow/tfjs-core';

/**
 * Exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)): PyTorch's `F.gelu` / `nn.GELU()` / `"gelu"`, used by the
 * audio encoder and the vision mergers.
 *
 * ```ts
 * const y = gelu(tf.tensor1d([-1, 0, 1])); // [-0.1587, 0, 0.8413]
 * ```
 */
export function gelu(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));
}

/**
 * The tanh approximation of GELU (`"gelu_pytorch_tanh"`), used by the vision blocks' MLP:
 * 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
 *
 * ```ts
 * const y = geluTanh(tf.tensor1d([-1, 0, 1])); // [-0.1588, 0, 0.8412]
 * ```
 */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const inner = tf.mul(tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)), Math.sqrt(2 / Math.PI));
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
  });
}

/** Activation by its Hugging Face config name (`hidden_act` / `activation_function`). */
export function activation(name: string): (x: tf.Tensor) => tf.Tensor {
  switch (name) {
    case 'gelu':
      return gelu;
    case 'gelu_pytorch_tanh':
    case 'gelu_new':
      return geluTanh;
    default:
      throw new Error(`activation '${name}' is not supported by the encoders (expected gelu or gelu_pytorch_tanh)`);
  }
}
