// The web edge's wire format as distill.js reads it: refusals, the audio frame header, PCM
// deinterleaved, Opus decoded by the browser's WebCodecs AudioDecoder.

/** A refusal from the server: a gRPC status name, its message, and when to retry. */
export class DistillError extends Error {
  /** @param {string} code @param {string} message @param {number|undefined} retryAfterMs */
  constructor(code, message, retryAfterMs = undefined) {
    super(`${code}: ${message}`);
    this.name = "DistillError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Whether this browser decodes Opus itself (WebCodecs' AudioDecoder). */
export function opusDecodable() {
  return typeof globalThis.AudioDecoder === "function";
}

/** An audio frame's header length (docs/api.md, "WebSocket and HTTP"). */
export const HEADER_BYTES = 32;

/** The PCM payload of an audio frame as one Float32Array per channel. */
export function deinterleave(data, channels, encoding) {
  const bytes = data.slice(HEADER_BYTES);
  const samples =
    encoding === "AUDIO_ENCODING_PCM16"
      ? Float32Array.from(new Int16Array(bytes), (x) => x / 32768)
      : new Float32Array(bytes);
  const frames = samples.length / channels;
  const out = [];
  for (let c = 0; c < channels; c++) {
    const plane = new Float32Array(frames);
    for (let i = 0; i < frames; i++) plane[i] = samples[i * channels + c];
    out.push(plane);
  }
  return out;
}

/** Opus packets -> planar float blocks, through WebCodecs (the header's pre-skip dropped). */
export class OpusStream {
  constructor(header, deliver) {
    if (!opusDecodable()) {
      throw new DistillError("FAILED_PRECONDITION", "this browser has no AudioDecoder: ask for float32");
    }
    this.channels = header.format.channels;
    this.skip = header.opus.preSkip || 0;
    this.deliver = deliver;
    this.pending = [];
    this.timestamp = 0;
    this.decoder = new AudioDecoder({
      output: (data) => this._output(data),
      error: (e) => console.error("Opus decoding failed", e),
    });
    this.decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: this.channels });
  }

  decode(packets, block) {
    this.pending.push({ ...block, frames: 0, packets: packets.length, channels: [] });
    for (const packet of packets) {
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: this.timestamp, data: packet }));
      this.timestamp += 20000;
    }
  }

  _output(data) {
    const frames = data.numberOfFrames;
    const planes = [];
    for (let c = 0; c < this.channels; c++) {
      const plane = new Float32Array(frames);
      data.copyTo(plane, { planeIndex: c, format: "f32-planar" });
      planes.push(plane);
    }
    data.close();
    const drop = Math.min(this.skip, frames);
    this.skip -= drop;
    const block = this.pending[0];
    if (!block) return;
    block.channels.push(planes.map((p) => p.subarray(drop)));
    block.frames += frames - drop;
    block.packets -= 1;
    if (block.packets === 0) {
      this.pending.shift();
      const joined = [];
      for (let c = 0; c < this.channels; c++) {
        const plane = new Float32Array(block.frames);
        let at = 0;
        for (const piece of block.channels) {
          plane.set(piece[c], at);
          at += piece[c].length;
        }
        joined.push(plane);
      }
      this.deliver({ ...block, channels: joined });
    }
  }

  close() {
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}
