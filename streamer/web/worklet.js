// AudioWorklet: turns the (mono) microphone signal into ~100 ms frames of 16-bit
// little-endian PCM and posts them to the page, which sends them on the websocket.
// Messages from the page: "flush" -> post the partial frame, then {flushed: true}.
class PcmWriter extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const seconds = (options.processorOptions && options.processorOptions.frameSeconds) || 0.1;
    this.frameSize = Math.max(1, Math.round(sampleRate * seconds));
    this.newFrame();
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.port.postMessage({ flushed: true });
      }
    };
  }

  newFrame() {
    this.buffer = new ArrayBuffer(this.frameSize * 2);
    this.view = new DataView(this.buffer);
    this.count = 0;
  }

  post() {
    if (this.count === 0) return;
    const bytes = this.count === this.frameSize ? this.buffer : this.buffer.slice(0, this.count * 2);
    this.port.postMessage(bytes, [bytes]);
    this.newFrame();
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no input connected yet: keep alive
    const channels = input.length;
    const length = input[0].length;
    for (let i = 0; i < length; i++) {
      let value = 0;
      for (let c = 0; c < channels; c++) value += input[c][i];
      value /= channels;
      value = value > 1 ? 1 : value < -1 ? -1 : value;
      this.view.setInt16(this.count * 2, value < 0 ? value * 0x8000 : value * 0x7fff, true);
      if (++this.count === this.frameSize) this.post();
    }
    return true;
  }
}

registerProcessor("pcm-writer", PcmWriter);
