// AudioWorklet I/O: microphone blocks (128 samples) go to the inference Worker through a
// MessagePort; enhanced samples come back and are played from a FIFO (zeros until they arrive).

class DfnetIo extends AudioWorkletProcessor {
  constructor() {
    super();
    this.fifo = [];
    this.head = 0; // read position in fifo[0]
    this.buffered = 0;
    this.port.onmessage = ({ data }) => {
      if (data.port) {
        this.worker = data.port;
        this.worker.onmessage = ({ data: samples }) => {
          this.fifo.push(samples);
          this.buffered += samples.length;
        };
      }
    };
  }

  process(inputs, outputs) {
    const input = inputs[0]?.[0];
    const output = outputs[0][0];
    if (input && this.worker) {
      const copy = new Float32Array(input);
      this.worker.postMessage(copy, [copy.buffer]);
    }
    for (let i = 0; i < output.length; i++) {
      if (!this.fifo.length) {
        output[i] = 0;
        continue;
      }
      output[i] = this.fifo[0][this.head++];
      this.buffered -= 1;
      if (this.head === this.fifo[0].length) {
        this.fifo.shift();
        this.head = 0;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(output);
    return true;
  }
}

registerProcessor("dfnet-io", DfnetIo);
