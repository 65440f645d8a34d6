// distill_generate: call DistillService.GenerateStream and write the audio to a WAV file.
//
//   distill_generate --server 127.0.0.1:50051 --mode crossfade --duration 5 [--seed 7]
//       [--model NAME] [--rate 48000] [--encoding pcm16|pcm24|float32|opus] [--bitrate BPS]
//       [--stereo] [--slider INDEX=POS ...] [--timeout SECONDS] -o out.wav
//
// Streaming contract: a StreamHeader, then AudioChunks (interleaved little-endian samples),
// then a StreamEnd. Blocks can be played as they arrive; here they are appended to the file.
// With --encoding opus the chunks carry raw Opus packets, decoded here with libopus as they
// arrive (the header's pre-skip dropped, the total length kept) into a float WAV.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include <grpcpp/grpcpp.h>
#include <opus/opus.h>

#include "distill_serve/v1/distill.grpc.pb.h"
#include "common.h"

namespace v1 = distill_serve::v1;

namespace {

struct Options {
  std::string server = "127.0.0.1:50051";
  std::string mode = "crossfade";
  double duration = 0;
  bool has_seed = false;
  uint64_t seed = 0;
  uint32_t rate = 0;
  std::string encoding = "pcm16";
  std::string model;
  uint32_t bitrate = 0;
  bool stereo = false;
  std::map<uint32_t, int32_t> sliders;
  double timeout = 120;
  std::string output;
};

int Usage(const std::string& why) {
  std::cerr << "distill_generate: " << why << "\n"
            << "usage: distill_generate --server HOST:PORT --mode crossfade|latent_interp|slider"
               " --duration S [--seed N] [--model NAME] [--rate R]"
               " [--encoding pcm16|pcm24|float32|opus] [--bitrate BPS] [--stereo]"
               " [--slider INDEX=POS ...] [--timeout S] -o out.wav\n";
  return 2;
}

bool Parse(int argc, char** argv, Options* o, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) { *error = a + " needs a value"; return false; }
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--stereo") { o->stereo = true; continue; }
    if (!value(&v)) return false;
    if (a == "--server") o->server = v;
    else if (a == "--mode") o->mode = v;
    else if (a == "--duration") o->duration = std::atof(v.c_str());
    else if (a == "--seed") { o->has_seed = true; o->seed = std::strtoull(v.c_str(), nullptr, 10); }
    else if (a == "--rate") o->rate = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (a == "--encoding") o->encoding = v;
    else if (a == "--model") o->model = v;
    else if (a == "--bitrate") o->bitrate = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (a == "--timeout") o->timeout = std::atof(v.c_str());
    else if (a == "-o" || a == "--output") o->output = v;
    else if (a == "--slider") {
      auto eq = v.find('=');
      if (eq == std::string::npos) { *error = "--slider wants INDEX=POS"; return false; }
      o->sliders[std::atoi(v.substr(0, eq).c_str())] = std::atoi(v.substr(eq + 1).c_str());
    } else { *error = "unknown option " + a; return false; }
  }
  if (o->output.empty()) { *error = "-o out.wav is required"; return false; }
  return true;
}

// Decodes a stream's Opus packets with libopus, in order, as RFC 7845 says: the first
// pre_skip (48 kHz samples, scaled to the stream's rate) decoded frames are dropped.
class OpusStream {
 public:
  bool Start(const v1::StreamHeader& header, std::string* error) {
    rate_ = header.format().sample_rate();
    channels_ = static_cast<int>(header.opus().channels());
    skip_ = static_cast<uint64_t>(header.opus().pre_skip()) * rate_ / 48000;
    int err = OPUS_OK;
    decoder_ = opus_decoder_create(static_cast<opus_int32>(rate_), channels_, &err);
    if (err != OPUS_OK) { *error = opus_strerror(err); return false; }
    return true;
  }
  ~OpusStream() { if (decoder_) opus_decoder_destroy(decoder_); }

  // Appends the packet's audio (interleaved float32, little-endian as on x86/ARM) to *out.
  bool Decode(const std::string& packet, std::string* out, std::string* error) {
    float pcm[5760 * 2];  // 120 ms at 48 kHz, stereo: the largest Opus frame
    int n = opus_decode_float(decoder_, reinterpret_cast<const unsigned char*>(packet.data()),
                              static_cast<opus_int32>(packet.size()), pcm, 5760, 0);
    if (n < 0) { *error = opus_strerror(n); return false; }
    uint64_t drop = std::min<uint64_t>(skip_, static_cast<uint64_t>(n));
    skip_ -= drop;
    out->append(reinterpret_cast<const char*>(pcm + drop * channels_),
                (n - drop) * channels_ * sizeof(float));
    return true;
  }

 private:
  OpusDecoder* decoder_ = nullptr;
  uint32_t rate_ = 0;
  int channels_ = 1;
  uint64_t skip_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string error;
  if (!Parse(argc, argv, &o, &error)) return Usage(error);

  const auto& kModes = distill_example::Modes();
  const auto& kEncodings = distill_example::Encodings();
  const bool opus = o.encoding == "opus";
  if (!kModes.count(o.mode)) return Usage("unknown mode " + o.mode);
  if (!opus && !kEncodings.count(o.encoding)) return Usage("unknown encoding " + o.encoding);

  v1::GenerateStreamRequest request;
  v1::GenerationSpec* spec = request.mutable_spec();
  spec->set_mode(kModes.at(o.mode));
  spec->set_duration_s(o.duration);
  if (o.has_seed) spec->set_seed(o.seed);
  spec->set_sample_rate(o.rate);
  spec->set_encoding(opus ? v1::AUDIO_ENCODING_OPUS : kEncodings.at(o.encoding).first);
  spec->set_model(o.model);
  if (o.bitrate) spec->set_bitrate_bps(o.bitrate);
  spec->set_spatial(o.stereo ? v1::SPATIAL_MODE_STEREO_MID_SIDE : v1::SPATIAL_MODE_MONO);
  for (const auto& [index, position] : o.sliders) {
    v1::SliderPosition* p = spec->mutable_sliders()->add_positions();
    p->set_index(index);
    p->set_position(position);
  }

  auto channel = grpc::CreateChannel(o.server, grpc::InsecureChannelCredentials());
  auto stub = v1::DistillService::NewStub(channel);
  grpc::ClientContext context;
  auto start = std::chrono::steady_clock::now();
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)));
  auto reader = stub->GenerateStream(&context, request);

  v1::GenerateStreamResponse message;
  v1::StreamHeader header;
  OpusStream opus_stream;
  std::string audio;
  double first_audio_s = -1;
  uint64_t expected_offset = 0;
  while (reader->Read(&message)) {
    switch (message.event_case()) {
      case v1::GenerateStreamResponse::kHeader:
        header = message.header();
        if (opus && !opus_stream.Start(header, &error)) {
          std::cerr << "distill_generate: libopus: " << error << "\n";
          return 1;
        }
        break;
      case v1::GenerateStreamResponse::kAudio: {
        const v1::AudioChunk& chunk = message.audio();
        if (first_audio_s < 0) {
          first_audio_s = std::chrono::duration<double>(
              std::chrono::steady_clock::now() - start).count();
        }
        if (chunk.sample_offset() != expected_offset) {
          std::cerr << "distill_generate: out-of-order chunk " << chunk.sequence() << "\n";
          return 1;
        }
        expected_offset += chunk.num_samples();
        audio += chunk.data();  // a player would queue this block for playback here
        for (const std::string& packet : chunk.packets()) {
          if (!opus_stream.Decode(packet, &audio, &error)) {
            std::cerr << "distill_generate: libopus: " << error << "\n";
            return 1;
          }
        }
        break;
      }
      case v1::GenerateStreamResponse::kEnd:
        break;
      default:
        break;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::cerr << "distill_generate: server refused the request: "
              << status.error_code() << ": " << status.error_message() << "\n";
    return 1;
  }
  const auto& format = header.format();
  uint32_t bytes = opus ? 4 : kEncodings.at(o.encoding).second;
  uint64_t frames = audio.size() / (bytes * format.channels());
  if (opus) {  // the last packet's padding: keep the stream's length
    frames = std::min<uint64_t>(frames, format.total_samples());
    audio.resize(frames * bytes * format.channels());
  }
  distill_example::WriteWav(o.output, audio, format.sample_rate(), format.channels(), bytes,
           opus || o.encoding == "float32");
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "wrote " << o.output << ": " << frames << " frames, "
            << format.sample_rate() << " Hz, " << format.channels() << " ch; seed "
            << header.seed() << "; first audio " << first_audio_s << " s, total " << total_s
            << " s\n";
  return frames == format.total_samples() ? 0 : 1;
}
