/* global AudioWorkletProcessor, registerProcessor */
// Microphone capture: hands the main thread every 128-sample render quantum (mono, the context's rate: 24 kHz).
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) this.port.postMessage(ch.slice(0));
    return true;
  }
}
registerProcessor('capture', CaptureProcessor);
