// distill_generate: call DistillService.GenerateStream and write the audio to a WAV file.
//
//   distill_generate --server 127.0.0.1:50051 --mode crossfade --duration 5 [--seed 7]
//       [--rate 48000] [--encoding pcm16|pcm24|float32] [--stereo] [--slider INDEX=POS ...]
//       [--timeout SECONDS] -o out.wav
//
// Streaming contract: a StreamHeader, then AudioChunks (interleaved little-endian samples),
// then a StreamEnd. Blocks can be played as they arrive; here they are appended to the file.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include <grpcpp/grpcpp.h>

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
  bool stereo = false;
  std::map<uint32_t, int32_t> sliders;
  double timeout = 120;
  std::string output;
};

int Usage(const std::string& why) {
  std::cerr << "distill_generate: " << why << "\n"
            << "usage: distill_generate --server HOST:PORT --mode crossfade|latent_interp|slider"
               " --duration S [--seed N] [--rate R] [--encoding pcm16|pcm24|float32] [--stereo]"
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

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string error;
  if (!Parse(argc, argv, &o, &error)) return Usage(error);

  const auto& kModes = distill_example::Modes();
  const auto& kEncodings = distill_example::Encodings();
  if (!kModes.count(o.mode)) return Usage("unknown mode " + o.mode);
  if (!kEncodings.count(o.encoding)) return Usage("unknown encoding " + o.encoding);

  v1::GenerateStreamRequest request;
  v1::GenerationSpec* spec = request.mutable_spec();
  spec->set_mode(kModes.at(o.mode));
  spec->set_duration_s(o.duration);
  if (o.has_seed) spec->set_seed(o.seed);
  spec->set_sample_rate(o.rate);
  spec->set_encoding(kEncodings.at(o.encoding).first);
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
  std::string audio;
  double first_audio_s = -1;
  uint64_t expected_offset = 0;
  while (reader->Read(&message)) {
    switch (message.event_case()) {
      case v1::GenerateStreamResponse::kHeader:
        header = message.header();
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
  uint32_t bytes = kEncodings.at(o.encoding).second;
  distill_example::WriteWav(o.output, audio, format.sample_rate(), format.channels(), bytes,
           o.encoding == "float32");
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "wrote " << o.output << ": " << expected_offset << " frames, "
            << format.sample_rate() << " Hz, " << format.channels() << " ch; seed "
            << header.seed() << "; first audio " << first_audio_s << " s, total " << total_s
            << " s\n";
  return expected_offset == format.total_samples() ? 0 : 1;
}
