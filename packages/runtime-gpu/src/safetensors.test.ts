import { describe, expect, it } from 'vitest';
import { SafetensorsFile } from './safetensors.js';
import { fixturePath } from './testing/fixtures.js';

describe('SafetensorsFile', () => {
  it('reads the tiny fixture checkpoint lazily', () => {
    const f = SafetensorsFile.open(fixturePath('model.safetensors'));
    expect(f.keys().length).toBe(387);
    const w = f.read('thinker.model.layers.0.mlp.experts.1.gate_proj.weight');
    expect(w.dtype).toBe('float32');
    expect(w.shape).toEqual([16, 32]);
    f.close();
  });
});
