#include "session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace distill {

namespace {

constexpr double kControlPollS = 0.002;
// Timeline sessions: the latency also covers a control's way to the server before the block
// that holds its position is made (one block, the vocoder's context, the network).
constexpr double kTimelineControlMarginS = 0.6;
constexpr double kFirstBackoffS = 0.1;
constexpr double kMaxBackoffS = 2.0;

v1::GenerationSpec SpecFromConfig(const distill_config& config) {
  v1::GenerationSpec spec;  // duration_s stays 0: open-ended
  spec.set_mode(static_cast<v1::ChunkMode>(config.mode));
  if (config.has_seed) spec.set_seed(config.seed);
  spec.set_sample_rate(config.sample_rate);
  spec.set_encoding(v1::AUDIO_ENCODING_FLOAT32);
  spec.set_spatial(config.channels == 2 ? v1::SPATIAL_MODE_STEREO_MID_SIDE : v1::SPATIAL_MODE_MONO);
  if (config.model) spec.set_model(config.model);
  return spec;
}

double Lookahead(const distill_config& config) {
  return config.lookahead_s > 0 ? config.lookahead_s : 0.3;
}

double Jitter(const distill_config& config) { return config.jitter_s > 0 ? config.jitter_s : 0.05; }

double LatencyS(const distill_config& config) {
  return Lookahead(config) + Jitter(config) + (config.timeline ? kTimelineControlMarginS : 0.0);
}

}  // namespace

Session::Session(const distill_config& config, Endpoint endpoint, ControlState initial)
    : timeline_(config.timeline != 0),
      spec_(SpecFromConfig(config)),
      lookahead_s_(Lookahead(config)),
      channels_(config.channels),
      max_frames_(config.max_frames),
      latency_frames_(static_cast<uint32_t>(std::lround(LatencyS(config) * config.sample_rate))),
      endpoint_(std::move(endpoint)),
      channel_(MakeChannel(endpoint_)),
      stub_(v1::DistillService::NewStub(channel_)),
      // Playback starts once the ring holds the latency; the ring also has room for the host's
      // largest block and a second more.
      playout_(config.channels, latency_frames_,
               static_cast<size_t>((LatencyS(config) + 1.0) * config.sample_rate) +
                   config.max_frames),
      controls_(64),
      state_(std::move(initial)) {
  network_ = std::thread(&Session::NetworkLoop, this);
}

Session::~Session() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_.store(true);
    if (context_) context_->TryCancel();
  }
  wake_.notify_all();
  network_.join();
}

int Session::Queue(Control control) {
  if (failed_.load()) return DISTILL_ERROR_ENDED;
  if (control.kind == Control::kSeek) control.generation = generation_.fetch_add(1) + 1;
  return controls_.Push(control) ? DISTILL_OK : DISTILL_ERROR_QUEUE_FULL;
}

Commands Session::Drain() {
  Commands c;
  Control control;
  while (controls_.Pop(&control)) {
    c.any = true;
    if (control.has_at && control.kind != Control::kSeek) {  // sent as it is, at its position
      positioned_.push_back(control);
      continue;
    }
    switch (control.kind) {
      case Control::kSeek:
        state_.start_position = control.at;
        state_.unpaced = control.unpaced;
        state_.generation = control.generation;
        positioned_.clear();  // the controls before a seek were for the session it ends
        play_.store(true);
        c.seek = true;
        c.stop = false;
        break;
      case Control::kSlider:
        state_.sliders[control.index] = control.position;
        state_.latent_is_latest = false;
        c.sliders = true;
        c.latent = false;
        break;
      case Control::kLatent:
        state_.latent.assign(control.latent, control.latent + control.latent_dim);
        state_.latent_is_latest = true;
        c.latent = true;
        c.sliders = false;
        break;
      case Control::kEvolution:
        state_.evolution = control.value;
        c.evolution = true;
        break;
      case Control::kWidth:
        state_.width = control.value;
        c.width = true;
        break;
      case Control::kStop:
        play_.store(false);
        c.stop = true;
        c.play = false;
        break;
      case Control::kPlay:
        play_.store(true);
        c.play = true;
        c.stop = false;
        break;
      case Control::kSeed:
        if (!state_.has_seed || state_.seed != control.seed) c.reseed = true;
        state_.has_seed = true;
        state_.seed = control.seed;
        break;
    }
  }
  return c;
}

void Session::SetError(const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  last_error_ = message;
}

bool Session::SleepUnlessClosing(double seconds) {
  std::unique_lock<std::mutex> lock(mutex_);
  return !wake_.wait_for(lock, std::chrono::duration<double>(seconds),
                         [this] { return closing_.load(); });
}

bool Session::WaitAt(uint32_t frames, int64_t position, double timeout_s) {
  const uint64_t want = generation_.load();
  const int64_t end = position + static_cast<int64_t>(frames);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    const bool wanted = ring_generation_.load(std::memory_order_acquire) == want;
    if (wanted && written_end_.load(std::memory_order_acquire) >= end) return true;
    // (an older session's end does not count: the seek's session is still to come)
    if ((wanted && playout_.ended()) || failed_.load() || closing_.load() ||
        std::chrono::steady_clock::now() >= until) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

uint32_t Session::Wait(uint32_t frames, double timeout_s) {
  if (frames == 0 || frames > max_frames_) return playout_.buffered();
  const size_t need = playout_.FramesNeeded(frames);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (playout_.buffered() < need && !playout_.ended() && !failed_.load() && !closing_.load() &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return playout_.buffered();
}

distill_state Session::State() const {
  if (failed_.load() && playout_.drained()) return DISTILL_STATE_FAILED;
  if (!play_.load() && playout_.drained()) return DISTILL_STATE_STOPPED;
  if (playout_.playing()) return DISTILL_STATE_PLAYING;
  return connected_.load() ? DISTILL_STATE_BUFFERING : DISTILL_STATE_CONNECTING;
}

void Session::GetStatus(distill_status* status) {
  std::memset(status, 0, sizeof *status);
  status->state = State();
  status->underruns = playout_.underruns();
  status->connects = connects_.load();
  status->frames_rendered = playout_.frames_rendered();
  status->frames_played = playout_.frames_played();
  status->frames_before_audio = playout_.frames_before_audio();
  status->frames_buffered = playout_.buffered();
  status->control_sent = sent_.load();
  status->control_heard = playout_.heard();
  status->seed = seed_.load();
  status->controls_refused = refused_.load();
  status->frames_late = playout_.frames_late();
  std::lock_guard<std::mutex> lock(mutex_);
  std::snprintf(status->last_error, sizeof status->last_error, "%s", last_error_.c_str());
}

v1::GenerateLiveRequest Session::StartRequest() const {
  v1::GenerateLiveRequest request;
  v1::LiveStart* start = request.mutable_start();
  start->set_lookahead_s(lookahead_s_);
  v1::GenerationSpec* spec = start->mutable_spec();
  *spec = spec_;
  if (state_.has_seed) {
    spec->set_seed(state_.seed);
  } else if (seed_.load() != 0) {  // reopened: the seed the server picked the first time
    spec->set_seed(seed_.load());
  }
  if (spec_.mode() == v1::CHUNK_MODE_SLIDER) {  // the start point: the controls in force
    if (state_.latent_is_latest && !state_.latent.empty()) {
      for (float v : state_.latent) spec->mutable_latent()->add_values(v);
    } else {
      v1::SliderPositions* sliders = spec->mutable_sliders();
      for (const auto& [index, position] : state_.sliders) {
        v1::SliderPosition* p = sliders->add_positions();
        p->set_index(index);
        p->set_position(position);
      }
    }
    if (state_.evolution >= 0) spec->set_evolution_amount(state_.evolution);
  }
  if (state_.width >= 0 && channels_ == 2) spec->set_stereo_width(state_.width);
  if (timeline_) {
    start->set_start_position(state_.start_position);
    start->set_unpaced(state_.unpaced);
    // the client plays the session's first frame once its latency has passed
    start->set_playout_delay_s(static_cast<double>(latency_frames_) / spec_.sample_rate());
  }
  return request;
}

void Session::NetworkLoop() {
  double backoff = kFirstBackoffS;
  while (!closing_.load()) {
    if (!play_.load()) {  // stopped: controls only change what the next session starts with
      Drain();
      SleepUnlessClosing(kControlPollS);
      continue;
    }
    bool got_audio = false;
    double retry_after = 0;
    Outcome outcome = RunCall(&got_audio, &retry_after);
    connected_.store(false);
    if (outcome == Outcome::kClosing) break;
    if (outcome == Outcome::kFailed) {
      failed_.store(true);
      break;
    }
    if (outcome == Outcome::kStopped) {
      playout_.MarkEnded();
      continue;  // stop, or a new seed (play_ still set: the next session starts at once)
    }
    if (got_audio) backoff = kFirstBackoffS;
    const uint64_t seeks = state_.generation;
    // Wait before retrying; a stop or play meanwhile is honoured by the loop's next pass.
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(std::max(backoff, retry_after));
    while (!closing_.load() && play_.load() && std::chrono::steady_clock::now() < until) {
      Drain();
      SleepUnlessClosing(kControlPollS);
    }
    backoff = std::min(2 * backoff, kMaxBackoffS);
    if (timeline_ && state_.generation == seeks) {
      // The new session continues the timeline where the host will be when its audio comes.
      state_.start_position = static_cast<uint64_t>(
          std::max<int64_t>(0, playout_.next_position() + latency_frames_));
    }
  }
  playout_.MarkEnded();
}

Session::Outcome Session::RunCall(bool* got_audio, double* retry_after_s) {
  grpc::ClientContext context;
  AddToken(endpoint_, &context);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closing_.load()) return Outcome::kClosing;
    context_ = &context;
  }
  auto stream = stub_->GenerateLive(&context);
  connects_.fetch_add(1);
  playout_.ClearEnded();
  const bool fade_in = !first_session_ && !timeline_;  // a timeline's samples stay as they are
  first_session_ = false;
  const uint64_t generation = state_.generation;
  std::atomic<bool> restart{false};
  const uint64_t base_sequence = sequence_;  // the start carries every control up to here
  bool first_audio = true;
  bool ended_by_stop = false;
  std::atomic<bool> call_done{false};
  std::thread writer;
  if (stream->Write(StartRequest())) {
    writer = std::thread(&Session::WriterLoop, this, stream.get(), &call_done, &restart);
    v1::GenerateLiveResponse message;
    while (stream->Read(&message)) {
      if (message.has_header()) {
        seed_.store(message.header().seed());
        connected_.store(true);
      } else if (message.has_audio()) {
        const v1::AudioChunk& chunk = message.audio();
        uint64_t heard = std::max<uint64_t>(chunk.control_sequence(), base_sequence);
        if (first_audio || chunk.control_sequence() > base_sequence) {
          playout_.marks().Push(ControlMark{pushed_frames_, heard});
        }
        const bool fade = fade_in && first_audio;  // this session's first block
        if (timeline_ && first_audio) {
          playout_.sessions().Push(
              SessionMark{pushed_frames_, static_cast<int64_t>(chunk.position())});
        }
        first_audio = false;
        *got_audio = true;
        if (!PushAudio(chunk, fade)) {  // closing
          context.TryCancel();
          break;
        }
        if (timeline_) {
          const size_t frames = chunk.data().size() / sizeof(float) / channels_;
          written_end_.store(static_cast<int64_t>(chunk.position() + frames),
                             std::memory_order_release);
          ring_generation_.store(generation, std::memory_order_release);
        }
      } else if (message.has_refused()) {
        refused_.fetch_add(1);
        SetError("control " + std::to_string(message.refused().sequence()) + " refused: " +
                 message.refused().code() + ": " + message.refused().message());
      } else if (message.has_end()) {
        ended_by_stop = message.end().reason() == "stop";
      }
    }
  }
  call_done.store(true);
  if (writer.joinable()) writer.join();
  grpc::Status status = stream->Finish();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    context_ = nullptr;
  }
  if (closing_.load()) return Outcome::kClosing;
  if (restart.load() && timeline_) return Outcome::kStopped;  // a seek
  if (status.ok() && (ended_by_stop || !play_.load() || restart.load())) return Outcome::kStopped;
  std::string message = std::string(CodeName(status.error_code())) + ": " + status.error_message();
  if (status.ok()) message = "the server ended the session";
  SetError(message);
  if (!status.ok() && Permanent(status.error_code())) return Outcome::kFailed;
  for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
    if (key == "retry-after-ms") *retry_after_s = std::atof(std::string(value.data(), value.size()).c_str()) / 1000;
  }
  return Outcome::kRetry;
}

bool Session::PushAudio(const v1::AudioChunk& chunk, bool fade_in) {
  const std::string& data = chunk.data();
  size_t samples = data.size() / sizeof(float);
  scratch_.resize(samples);
  std::memcpy(scratch_.data(), data.data(), samples * sizeof(float));
  if (fade_in) {  // a new session after another: no click where the old one faded out
    size_t frames = std::min<size_t>(samples / channels_, Playout::kFadeFrames);
    for (size_t i = 0; i < frames; ++i) {
      for (size_t c = 0; c < channels_; ++c) {
        scratch_[i * channels_ + c] *= static_cast<float>(i) / Playout::kFadeFrames;
      }
    }
  }
  size_t done = 0;
  while (done < samples) {
    size_t room = playout_.audio().Writable();
    room -= room % channels_;  // whole frames only
    if (room == 0) {
      if (closing_.load()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the host is not pulling
      continue;
    }
    size_t n = std::min(room, samples - done);
    playout_.audio().Write(scratch_.data() + done, n);
    done += n;
  }
  pushed_frames_ += samples / channels_;
  return true;
}

void Session::WriterLoop(
    grpc::ClientReaderWriter<v1::GenerateLiveRequest, v1::GenerateLiveResponse>* stream,
    const std::atomic<bool>* call_done, std::atomic<bool>* restart) {
  while (!call_done->load() && !closing_.load()) {
    // Everything queued since the last pass goes out as one LiveControl; a timeline's
    // controls with a position each as their own, in order.
    Commands c = Drain();
    if (c.seek) {  // the call ends at once; the next session starts at the seek's position
      restart->store(true);
      std::lock_guard<std::mutex> lock(mutex_);
      if (context_) context_->TryCancel();
      return;
    }
    for (const Control& control : positioned_) {
      v1::GenerateLiveRequest request;
      v1::LiveControl* live = request.mutable_control();
      live->set_position(control.at);
      if (control.kind == Control::kSlider) {
        v1::SliderPosition* p = live->mutable_sliders()->add_positions();
        p->set_index(control.index);
        p->set_position(control.position);
      } else if (control.kind == Control::kEvolution) {
        live->set_evolution_amount(control.value);
      } else if (control.kind == Control::kWidth && channels_ == 2) {
        live->set_stereo_width(control.value);
      } else {
        continue;
      }
      live->set_sequence(++sequence_);
      if (!stream->Write(request)) return;
      sent_.store(sequence_);
    }
    positioned_.clear();
    if (c.any && (c.sliders || c.latent || c.evolution || c.width || c.stop || c.reseed)) {
      v1::GenerateLiveRequest request;
      v1::LiveControl* live = request.mutable_control();
      if (c.sliders) {  // every slider in force (the server keeps the others anyway)
        for (const auto& [index, position] : state_.sliders) {
          v1::SliderPosition* p = live->mutable_sliders()->add_positions();
          p->set_index(index);
          p->set_position(position);
        }
      } else if (c.latent) {
        for (float v : state_.latent) live->mutable_latent()->add_values(v);
      }
      if (c.evolution) live->set_evolution_amount(state_.evolution);
      if (c.width && channels_ == 2) live->set_stereo_width(state_.width);
      // A new seed ends this session (faded out) and starts the next on it.
      const bool stop = c.stop || c.reseed;
      if (c.reseed) restart->store(true);
      live->set_stop(stop);
      live->set_sequence(++sequence_);
      if (!stream->Write(request)) return;  // the call has ended
      sent_.store(sequence_);
      if (stop) {
        stream->WritesDone();
        return;
      }
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(kControlPollS));
  }
}

}  // namespace distill
