// The player's AudioWorklet (distill.js createPlayer): a jitter buffer of decoded blocks.
// It waits until `bufferFrames` are queued, then plays; a render quantum that finds the
// queue empty before the session's end is an underrun (counted once per starvation), after
// which it buffers again. Mono blocks play on both channels. Reports its levels ~20 times a
// second.

class DistillPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.bufferFrames = options.processorOptions.bufferFrames;
    this.queue = []; // {channels: Float32Array[], at: number, controlSequence}
    this.queued = 0;
    this.playing = false;
    this.started = false;
    this.ended = false;
    this.starved = false;
    this.underruns = 0;
    this.played = 0;
    this.controlHeard = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.measured = 0;
    this.reportEvery = Math.round(sampleRate / 20);
    this.port.onmessage = (event) => {
      if (event.data.end) {
        this.ended = true;
        return;
      }
      const { channels, controlSequence } = event.data;
      this.queue.push({ channels, at: 0, controlSequence });
      this.queued += channels[0].length;
      if (!this.playing && this.queued >= this.bufferFrames) {
        this.playing = true;
        this.started = true;
        this.starved = false;
      }
    };
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const n = out[0].length;
    let written = 0;
    if (this.playing) {
      while (written < n && this.queue.length) {
        const block = this.queue[0];
        const take = Math.min(n - written, block.channels[0].length - block.at);
        for (let c = 0; c < out.length; c++) {
          const source = block.channels[Math.min(c, block.channels.length - 1)];
          out[c].set(source.subarray(block.at, block.at + take), written);
        }
        if (block.at === 0) this.controlHeard = block.controlSequence;
        block.at += take;
        written += take;
        this.queued -= take;
        if (block.at >= block.channels[0].length) this.queue.shift();
      }
      if (written < n && !this.ended) {
        this.playing = false; // buffer again
        if (!this.starved) this.underruns += 1;
        this.starved = true;
      }
    }
    for (let i = 0; i < written; i++) {
      const x = out[0][i];
      this.sumSquares += x * x;
      const a = Math.abs(x);
      if (a > this.peak) this.peak = a;
    }
    this.played += written;
    this.measured += n;
    if (this.measured >= this.reportEvery) {
      this.port.postMessage({
        rms: Math.sqrt(this.sumSquares / this.measured),
        peak: this.peak,
        bufferedS: this.queued / sampleRate,
        underruns: this.underruns,
        playedS: this.played / sampleRate,
        playing: this.playing,
        controlHeard: this.controlHeard,
        ended: this.ended && this.queue.length === 0,
      });
      this.sumSquares = 0;
      this.peak = 0;
      this.measured = 0;
    }
    return true;
  }
}

registerProcessor("distill-player", DistillPlayer);
