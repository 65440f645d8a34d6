// Distill: a CLAP / VST3 / LV2 instrument (DISTRHO Plugin Framework) that plays a live
// distill-serve session through libdistill. Stereo out, no audio in, no GUI: hosts show the
// parameters (play, seed, evolution, stereo width, the model's sliders). The server address,
// token and model name are plug-in state (CLAP, VST3), saved with the project; they default to
// $DISTILL_SERVER / $DISTILL_TOKEN / $DISTILL_MODEL, then 127.0.0.1:50051 and the server's
// default model (the LV2 build reads only those). Slider names come from the model at load.
// The latency reported to the host is the session's (lookahead, jitter margin, and the margin
// that lets a control reach the server before its position is made).
//
// Timeline: the plug-in plays a timeline session (docs/api.md): its audio is a function of the
// host's position, so playing, looping, seeking and bouncing give the same samples. Each run()
// plays the session at the host position minus the latency; a transport start, a seek or a
// loop (a position other than the one expected) starts the session there with the values in
// force; a parameter change is sent for the position of the block it came with. Hosts that
// report no transport (a file host, pedalboard) get the timeline from 0 as they process. When
// the host renders offline (CLAP render extension, VST3 offline process mode: the patched
// DPF's isOfflineMode, or the "Offline render" parameter by hand), the session is unpaced and
// run() waits for its audio, so a bounce runs as fast as the server and equals playback.
//
// Threads: run() renders from libdistill's ring (real-time safe). Parameter changes go to the
// session's lock-free control queue, from whatever thread the host calls on. Only activate(),
// deactivate() and setState() open or close sessions (never the audio thread); a session being
// replaced is closed only once no other thread is inside it (readers_).
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "DistrhoPlugin.hpp"
#include "distill.h"

START_NAMESPACE_DISTRHO

namespace {

constexpr uint32_t kMaxSliders = 8;
enum ParameterIndex : uint32_t {
  kParamPlay = 0,
  kParamSeed,
  kParamEvolution,
  kParamWidth,
  kParamSlider0,
  // Offline render by hand, for hosts that do not say they render offline (lv2apply): run()
  // waits for the server's audio instead of playing silence, and the audio starts exactly the
  // reported latency into the render. Never on in a real-time host: it blocks.
  kParamOffline = kParamSlider0 + kMaxSliders,
  // Outputs (meters): the session's state (distill_state: 0 connecting, 1 buffering,
  // 2 playing, 3 stopped, 4 failed) and its underrun count.
  kParamStatus,
  kParamUnderruns,
  kParamCount
};
enum StateIndex : uint32_t { kStateServer = 0, kStateToken, kStateModel, kStateCount };
#if DISTRHO_PLUGIN_WANT_STATE
constexpr uint32_t kStates = kStateCount;
#else
constexpr uint32_t kStates = 0;
#endif
constexpr float kDefaultSeed = 7;
// Evolution as the Distill app starts it (and the server when a request names none).
constexpr float kDefaultEvolution = 0.5f;
constexpr double kLookaheadS = 0.3;
constexpr double kJitterS = 0.05;
// Offline: the longest wait for the server in one run() before it plays silence.
constexpr double kOfflineWaitS = 10.0;

std::string EnvOr(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return (value && *value) ? value : fallback;
}

struct SliderInfo {
  std::string label;
  int32_t min = -10;
  int32_t max = 10;
};

}  // namespace

class DistillPlugin : public Plugin {
 public:
  DistillPlugin()
      : Plugin(kParamCount, 0, kStates),
        server_(EnvOr("DISTILL_SERVER", "127.0.0.1:50051")),
        token_(EnvOr("DISTILL_TOKEN", "")),
        model_(EnvOr("DISTILL_MODEL", "")) {
    values_[kParamPlay] = 1;
    values_[kParamSeed] = kDefaultSeed;
    values_[kParamEvolution] = kDefaultEvolution;
    values_[kParamWidth] = 1;
    for (uint32_t i = 0; i < kMaxSliders; ++i) {
      sliders_[i].label = "Slider " + std::to_string(i + 1);
    }
    // Slider names and ranges from the server, for the host's parameter list (not for the
    // instance a host makes only to read the plug-in's description).
    if (!isDummyInstance()) FetchModelInfo();
  }

  ~DistillPlugin() override { Replace(nullptr); }

 protected:
  const char* getLabel() const override { return "Distill"; }
  const char* getDescription() const override {
    return "Plays a live session of a distill-serve server (generative audio) in real time.";
  }
  const char* getMaker() const override { return "distill-serve"; }
  const char* getHomePage() const override { return "https://github.com/distill-serve"; }
  const char* getLicense() const override { return "ISC"; }
  uint32_t getVersion() const override { return d_version(0, 1, 0); }
  int64_t getUniqueId() const override { return d_cconst('D', 's', 't', 'l'); }

  void initParameter(uint32_t index, Parameter& p) override {
    p.hints = kParameterIsAutomatable;
    if (index == kParamPlay) {
      p.hints |= kParameterIsBoolean | kParameterIsInteger;
      p.name = "Play";
      p.symbol = "play";
      p.ranges = ParameterRanges(1, 0, 1);
    } else if (index == kParamSeed) {
      p.hints |= kParameterIsInteger;
      p.name = "Seed";
      p.symbol = "seed";
      p.ranges = ParameterRanges(kDefaultSeed, 0, 9999);
    } else if (index == kParamEvolution) {
      p.name = "Evolution";
      p.symbol = "evolution";
      p.ranges = ParameterRanges(kDefaultEvolution, 0, 1);
    } else if (index == kParamWidth) {
      p.name = "Stereo width";
      p.symbol = "stereo_width";
      p.ranges = ParameterRanges(1, 0, 2);
    } else if (index == kParamOffline) {
      p.hints = kParameterIsBoolean | kParameterIsInteger;  // not automatable
      p.name = "Offline render";
      p.symbol = "offline";
      p.ranges = ParameterRanges(0, 0, 1);
    } else if (index == kParamStatus) {
      p.hints = kParameterIsOutput | kParameterIsInteger;
      p.name = "Status";
      p.symbol = "status";
      p.ranges = ParameterRanges(0, 0, 4);
    } else if (index == kParamUnderruns) {
      p.hints = kParameterIsOutput | kParameterIsInteger;
      p.name = "Underruns";
      p.symbol = "underruns";
      p.ranges = ParameterRanges(0, 0, 1e9f);
    } else {
      const uint32_t i = index - kParamSlider0;
      p.hints |= kParameterIsInteger;
      p.name = sliders_[i].label.c_str();
      p.symbol = ("slider" + std::to_string(i)).c_str();
      p.ranges = ParameterRanges(0, static_cast<float>(sliders_[i].min),
                                 static_cast<float>(sliders_[i].max));
    }
  }

#if DISTRHO_PLUGIN_WANT_STATE
  void initState(uint32_t index, State& state) override {
    state.hints = kStateIsHostWritable;
    if (index == kStateServer) {
      state.key = "server";
      state.label = "Server (host:port)";
      state.defaultValue = server_.c_str();
    } else if (index == kStateToken) {
      state.key = "token";
      state.label = "Token";
      state.defaultValue = token_.c_str();
    } else {
      state.key = "model";
      state.label = "Model (empty: the server's default)";
      state.defaultValue = model_.c_str();
    }
  }

  String getState(const char* key) const override { return String(Field(key).c_str()); }

  void setState(const char* key, const char* value) override {
    std::string& field = Field(key);
    if (field == value) return;
    field = value;
    if (active_) Replace(Open());  // a new server, token or model: a new session
  }

  std::string& Field(const char* key) {
    if (std::strcmp(key, "server") == 0) return server_;
    return std::strcmp(key, "model") == 0 ? model_ : token_;
  }
  const std::string& Field(const char* key) const {
    return const_cast<DistillPlugin*>(this)->Field(key);
  }
#endif

  float getParameterValue(uint32_t index) const override { return values_[index]; }

  void setParameterValue(uint32_t index, float value) override {
    if (index >= kParamStatus) return;  // outputs
    values_[index] = value;
    if (index == kParamOffline) return;  // read by run()
    // sent by run(), for the position of the block it came with
    changed_.fetch_or(1u << index, std::memory_order_release);
  }

  void activate() override {
    active_ = true;
    Replace(Open());
    distill_session* s = session_.load();
    setLatency(s ? distill_latency_frames(s) : 0);
    playing_ = started_ = false;
    host_transport_ = false;
    free_position_ = 0;
  }

  void deactivate() override {
    active_ = false;
    Replace(nullptr);
  }

  void run(const float**, float** outputs, uint32_t frames) override {
    const bool offline = isOfflineMode() || values_[kParamOffline] >= 0.5f;
    readers_.fetch_add(1);
    distill_session* s = session_.load();
    if (s != last_session_) playing_ = started_ = false;  // a new session (setState): seek it
    last_session_ = s;
    // The host's position of this buffer, or our own count where the host has no transport.
#if DISTRHO_PLUGIN_WANT_TIMEPOS
    const TimePosition& time = getTimePosition();
    host_transport_ = host_transport_ || time.playing;
    const bool rolling = host_transport_ ? time.playing : true;
    const int64_t position = host_transport_ ? static_cast<int64_t>(time.frame) : free_position_;
#else
    const bool rolling = true;
    const int64_t position = free_position_;
#endif
    free_position_ += frames;
    const bool play = rolling && values_[kParamPlay] >= 0.5f;
    const uint32_t changed = changed_.exchange(0, std::memory_order_acq_rel);
    if (s && !play) {
      if (playing_) distill_stop(s);
      playing_ = false;  // (with the transport rolling, the fade-out still plays below)
    } else if (s && (!playing_ || position != expected_ || offline != offline_ ||
                     (changed & (1u << kParamSeed)))) {
      // Transport start, seek, loop, a new seed or render mode: the timeline from here, with
      // the values in force.
      SendValues(s);
      distill_seek(s, static_cast<uint64_t>(position), offline ? 1 : 0);
      playing_ = true;
      started_ = true;
      offline_ = offline;
    } else if (s) {
      for (uint32_t i = kParamEvolution; i < kParamSlider0 + num_sliders_; ++i) {
        if (changed & (1u << i)) SendAt(s, i, values_[i], static_cast<uint64_t>(position));
      }
    }
    expected_ = position + frames;
    uint32_t done = 0;
    const int64_t latency = s ? distill_latency_frames(s) : 0;
    // Rendered while the transport rolls (after Play off: the server's fade-out, then silence).
    while (s && started_ && rolling && done < frames) {  // may be larger than one render call
      const uint32_t n = std::min<uint32_t>(frames - done, DISTILL_MAX_BLOCK);
      float* planes[2] = {outputs[0] + done, outputs[1] + done};
      const int64_t at = position + done - latency;  // what the host hears now
      if (offline && playing_) distill_wait_at(s, n, at, kOfflineWaitS);
      distill_render_at(s, planes, n, at);
      done += n;
    }
    values_[kParamStatus] = s ? static_cast<float>(distill_get_state(s)) : 0.0f;
    values_[kParamUnderruns] = s ? static_cast<float>(distill_get_underruns(s)) : 0.0f;
    readers_.fetch_sub(1);
    std::memset(outputs[0] + done, 0, sizeof(float) * (frames - done));
    std::memset(outputs[1] + done, 0, sizeof(float) * (frames - done));
  }

 private:
  // The values in force, for the session a seek starts (they apply from its start).
  void SendValues(distill_session* s) const {
    distill_set_seed(s, static_cast<uint64_t>(std::lround(values_[kParamSeed])));
    distill_set_evolution(s, values_[kParamEvolution]);
    distill_set_stereo_width(s, values_[kParamWidth]);
    for (uint32_t i = 0; i < num_sliders_; ++i) {
      distill_set_slider(s, i, static_cast<int32_t>(std::lround(values_[kParamSlider0 + i])));
    }
  }

  // A parameter change at timeline position `at`.
  static void SendAt(distill_session* s, uint32_t index, float value, uint64_t at) {
    if (index == kParamEvolution) {
      distill_set_evolution_at(s, value, at);
    } else if (index == kParamWidth) {
      distill_set_stereo_width_at(s, value, at);
    } else {
      distill_set_slider_at(s, index - kParamSlider0, static_cast<int32_t>(std::lround(value)),
                            at);
    }
  }

  distill_config Config(int32_t* sliders) const {
    distill_config config;
    distill_config_init(&config);
    config.server = server_.c_str();
    config.token = token_.c_str();
    config.model = model_.c_str();
    config.mode = DISTILL_MODE_SLIDER;
    config.has_seed = 1;
    config.seed = static_cast<uint64_t>(std::lround(values_[kParamSeed]));
    for (uint32_t i = 0; i < kMaxSliders; ++i) {
      sliders[i] = static_cast<int32_t>(std::lround(values_[kParamSlider0 + i]));
    }
    config.sliders = sliders;
    config.num_sliders = num_sliders_;
    config.evolution_amount = values_[kParamEvolution];
    config.stereo_width = values_[kParamWidth];
    config.lookahead_s = kLookaheadS;
    config.jitter_s = kJitterS;
    config.sample_rate = static_cast<uint32_t>(std::lround(getSampleRate()));
    config.channels = 2;
    config.max_frames = DISTILL_MAX_BLOCK;
    config.timeline = 1;  // run() seeks it to the host's position before it plays
    return config;
  }

  distill_session* Open() {
    int32_t sliders[kMaxSliders];
    distill_config config = Config(sliders);
    char error[256];
    distill_session* s = distill_open(&config, error, sizeof error);
    if (s) distill_stop(s);  // until run() knows the position
    if (!s) d_stderr2("Distill: %s", error);
    return s;
  }

  // Makes `next` the session run() plays, and closes the previous one once no thread is
  // inside it.
  void Replace(distill_session* next) {
    distill_session* previous = session_.exchange(next);
    while (readers_.load() != 0) std::this_thread::yield();
    if (previous) distill_close(previous);
  }

  void FetchModelInfo() {
    distill_config config;
    distill_config_init(&config);
    config.server = server_.c_str();
    config.token = token_.c_str();
    config.model = model_.c_str();
    char error[256];
    distill_model_info* info = distill_model_info_get(&config, 1.0, error, sizeof error);
    if (!info) return;  // generic names, no start positions sent; the session still plays
    num_sliders_ = std::min<uint32_t>(distill_model_num_sliders(info), kMaxSliders);
    for (uint32_t i = 0; i < num_sliders_; ++i) {
      sliders_[i].label = distill_model_slider_label(info, i);
      sliders_[i].min = distill_model_slider_min(info, i);
      sliders_[i].max = distill_model_slider_max(info, i);
    }
    distill_model_info_free(info);
  }

  std::string server_;
  std::string token_;
  std::string model_;
  float values_[kParamCount] = {};
  SliderInfo sliders_[kMaxSliders];
  uint32_t num_sliders_ = 0;  // the model's sliders (up to kMaxSliders), once known
  bool active_ = false;
  // run() only, reset by activate(): whether the session plays, the position run() expects
  // next (another one is a seek), the render mode it plays in, whether the host has shown a
  // transport (else free_position_ counts the frames processed).
  bool playing_ = false;
  bool started_ = false;  // a session was started (sought) since activate()
  int64_t expected_ = 0;
  bool offline_ = false;
  bool host_transport_ = false;
  int64_t free_position_ = 0;
  distill_session* last_session_ = nullptr;
  // Parameters changed since the last run() (bit = index), set from any thread.
  std::atomic<uint32_t> changed_{0};
  // The session run() plays; activate() and setState() replace it once no run() is inside
  // it (readers_).
  std::atomic<distill_session*> session_{nullptr};
  std::atomic<int> readers_{0};

  DISTRHO_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(DistillPlugin)
};

Plugin* createPlugin() { return new DistillPlugin(); }

END_NAMESPACE_DISTRHO
