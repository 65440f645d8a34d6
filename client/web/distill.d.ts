// Types of distill.js, the browser client of distill-serve's web edge (docs/api.md).

export const SUBPROTOCOL: "distill.v1";

export class DistillError extends Error {
  /** A gRPC status name (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...), or CLOSE_<code>. */
  code: string;
  /** When to try again (RESOURCE_EXHAUSTED), milliseconds. */
  retryAfterMs?: number;
}

export type Mode = "slider" | "crossfade" | "latent_interp";
export type Spatial = "mono" | "stereo" | "mid_side" | "haas" | "dual_seed";

export interface LiveSettings {
  model?: string;
  mode?: Mode;
  seed?: number | string;
  /** Slider positions by slider index (integers in the slider's range). */
  sliders?: Record<number, number>;
  latent?: ArrayLike<number>;
  evolution?: number;
  spatial?: Spatial;
  stereoWidth?: number;
  /** "opus" (48 kHz, decoded with WebCodecs), "float32" or "pcm16" at sampleRate.
   *  Default: opus where the browser has AudioDecoder, else float32. */
  encoding?: "opus" | "float32" | "pcm16";
  sampleRate?: number;
  bitrate?: number;
  /** Audio the server keeps ahead of real time, seconds. */
  lookahead?: number;
  /** Open a timeline session at this position (samples at the session's rate). */
  startPosition?: number;
}

export interface ClipSettings extends LiveSettings {
  duration: number;
  format?: "wav" | "flac" | "ogg";
}

export interface AudioBlock {
  /** One Float32Array per channel. */
  channels: Float32Array[];
  frames: number;
  sequence: number;
  offset: number;
  /** Timeline position of the block's first frame (timeline sessions), else null. */
  position: number | null;
  /** The last control the block reflects (0: none yet). */
  controlSequence: number;
}

export interface ControlOptions {
  /** Glide time, seconds. */
  transition?: number;
  /** Timeline sessions: apply at this position. */
  position?: number;
}

export interface LiveSession extends EventTarget {
  readonly header: any;
  readonly sampleRate?: number;
  readonly channels?: number;
  readonly encoding: string;
  readonly closed: boolean;
  /** Milliseconds from opening to the first decoded block. */
  readonly firstAudioMs: number | null;
  setSliders(sliders: Record<number, number>, options?: ControlOptions): number;
  setLatent(latent: ArrayLike<number>, options?: ControlOptions): number;
  setEvolution(amount: number, options?: ControlOptions): number;
  setStereoWidth(width: number, options?: ControlOptions): number;
  stop(): number;
  close(): void;
}

export interface Clip {
  blob: Blob;
  filename: string;
  seed: number;
  format: any;
}

export interface Connection {
  readonly url: string;
  login(token: string): Promise<any>;
  logout(): Promise<any>;
  models(): Promise<any>;
  info(model?: string): Promise<any>;
  status(): Promise<any>;
  generate(settings: ClipSettings): Promise<Clip>;
  live(settings?: LiveSettings): LiveSession;
}

export interface PlayerStats {
  rms: number;
  peak: number;
  bufferedS: number;
  underruns: number;
  playedS: number;
  playing: boolean;
  /** The control sequence of the block now playing. */
  controlHeard: number;
  ended: boolean;
  heardAt?: number;
}

export interface Player extends EventTarget {
  node: AudioWorkletNode;
  stats: PlayerStats;
  disconnect(): void;
}

export function opusDecodable(): boolean;
export function open(url?: string, options?: { token?: string }): Promise<Connection>;
export function createPlayer(
  context: AudioContext,
  session: LiveSession,
  options?: { bufferS?: number; destination?: AudioNode },
): Promise<Player>;
