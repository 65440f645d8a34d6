// Session: one live distill-serve session as a host plays it. The network thread opens
// DistillService.GenerateLive, fills the Playout's ring with the audio blocks, forwards the
// controls that the host's threads queue, and reopens the session with a backoff when the call
// fails for a reason that retrying can cure.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "distill.h"
#include "distill_serve/v1/distill.grpc.pb.h"
#include "endpoint.h"
#include "playout.h"
#include "queues.h"

namespace distill {

namespace v1 = distill_serve::v1;

// One control as a host thread queued it.
struct Control {
  enum Kind : uint8_t { kSlider, kLatent, kEvolution, kWidth, kStop, kPlay, kSeed, kSeek };
  Kind kind = kStop;
  uint32_t index = 0;
  int32_t position = 0;  // a slider's
  uint64_t seed = 0;
  float value = 0;
  // Timeline sessions: the control's timeline position (kSeek: where to play from).
  bool has_at = false;
  uint64_t at = 0;
  bool unpaced = false;     // kSeek
  uint64_t generation = 0;  // kSeek: its number (Session::generation_)
  uint32_t latent_dim = 0;
  float latent[DISTILL_MAX_LATENT] = {};
};

// The controls in force: what a (re)opened session starts with.
struct ControlState {
  std::map<uint32_t, int32_t> sliders;
  std::vector<float> latent;  // non-empty: the latent is the target (set after the sliders)
  bool latent_is_latest = false;
  float evolution = -1;
  float width = -1;
  bool has_seed = false;
  uint64_t seed = 0;
  // Timeline sessions: where the next session starts, how, and which seek asked for it.
  uint64_t start_position = 0;
  bool unpaced = false;
  uint64_t generation = 0;
};

// What one pass over the control queue asks for besides new control values.
struct Commands {
  bool any = false;       // something was queued
  bool sliders = false;   // the sliders are the latest target
  bool latent = false;    // the latent is the latest target
  bool evolution = false;
  bool width = false;
  bool stop = false;
  bool play = false;
  bool reseed = false;    // a new seed: the session restarts on it
  bool seek = false;      // timeline: the session restarts at state.start_position
};


class Session {
 public:
  Session(const distill_config& config, Endpoint endpoint, ControlState initial);
  ~Session();  // cancels the call and joins the network thread

  uint32_t Render(float* const* out, uint32_t frames, uint32_t stride) {
    if (frames == 0 || frames > max_frames_) return 0;
    return playout_.Render(out, frames, stride);
  }
  // Offline rendering: blocks until the next Render of `frames` can play the server's audio
  // (or the session ends, fails or closes, or timeout_s passes). The render thread only.
  uint32_t Wait(uint32_t frames, double timeout_s);
  // Timeline sessions (config.timeline): the audio at positions [position, +frames).
  uint32_t RenderAt(float* const* out, uint32_t frames, uint32_t stride, int64_t position) {
    if (frames == 0 || frames > max_frames_) return 0;
    return playout_.RenderAt(out, frames, stride, position);
  }
  // Offline: blocks until RenderAt(frames, position) has the newest seek's audio (true), or
  // the session ends, fails or closes, or timeout_s passes (false).
  bool WaitAt(uint32_t frames, int64_t position, double timeout_s);
  bool timeline() const { return timeline_; }
  uint32_t channels() const { return channels_; }
  // Queues a control (a kSeek gets its generation here).
  int Queue(Control control);
  uint32_t latency_frames() const { return latency_frames_; }
  void GetStatus(distill_status* status);
  distill_state State() const;  // lock-free
  uint64_t underruns() const { return playout_.underruns(); }

 private:
  enum class Outcome { kStopped, kRetry, kFailed, kClosing };

  void NetworkLoop();
  Outcome RunCall(bool* got_audio, double* retry_after_s);
  void WriterLoop(grpc::ClientReaderWriter<v1::GenerateLiveRequest, v1::GenerateLiveResponse>* stream,
                  const std::atomic<bool>* call_done, std::atomic<bool>* restart);
  // Pops every queued control into state_ and play_; returns what changed.
  Commands Drain();
  v1::GenerateLiveRequest StartRequest() const;
  bool PushAudio(const v1::AudioChunk& chunk, bool fade_in);
  void SetError(const std::string& message);
  bool SleepUnlessClosing(double seconds);

  // Fixed at open.
  const bool timeline_;
  const v1::GenerationSpec spec_;
  const double lookahead_s_;
  const uint32_t channels_;
  const uint32_t max_frames_;
  const uint32_t latency_frames_;
  const Endpoint endpoint_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DistillService::Stub> stub_;

  Playout playout_;
  MpscQueue<Control> controls_;

  // Network thread (and its per-call writer thread, one at a time, joined before reuse).
  ControlState state_;
  std::vector<Control> positioned_;  // timeline controls with a position, not yet sent
  uint64_t sequence_ = 0;
  uint64_t pushed_frames_ = 0;
  std::vector<float> scratch_;

  std::atomic<bool> closing_{false};
  std::atomic<bool> play_{true};  // the host wants audio (false after stop, until play)
  bool first_session_ = true;      // network thread: fade in every session but the first
  std::atomic<bool> failed_{false};
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> connects_{0};
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> seed_{0};
  // Timeline: seeks asked for (any thread), the seek whose audio the ring now receives, and
  // the position after the last frame written (network thread).
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> ring_generation_{UINT64_MAX};
  std::atomic<int64_t> written_end_{0};
  std::atomic<uint64_t> refused_{0};

  std::mutex mutex_;  // guards last_error_, context_ and the close wake-up; never the audio thread
  std::condition_variable wake_;
  std::string last_error_;
  grpc::ClientContext* context_ = nullptr;

  std::thread network_;
};

}  // namespace distill
