// distill-serve's browser client: an ES module, no build step. It speaks the web edge's
// protocol (docs/api.md, "WebSocket and HTTP"): JSON messages in protobuf's JSON mapping,
// audio in binary frames behind a 32-byte header. Types: distill.d.ts.
//
//   import { open, createPlayer } from "/client/distill.js";
//   const server = await open();                       // this page's server
//   const session = server.live({ mode: "slider", sliders: { 0: 4 } });
//   const player = await createPlayer(new AudioContext({ sampleRate: 48000 }), session);
//   session.setSliders({ 1: -6 });                     // while it plays
//   session.stop();

import { DistillError, HEADER_BYTES, OpusStream, deinterleave, opusDecodable } from "./wire.js";

export { DistillError, opusDecodable };

export const SUBPROTOCOL = "distill.v1";
const FLAG_OPUS = 1;
const FLAG_POSITION = 2;

const MODES = {
  crossfade: "CHUNK_MODE_CROSSFADE",
  latent_interp: "CHUNK_MODE_LATENT_INTERP",
  slider: "CHUNK_MODE_SLIDER",
};
const SPATIAL = {
  mono: "SPATIAL_MODE_MONO",
  stereo: "SPATIAL_MODE_STEREO_MID_SIDE",
  mid_side: "SPATIAL_MODE_STEREO_MID_SIDE",
  haas: "SPATIAL_MODE_STEREO_HAAS",
  dual_seed: "SPATIAL_MODE_DUAL_SEED",
};
const ENCODINGS = {
  opus: "AUDIO_ENCODING_OPUS",
  float32: "AUDIO_ENCODING_FLOAT32",
  pcm16: "AUDIO_ENCODING_PCM16",
};
const CONTAINERS = { wav: "CONTAINER_WAV", flac: "CONTAINER_FLAC", ogg: "CONTAINER_OGG" };

/**
 * A connection to a distill-serve web edge.
 * @param {string} [url] the edge's address (default: the page's own origin)
 * @param {{token?: string}} [options] a bearer token (sent as a header and a subprotocol)
 */
export async function open(url = globalThis.location?.origin, options = {}) {
  return new Connection(url, options.token);
}

class Connection {
  constructor(url, token) {
    this.url = String(url).replace(/\/$/, "");
    this.token = token;
  }

  async _fetch(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (this.token) headers.set("Authorization", `Bearer ${this.token}`);
    const response = await fetch(this.url + path, { credentials: "same-origin", ...init, headers });
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /** Log in with a token: the server sets an HttpOnly cookie this page's calls then carry. */
  async login(token) {
    const body = JSON.stringify({ token });
    return (await this._fetch("/api/login", { method: "POST", body })).json();
  }

  async logout() {
    return (await this._fetch("/api/logout", { method: "POST" })).json();
  }

  /** ListModels: `{models: [...], defaultModel}`. */
  async models() {
    return (await this._fetch("/api/models")).json();
  }

  /** GetModelInfo of `model` ("" or omitted: the default model). */
  async info(model = "") {
    return (await this._fetch(`/api/info?model=${encodeURIComponent(model)}`)).json();
  }

  /** The server's state: models, vocoder, provider, live sessions running. */
  async status() {
    return (await this._fetch("/api/status")).json();
  }

  /**
   * A fixed-length clip as a file: `{blob, filename, seed, format}`.
   * @param {object} settings live()'s settings plus `duration` (s) and `format` (wav|flac|ogg)
   */
  async generate(settings) {
    const format = settings.format || "wav";
    const spec = specOf({ encoding: format === "ogg" ? "opus" : "pcm16", ...settings });
    spec.durationS = settings.duration;
    if (format === "flac") spec.encoding = "AUDIO_ENCODING_FLAC";
    const body = JSON.stringify({ spec, container: CONTAINERS[format] });
    const response = await this._fetch("/api/generate", { method: "POST", body });
    const disposition = response.headers.get("Content-Disposition") || "";
    const filename = (/filename="([^"]+)"/.exec(disposition) || [])[1] || `distill.${format}`;
    return {
      blob: await response.blob(),
      filename,
      seed: Number(response.headers.get("X-Distill-Seed")),
      format: JSON.parse(response.headers.get("X-Distill-Format") || "{}"),
    };
  }

  /**
   * Start a live session (GenerateLive over WebSocket).
   * @param {object} settings see LiveSettings in distill.d.ts
   */
  live(settings = {}) {
    const base = this.url.replace(/^http/, "ws");
    const protocols = [SUBPROTOCOL];
    if (this.token) protocols.push(`bearer.${this.token}`);
    return new LiveSession(new WebSocket(`${base}/v1/live`, protocols), settings);
  }
}

async function errorOf(response) {
  try {
    const { error } = await response.json();
    return new DistillError(error.code, error.message, error.retryAfterMs);
  } catch {
    return new DistillError(`HTTP_${response.status}`, response.statusText);
  }
}

function specOf(s) {
  const spec = { mode: MODES[s.mode || "slider"] };
  if (!spec.mode) throw new DistillError("INVALID_ARGUMENT", `unknown mode ${s.mode}`);
  if (s.model) spec.model = s.model;
  if (s.seed !== undefined && s.seed !== null && s.seed !== "") spec.seed = String(s.seed);
  if (s.sampleRate) spec.sampleRate = s.sampleRate;
  spec.encoding = ENCODINGS[s.encoding] || s.encoding;
  spec.spatial = SPATIAL[s.spatial || "mono"];
  if (s.stereoWidth !== undefined) spec.stereoWidth = s.stereoWidth;
  if (s.evolution !== undefined) spec.evolutionAmount = s.evolution;
  if (s.bitrate) spec.bitrateBps = s.bitrate;
  if (s.latent) spec.latent = { values: Array.from(s.latent) };
  else if (s.sliders) spec.sliders = positionsOf(s.sliders);
  return spec;
}

function positionsOf(sliders) {
  return {
    positions: Object.entries(sliders).map(([i, p]) => ({ index: Number(i), position: Math.round(p) })),
  };
}

/**
 * One live session. Events: "header" (the stream header), "audio" (a decoded block:
 * `{channels, frames, sequence, position, controlSequence}`), "refused" (a control the
 * server refused), "end" (why it ended, with stats), "error" (a DistillError), "close".
 */
class LiveSession extends EventTarget {
  constructor(socket, settings) {
    super();
    this.socket = socket;
    this.socket.binaryType = "arraybuffer";
    this.settings = settings;
    this.sequence = 0;
    this.header = null;
    this.closed = false;
    this.startedAt = performance.now();
    this.firstAudioMs = null;
    this._opus = null;
    const encoding = settings.encoding || (opusDecodable() ? "opus" : "float32");
    this.encoding = encoding;
    const start = { spec: specOf({ ...settings, encoding }) };
    if (encoding === "opus") start.spec.sampleRate = 48000;
    if (settings.lookahead !== undefined) start.lookaheadS = settings.lookahead;
    if (settings.startPosition !== undefined) start.startPosition = String(settings.startPosition);
    socket.addEventListener("open", () => socket.send(JSON.stringify({ start })));
    socket.addEventListener("message", (event) => this._receive(event.data));
    socket.addEventListener("close", (event) => {
      this.closed = true;
      if (this._opus) this._opus.close();
      if (event.code >= 4000 && !this._errored) {
        this._emit("error", new DistillError(`CLOSE_${event.code}`, event.reason));
      }
      this._emit("close", { code: event.code, reason: event.reason });
    });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _receive(data) {
    if (typeof data === "string") {
      const message = JSON.parse(data);
      if (message.header) {
        this.header = message.header;
        this.sampleRate = message.header.format.sampleRate;
        this.channels = message.header.format.channels;
        if (message.header.opus) this._opus = new OpusStream(message.header, (b) => this._audio(b));
        this._emit("header", message.header);
      } else if (message.refused) {
        this._emit("refused", message.refused);
      } else if (message.end) {
        this._emit("end", message.end);
      } else if (message.error) {
        this._errored = true;
        const e = message.error;
        this._emit("error", new DistillError(e.code, e.message, e.retryAfterMs));
      }
      return;
    }
    const view = new DataView(data);
    const flags = view.getUint8(1);
    const block = {
      sequence: view.getUint32(4, true),
      frames: view.getUint32(8, true),
      controlSequence: view.getUint32(12, true),
      offset: Number(view.getBigUint64(16, true)),
      position: flags & FLAG_POSITION ? Number(view.getBigUint64(24, true)) : null,
    };
    if (flags & FLAG_OPUS) {
      const packets = [];
      let at = HEADER_BYTES;
      for (let i = 0; i < view.getUint16(2, true); i++) {
        const length = view.getUint16(at, true);
        packets.push(new Uint8Array(data, at + 2, length));
        at += 2 + length;
      }
      this._opus.decode(packets, block);
    } else {
      this._audio({ ...block, channels: deinterleave(data, this.channels, this.header.format.encoding) });
    }
  }

  _audio(block) {
    if (this.firstAudioMs === null) this.firstAudioMs = performance.now() - this.startedAt;
    this._emit("audio", block);
  }

  _control(fields) {
    if (this.closed || this.socket.readyState !== WebSocket.OPEN) return 0;
    this.sequence += 1;
    this.socket.send(JSON.stringify({ control: { sequence: String(this.sequence), ...fields } }));
    return this.sequence;
  }

  /** Glide to these slider positions (`{index: position}`); returns the control's sequence. */
  setSliders(sliders, options = {}) {
    return this._control({ sliders: positionsOf(sliders), ...controlOptions(options) });
  }

  /** Glide to this latent vector. */
  setLatent(latent, options = {}) {
    return this._control({ latent: { values: Array.from(latent) }, ...controlOptions(options) });
  }

  /** How far the sound strays from the slider setting, 0-1. */
  setEvolution(amount, options = {}) {
    return this._control({ evolutionAmount: amount, ...controlOptions(options) });
  }

  /** Stereo width (stereo sessions). */
  setStereoWidth(width, options = {}) {
    return this._control({ stereoWidth: width, ...controlOptions(options) });
  }

  /** End the session: it fades out, sends its end event and closes. */
  stop() {
    return this._control({ stop: true });
  }

  /** Close the socket now (the server ends the session at once). */
  close() {
    this.socket.close(1000);
  }
}

function controlOptions({ transition, position } = {}) {
  const out = {};
  if (transition !== undefined) out.transitionS = transition;
  if (position !== undefined) out.position = String(position);
  return out;
}

/**
 * Play a live session in `context` through an AudioWorklet with a jitter buffer. The
 * player's `stats` (updated ~20 times a second; also its "stats" event): `rms`, `peak`,
 * `bufferedS`, `underruns`, `playedS`, `controlHeard` (the last control sequence playing).
 * @param {AudioContext} context its sampleRate must be the session's (48000 for Opus)
 * @param {LiveSession} session
 * @param {{bufferS?: number, destination?: AudioNode}} [options] audio held before playing
 */
export async function createPlayer(context, session, options = {}) {
  await context.audioWorklet.addModule(new URL("./player-worklet.js", import.meta.url));
  const node = new AudioWorkletNode(context, "distill-player", {
    numberOfInputs: 0,
    outputChannelCount: [2],
    processorOptions: { bufferFrames: Math.round((options.bufferS ?? 0.1) * context.sampleRate) },
  });
  const player = new EventTarget();
  player.node = node;
  player.stats = { rms: 0, peak: 0, bufferedS: 0, underruns: 0, playedS: 0, controlHeard: 0 };
  node.port.onmessage = (event) => {
    player.stats = { ...event.data, heardAt: performance.now() };
    player.dispatchEvent(new CustomEvent("stats", { detail: player.stats }));
  };
  const onAudio = (event) => {
    const block = event.detail;
    if (session.sampleRate && session.sampleRate !== context.sampleRate) {
      throw new DistillError("FAILED_PRECONDITION",
        `the session plays at ${session.sampleRate} Hz, the AudioContext at ${context.sampleRate} Hz`);
    }
    // copied, not transferred: other listeners may keep the block
    node.port.postMessage({ channels: block.channels, controlSequence: block.controlSequence });
  };
  session.addEventListener("audio", onAudio);
  session.addEventListener("end", () => node.port.postMessage({ end: true }));
  session.addEventListener("close", () => node.port.postMessage({ end: true }));
  node.connect(options.destination || context.destination);
  player.disconnect = () => {
    session.removeEventListener("audio", onAudio);
    node.disconnect();
  };
  return player;
}
