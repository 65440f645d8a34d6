/*
 * distill.h: the C API of libdistill, a live distill-serve session inside a host's audio
 * callback (game engines, DAW plug-ins, anything that can call C: Unity P/Invoke, Unreal,
 * Godot, FMOD/Wwise plug-ins, Python ctypes).
 *
 *   distill_config config;
 *   distill_config_init(&config);            // server from $DISTILL_SERVER, token $DISTILL_TOKEN
 *   config.sample_rate = 48000; config.channels = 2; config.max_frames = 4096;
 *   distill_session *s = distill_open(&config, error, sizeof error);
 *   ...  audio callback:  distill_render(s, out, frames);    // real-time safe
 *   ...  any thread:      distill_set_slider(s, 0, 4);
 *   distill_stop(s);  ...  distill_close(s);
 *
 * Threads. distill_open starts one network thread per session. distill_render is called from
 * one thread at a time (the host's audio thread); it takes no lock, allocates nothing and never
 * blocks: it reads from a single-producer/single-consumer ring buffer that the network thread
 * fills. The control functions may be called from any thread, also the audio thread: they push
 * onto a bounded lock-free queue that the network thread drains (every 2 ms), and never block.
 * distill_get_status and distill_close may be called from any thread except the audio thread
 * (they may lock). distill_close must not run concurrently with any other call on the session.
 *
 * Timing. The server generates up to lookahead_s ahead of real time. Audio starts once the ring
 * holds lookahead_s + jitter_s (distill_latency_frames, fixed per session); until then, and on
 * an underrun, distill_render writes silence (an underrun fades out over 64 frames and back in,
 * never a click). The ring then stays about that full, so a control is heard about
 * distill_latency_frames plus one server block after it is set. When the server goes
 * away, the session reconnects with a backoff (0.1 s doubling to 2 s) and plays a new session
 * with the latest controls; a refusal that retrying cannot cure (bad token, bad spec) ends it
 * in DISTILL_STATE_FAILED with the server's message in the status.
 */
#ifndef DISTILL_H
#define DISTILL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DISTILL_API __declspec(dllexport)
#else
#define DISTILL_API __attribute__((visibility("default")))
#endif

#define DISTILL_API_VERSION 2
/* Longest latent vector and most sliders a config or control can carry. */
#define DISTILL_MAX_LATENT 256
#define DISTILL_MAX_SLIDERS 64
/* Largest distill_render call a session accepts (frames). */
#define DISTILL_MAX_BLOCK 16384

typedef struct distill_session distill_session;
typedef struct distill_model_info distill_model_info;

/* The chunk mode of the session (distill.proto ChunkMode). */
typedef enum distill_mode {
  DISTILL_MODE_CROSSFADE = 1,
  DISTILL_MODE_LATENT_INTERP = 2,
  DISTILL_MODE_SLIDER = 3
} distill_mode;

/* Return values of the functions that return int. */
typedef enum distill_result {
  DISTILL_OK = 0,
  DISTILL_ERROR_ARGUMENT = -1,  /* a NULL session or an argument out of range */
  DISTILL_ERROR_QUEUE_FULL = -2, /* the control queue is full (the network thread is behind) */
  DISTILL_ERROR_ENDED = -3      /* the session failed for good: controls go nowhere */
} distill_result;

typedef enum distill_state {
  DISTILL_STATE_CONNECTING = 0, /* opening a session with the server, or reopening after a loss */
  DISTILL_STATE_BUFFERING = 1,  /* connected; filling the ring to the latency */
  DISTILL_STATE_PLAYING = 2,    /* audio is being rendered */
  DISTILL_STATE_STOPPED = 3,    /* distill_stop was called and the faded-out audio has played
                                   (distill_play starts again) */
  DISTILL_STATE_FAILED = 4      /* refused for good (see last_error); no more retries */
} distill_state;

typedef struct distill_config {
  /* Server as host:port. NULL: $DISTILL_SERVER, then "127.0.0.1:50051". */
  const char *server;
  /* Bearer token. NULL: $DISTILL_TOKEN, then none. */
  const char *token;
  /* TLS: a PEM file of root certificates; "" uses the system's roots; NULL: plaintext. */
  const char *tls_root_certs;
  distill_mode mode;
  /* has_seed != 0: play the trajectory of this seed (same seed, same audio). Otherwise the
     server picks one (see distill_status.seed). */
  int has_seed;
  uint64_t seed;
  /* Start point in slider mode: positions of sliders 0..num_sliders-1, or a latent vector
     (latent_dim values; used when latent_dim > 0). Copied by distill_open. */
  const int32_t *sliders;
  uint32_t num_sliders;
  const float *latent;
  uint32_t latent_dim;
  /* How far slider mode strays from the slider setting, in [0, 1]; negative: the server's
     default (0.5, as in the Distill app). */
  float evolution_amount;
  /* Stereo width in [0, 2] for two channels; negative: the server's default (1). */
  float stereo_width;
  /* How far ahead of real time the server generates, seconds (0: 0.3). */
  double lookahead_s;
  /* Margin for network jitter, seconds (0: 0.05): playback starts once the ring holds
     lookahead_s + jitter_s. */
  double jitter_s;
  /* The host's rate: the server resamples to it (it must be one the server offers). */
  uint32_t sample_rate;
  /* 1 (mono) or 2 (mid/side stereo). */
  uint32_t channels;
  /* The largest frames argument distill_render will get, 1..DISTILL_MAX_BLOCK. */
  uint32_t max_frames;
  /* The server's model by name (a server of many: `serve --models`); NULL or "": its
     default model. An unknown name fails the session with NOT_FOUND naming the models. */
  const char *model;
  /* Timeline sessions (API version 2; docs/api.md "Timeline sessions"): timeline != 0 makes
     the audio a function of the timeline position. The session starts at start_position
     (frames at sample_rate); play it with distill_render_at, move it with distill_seek, and
     give controls a position with the distill_set_*_at functions. Its latency also covers
     the controls' way to the server (about 0.6 s more), so a control set for the position
     the host is about to play is taken. unpaced != 0: the server renders as fast as it can
     (an offline bounce: pair it with distill_wait_at). */
  int timeline;
  uint64_t start_position;
  int unpaced;
} distill_config;

typedef struct distill_status {
  distill_state state;
  /* Times the ring buffer ran dry while playing (each one faded out and back in). */
  uint64_t underruns;
  /* Sessions opened with the server, the first one included. */
  uint64_t connects;
  /* Frames rendered in all, and of those, frames that came from the server. */
  uint64_t frames_rendered;
  uint64_t frames_played;
  /* Silent frames rendered before the first audio of the first session. */
  uint64_t frames_before_audio;
  /* Frames waiting in the ring buffer now. */
  uint32_t frames_buffered;
  /* The sequence number of the last control sent to the server, and the largest
     AudioChunk.control_sequence rendered so far: a control is heard once heard >= sent. */
  uint64_t control_sent;
  uint64_t control_heard;
  /* The seed the server plays (echoed in its stream header); 0 until connected. */
  uint64_t seed;
  /* The last error: the server's or the transport's message, "" when none. */
  char last_error[256];
  /* Timeline sessions: controls the server refused (a position in the past, out of order;
     the message is in last_error), and frames of audio that came after their position had
     been rendered (dropped, heard as silence). */
  uint64_t controls_refused;
  uint64_t frames_late;
} distill_status;

/* Fills config with the defaults above (mode crossfade, mono, 48000 Hz, max_frames 4096). */
DISTILL_API void distill_config_init(distill_config *config);

/* Opens a session and starts its network thread. Returns NULL and writes the reason into
   error (if given) when the config is invalid; a server that cannot be reached is not an
   error here (the session connects in the background: see distill_get_status). */
DISTILL_API distill_session *distill_open(const distill_config *config, char *error,
                                          size_t error_size);

/* Writes `frames` frames into out[0..channels-1] (one array per channel). Real-time safe.
   Returns the frames that came from the server (the rest is silence), or 0 if frames is 0 or
   larger than max_frames (then nothing is written). */
DISTILL_API uint32_t distill_render(distill_session *session, float *const *out,
                                    uint32_t frames);

/* The same, into one interleaved buffer of frames * channels floats (Unity, FMOD, SDL). */
DISTILL_API uint32_t distill_render_interleaved(distill_session *session, float *out,
                                                uint32_t frames);

/* Controls (any thread, non-blocking): they take effect in the server's next block. */
/* Offline rendering only (a DAW's bounce, a file host), never in a real-time callback: waits
   until the next distill_render of `frames` frames will play the server's audio rather than
   silence, or the session stops, fails or closes, or timeout_s passes. Call it from the thread
   that calls distill_render, just before it. Returns the frames buffered. The server still
   sends a live session at real-time pace, so an offline render takes about the audio's time. */
DISTILL_API uint32_t distill_wait(distill_session *session, uint32_t frames, double timeout_s);
DISTILL_API int distill_set_slider(distill_session *session, uint32_t index, int32_t position);
DISTILL_API int distill_set_latent(distill_session *session, const float *latent,
                                   uint32_t latent_dim);
DISTILL_API int distill_set_evolution(distill_session *session, float evolution_amount);
DISTILL_API int distill_set_stereo_width(distill_session *session, float stereo_width);
/* Asks the server to fade out (50 ms) and end; the status becomes STOPPED once that has
   played. Controls set while stopped apply to the next session. */
DISTILL_API int distill_stop(distill_session *session);
/* After distill_stop: play again (a new session, from the start of the trajectory, with the
   controls in force; it fades in). */
DISTILL_API int distill_play(distill_session *session);
/* Switches to the trajectory of `seed`: the session fades out and a new one starts on it
   (fading in). Nothing happens if it already plays that seed. */
DISTILL_API int distill_set_seed(distill_session *session, uint64_t seed);

/* Timeline sessions (config.timeline). All positions are frames at the session's rate. */
/* Renders the session's timeline [position, position + frames): the frames the server has
   sent for those positions, silence for the others (before the session's start, not yet
   arrived: an underrun). Real-time safe. A plug-in passes its host position minus
   distill_latency_frames (negative: silence before 0). */
DISTILL_API uint32_t distill_render_at(distill_session *session, float *const *out,
                                       uint32_t frames, int64_t position);
/* Offline: waits until distill_render_at(frames, position) can play the server's audio for
   every position from the session's start on (or the session ends, fails or closes, or
   timeout_s passes). Returns 1 when it can. */
DISTILL_API int distill_wait_at(distill_session *session, uint32_t frames, int64_t position,
                                double timeout_s);
/* Plays the timeline from `position` on: the current session ends and one starts there
   (unpaced != 0: an offline bounce). Also starts a stopped session. */
DISTILL_API int distill_seek(distill_session *session, uint64_t position, int unpaced);
/* Controls that take effect at a timeline position (the block holding it). Positions must
   not decrease; the server refuses one in the past (distill_status.controls_refused). */
DISTILL_API int distill_set_slider_at(distill_session *session, uint32_t index, int32_t value,
                                      uint64_t position);
DISTILL_API int distill_set_evolution_at(distill_session *session, float evolution_amount,
                                         uint64_t position);
DISTILL_API int distill_set_stereo_width_at(distill_session *session, float stereo_width,
                                            uint64_t position);

/* The fixed latency of the session in frames: lookahead plus jitter buffer (timeline
   sessions: plus the controls' margin). */
DISTILL_API uint32_t distill_latency_frames(const distill_session *session);
/* The state and the underrun count alone, real-time safe (no lock): for a host's meters. */
DISTILL_API distill_state distill_get_state(const distill_session *session);
DISTILL_API uint64_t distill_get_underruns(const distill_session *session);
/* Copies the session's status (not from the audio thread: it locks for last_error). */
DISTILL_API void distill_get_status(distill_session *session, distill_status *status);
/* Ends the session (cancelling the call) and frees it. */
DISTILL_API void distill_close(distill_session *session);

/* Model info: asks the server (GetModelInfo) with config's server, token and TLS settings.
   Returns NULL and writes the reason into error when it cannot. */
DISTILL_API distill_model_info *distill_model_info_get(const distill_config *config,
                                                       double timeout_s, char *error,
                                                       size_t error_size);
DISTILL_API uint32_t distill_model_latent_dim(const distill_model_info *info);
DISTILL_API uint32_t distill_model_num_sliders(const distill_model_info *info);
/* Slider i's label (valid until distill_model_info_free), and its position range. */
DISTILL_API const char *distill_model_slider_label(const distill_model_info *info, uint32_t i);
DISTILL_API int32_t distill_model_slider_min(const distill_model_info *info, uint32_t i);
DISTILL_API int32_t distill_model_slider_max(const distill_model_info *info, uint32_t i);
DISTILL_API uint32_t distill_model_num_sample_rates(const distill_model_info *info);
DISTILL_API uint32_t distill_model_sample_rate(const distill_model_info *info, uint32_t i);
DISTILL_API void distill_model_info_free(distill_model_info *info);

/* The library's version string, e.g. "libdistill 2 (distill_serve.v1)". */
DISTILL_API const char *distill_version(void);

#ifdef __cplusplus
}
#endif

#endif /* DISTILL_H */
