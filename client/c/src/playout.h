// Playout: the audio thread's side of a session. It reads interleaved audio from the ring
// that the network thread fills and writes it into the host's channel arrays, holding silence
// until it holds start_frames (the server's lookahead plus the jitter margin), fading out (kFadeFrames) when the ring is about to run
// dry and back in when audio returns. Nothing here locks, allocates or blocks.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "queues.h"

namespace distill {

// Where a control first takes effect: the ring position (in frames) of the first audio that
// reflects control `sequence`.
struct ControlMark {
  uint64_t frame;
  uint64_t sequence;
};

// Timeline sessions: the ring frame where a session's audio starts, and its position.
struct SessionMark {
  uint64_t frame;
  int64_t position;
};

class Playout {
 public:
  static constexpr uint32_t kFadeFrames = 64;

  Playout(uint32_t channels, uint32_t start_frames, size_t ring_frames)
      : channels_(channels),
        start_frames_(start_frames),
        audio_(ring_frames * channels),
        marks_(256),
        sessions_(64) {}

  // --- network thread ---
  SpscRing<float>& audio() { return audio_; }
  SpscRing<ControlMark>& marks() { return marks_; }
  SpscRing<SessionMark>& sessions() { return sessions_; }
  // No more audio will come (the session was stopped or refused for good).
  void MarkEnded() { ended_.store(true, std::memory_order_release); }
  // A new session starts: its audio follows whatever is still in the ring.
  void ClearEnded() { ended_.store(false, std::memory_order_release); }

  // --- audio thread ---
  // Writes frame i of channel c to out[c][i * stride] (stride 1: one array per channel;
  // out[c] = buffer + c with stride = channels: interleaved).
  uint32_t Render(float* const* out, uint32_t frames, uint32_t stride) {
    const bool ended = ended_.load(std::memory_order_acquire);
    const size_t available = audio_.Readable() / channels_;
    if (!playing_ && (available >= start_frames_ || (ended && available > 0))) {
      playing_ = true;
      fade_in_left_ = started_ ? kFadeFrames : 0;  // the very first audio is the server's as is
    }
    uint32_t n = 0;
    if (playing_) {
      started_ = true;
      // About to run dry: play what there is and fade it out, instead of a click next time.
      const bool dry = !ended && available < static_cast<size_t>(frames) + kFadeFrames;
      n = static_cast<uint32_t>(std::min<size_t>(frames, available));
      const uint32_t fade_out = dry ? std::min(n, kFadeFrames) : 0;
      for (uint32_t i = 0; i < n; ++i) {
        float gain = 1.0f;
        if (fade_in_left_ > 0) {
          gain = static_cast<float>(kFadeFrames - fade_in_left_) / kFadeFrames;
          --fade_in_left_;
        }
        if (fade_out > 0 && i >= n - fade_out) {
          gain *= static_cast<float>(n - 1 - i) / static_cast<float>(fade_out);
        }
        for (uint32_t c = 0; c < channels_; ++c) {
          out[c][static_cast<size_t>(i) * stride] = audio_.Peek(static_cast<size_t>(i) * channels_ + c) * gain;
        }
      }
      audio_.Consume(static_cast<size_t>(n) * channels_);
      consumed_ += n;
      if (dry) {
        playing_ = false;
        underruns_.fetch_add(1, std::memory_order_relaxed);
      } else if (ended && available == n) {
        playing_ = false;
      }
    } else if (!started_) {
      frames_before_audio_.fetch_add(frames, std::memory_order_relaxed);
    }
    for (uint32_t c = 0; c < channels_; ++c) {
      for (uint32_t i = n; i < frames; ++i) out[c][static_cast<size_t>(i) * stride] = 0.0f;
    }
    return Rendered(frames, n);
  }

  // Timeline sessions: the ring's audio at positions [position, position + frames). The
  // newest session's audio only (older sessions' frames are dropped); frames that came after
  // their position was rendered are dropped (late); positions with no audio are silence, an
  // underrun when the audio stops before the session has ended. After an underrun the audio
  // fades back in; otherwise the samples are the server's as they are.
  uint32_t RenderAt(float* const* out, uint32_t frames, uint32_t stride, int64_t position) {
    while (sessions_.Readable() > 0) {  // a newer session's audio has begun: skip to it
      const SessionMark mark = sessions_.Peek(0);
      Skip(mark.frame - consumed_);
      // Its first audio came after the host had played its start (as silence): an underrun.
      if (asked_ > mark.position) underruns_.fetch_add(1, std::memory_order_relaxed);
      have_session_ = true;
      session_frame_ = mark.frame;
      session_position_ = mark.position;
      sessions_.Consume(1);
    }
    const bool ended = ended_.load(std::memory_order_acquire);
    size_t available = audio_.Readable() / channels_;
    int64_t next = session_position_ + static_cast<int64_t>(consumed_ - session_frame_);
    if (have_session_ && next < position) {  // arrived too late for its position
      const size_t late = std::min<size_t>(available, static_cast<size_t>(position - next));
      Skip(late);
      frames_late_.fetch_add(late, std::memory_order_relaxed);
      available -= late;
      next += static_cast<int64_t>(late);
    }
    uint32_t lead = frames;  // silence before the audio
    uint32_t n = 0;
    if (have_session_ && next >= position && next < position + static_cast<int64_t>(frames)) {
      lead = static_cast<uint32_t>(next - position);
      n = static_cast<uint32_t>(std::min<size_t>(frames - lead, available));
    }
    for (uint32_t c = 0; c < channels_; ++c) {
      for (uint32_t i = 0; i < lead; ++i) out[c][static_cast<size_t>(i) * stride] = 0.0f;
    }
    for (uint32_t i = 0; i < n; ++i) {
      float gain = 1.0f;
      if (fade_in_left_ > 0) {
        gain = static_cast<float>(kFadeFrames - fade_in_left_) / kFadeFrames;
        --fade_in_left_;
      }
      for (uint32_t c = 0; c < channels_; ++c) {
        out[c][static_cast<size_t>(lead + i) * stride] =
            audio_.Peek(static_cast<size_t>(i) * channels_ + c) * gain;
      }
    }
    Skip(n);
    for (uint32_t c = 0; c < channels_; ++c) {
      for (uint32_t i = lead + n; i < frames; ++i) out[c][static_cast<size_t>(i) * stride] = 0.0f;
    }
    // the session's audio should have been in this window but ran out
    const bool ran_dry =
        have_session_ && next < position + static_cast<int64_t>(frames) && lead + n < frames;
    if (ran_dry && !ended) {
      if (playing_) underruns_.fetch_add(1, std::memory_order_relaxed);
      playing_ = false;
      fade_in_left_ = kFadeFrames;
    } else if (ran_dry) {  // the session's audio has all played
      playing_ = false;
    } else if (n > 0) {
      playing_ = true;
    }
    asked_ = position + static_cast<int64_t>(frames);
    next_position_.store(asked_, std::memory_order_relaxed);
    if (n > 0) started_ = true;
    if (!started_) frames_before_audio_.fetch_add(frames, std::memory_order_relaxed);
    return Rendered(frames, n);
  }

  // Frames the ring must hold for the next Render of `frames` to play the server's audio to
  // its end (no silence, no fade-out): once playing, the block and the fade-out's lookahead;
  // before, also the start_frames playback waits for.
  size_t FramesNeeded(uint32_t frames) const {
    const size_t block = static_cast<size_t>(frames) + kFadeFrames;
    return playing_ ? block : std::max<size_t>(block, start_frames_);
  }

  // --- any thread (status) ---
  bool ended() const { return ended_.load(std::memory_order_acquire); }
  bool playing() const { return playing_now_.load(std::memory_order_relaxed); }
  bool drained() const {
    return ended_.load(std::memory_order_acquire) && audio_.Readable() == 0 && !playing();
  }
  uint64_t underruns() const { return underruns_.load(std::memory_order_relaxed); }
  uint64_t frames_rendered() const { return frames_rendered_.load(std::memory_order_relaxed); }
  uint64_t frames_played() const { return frames_played_.load(std::memory_order_relaxed); }
  uint64_t frames_before_audio() const {
    return frames_before_audio_.load(std::memory_order_relaxed);
  }
  uint64_t heard() const { return heard_.load(std::memory_order_relaxed); }
  uint32_t buffered() const { return static_cast<uint32_t>(audio_.Readable() / channels_); }
  uint64_t frames_late() const { return frames_late_.load(std::memory_order_relaxed); }
  // Timeline: the position after the last one RenderAt was asked for.
  int64_t next_position() const { return next_position_.load(std::memory_order_relaxed); }

 private:
  // After a render of `frames` frames, `n` of them the server's: the controls heard (the
  // marks up to the frames played so far) and the meters. Returns n.
  uint32_t Rendered(uint32_t frames, uint32_t n) {
    while (marks_.Readable() > 0 && marks_.Peek(0).frame < consumed_) {
      heard_.store(marks_.Peek(0).sequence, std::memory_order_relaxed);
      marks_.Consume(1);
    }
    playing_now_.store(playing_, std::memory_order_relaxed);
    frames_rendered_.fetch_add(frames, std::memory_order_relaxed);
    frames_played_.fetch_add(n, std::memory_order_relaxed);
    return n;
  }

  void Skip(size_t frames) {
    audio_.Consume(frames * channels_);
    consumed_ += frames;
  }

  const uint32_t channels_;
  const uint32_t start_frames_;
  SpscRing<float> audio_;
  SpscRing<ControlMark> marks_;
  SpscRing<SessionMark> sessions_;
  std::atomic<bool> ended_{false};
  // Audio thread only.
  bool playing_ = false;
  bool started_ = false;
  uint32_t fade_in_left_ = 0;
  uint64_t consumed_ = 0;
  bool have_session_ = false;  // timeline: a session's audio has begun
  int64_t asked_ = INT64_MIN;  // timeline: the position after the last one rendered
  uint64_t session_frame_ = 0;
  int64_t session_position_ = 0;
  // Written by the audio thread, read by status.
  std::atomic<bool> playing_now_{false};
  std::atomic<uint64_t> underruns_{0};
  std::atomic<uint64_t> frames_rendered_{0};
  std::atomic<uint64_t> frames_played_{0};
  std::atomic<uint64_t> frames_before_audio_{0};
  std::atomic<uint64_t> heard_{0};
  std::atomic<uint64_t> frames_late_{0};
  std::atomic<int64_t> next_position_{0};
};

}  // namespace distill
