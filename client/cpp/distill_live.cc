// distill_live: a live session (DistillService.GenerateLive) steered from stdin, as a game
// engine or DAW plug-in would run one: an audio thread reads blocks into its ring buffer
// (here: appends them to a WAV), while the UI thread sends control changes.
//
//   distill_live --server 127.0.0.1:50051 --mode slider --slider 0=4 [--seed 7] [--rate 48000]
//       [--encoding pcm16|pcm24|float32] [--stereo] [--lookahead 0.3] [--timeout S] -o out.wav
//
// Control lines on stdin: "slider I=P [I=P ...]", "evolution E", "width W", "wait SECONDS",
// "stop". End of input stops the session (the server fades out and ends the stream).
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "distill_serve/v1/distill.grpc.pb.h"
#include "common.h"

namespace v1 = distill_serve::v1;

namespace {

struct Options {
  std::string server = "127.0.0.1:50051";
  std::string mode = "slider";
  bool has_seed = false;
  uint64_t seed = 0;
  uint32_t rate = 0;
  std::string encoding = "pcm16";
  bool stereo = false;
  std::map<uint32_t, int32_t> sliders;
  double lookahead = 0.3;
  double timeout = 600;
  std::string output;
};

int Usage(const std::string& why) {
  std::cerr << "distill_live: " << why << "\n"
            << "usage: distill_live --server HOST:PORT --mode crossfade|latent_interp|slider"
               " [--seed N] [--rate R] [--encoding pcm16|pcm24|float32] [--stereo]"
               " [--slider INDEX=POS ...] [--lookahead S] [--timeout S] -o out.wav"
               "  (control lines on stdin)\n";
  return 2;
}

bool ParseSlider(const std::string& v, std::map<uint32_t, int32_t>* out) {
  auto eq = v.find('=');
  if (eq == std::string::npos) return false;
  (*out)[std::atoi(v.substr(0, eq).c_str())] = std::atoi(v.substr(eq + 1).c_str());
  return true;
}

bool Parse(int argc, char** argv, Options* o, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--stereo") { o->stereo = true; continue; }
    if (i + 1 >= argc) { *error = a + " needs a value"; return false; }
    std::string v = argv[++i];
    if (a == "--server") o->server = v;
    else if (a == "--mode") o->mode = v;
    else if (a == "--seed") { o->has_seed = true; o->seed = std::strtoull(v.c_str(), nullptr, 10); }
    else if (a == "--rate") o->rate = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (a == "--encoding") o->encoding = v;
    else if (a == "--lookahead") o->lookahead = std::atof(v.c_str());
    else if (a == "--timeout") o->timeout = std::atof(v.c_str());
    else if (a == "-o" || a == "--output") o->output = v;
    else if (a == "--slider") {
      if (!ParseSlider(v, &o->sliders)) { *error = "--slider wants INDEX=POS"; return false; }
    } else { *error = "unknown option " + a; return false; }
  }
  if (o->output.empty()) { *error = "-o out.wav is required"; return false; }
  return true;
}

using Stream = grpc::ClientReaderWriter<v1::GenerateLiveRequest, v1::GenerateLiveResponse>;

// The UI thread: one LiveControl per control line, numbered from 1. Returns after "stop" or
// at the end of input (which also stops), then half-closes the request stream.
void SendControls(Stream* stream) {
  uint64_t sequence = 0;
  std::string line;
  bool stopped = false;
  while (!stopped && std::getline(std::cin, line)) {
    std::istringstream words(line);
    std::string verb;
    if (!(words >> verb) || verb[0] == '#') continue;
    v1::GenerateLiveRequest request;
    v1::LiveControl* control = request.mutable_control();
    std::string word;
    if (verb == "wait") {
      double seconds = 0;
      words >> seconds;
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
      continue;
    } else if (verb == "slider") {
      std::map<uint32_t, int32_t> moved;
      while (words >> word) ParseSlider(word, &moved);
      for (const auto& [index, position] : moved) {
        v1::SliderPosition* p = control->mutable_sliders()->add_positions();
        p->set_index(index);
        p->set_position(position);
      }
    } else if (verb == "evolution" && words >> word) {
      control->set_evolution_amount(std::stof(word));
    } else if (verb == "width" && words >> word) {
      control->set_stereo_width(std::stof(word));
    } else if (verb == "stop") {
      control->set_stop(true);
      stopped = true;
    } else {
      std::cerr << "distill_live: not a control line: " << line << "\n";
      continue;
    }
    control->set_sequence(++sequence);
    if (!stream->Write(request)) return;  // the call has ended
  }
  if (!stopped) {
    v1::GenerateLiveRequest request;
    request.mutable_control()->set_sequence(++sequence);
    request.mutable_control()->set_stop(true);
    stream->Write(request);
  }
  stream->WritesDone();
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

  v1::GenerateLiveRequest start;
  v1::LiveStart* live = start.mutable_start();
  live->set_lookahead_s(o.lookahead);
  v1::GenerationSpec* spec = live->mutable_spec();  // duration_s stays 0: open-ended
  spec->set_mode(kModes.at(o.mode));
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
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)));
  std::unique_ptr<Stream> stream = stub->GenerateLive(&context);
  if (!stream->Write(start)) {
    std::cerr << "distill_live: could not start the session\n";
    return 1;
  }
  std::thread ui(SendControls, stream.get());  // controls go out while audio comes in

  // The audio thread's loop: each block would go into the device's ring buffer.
  v1::GenerateLiveResponse message;
  v1::StreamHeader header;
  std::string audio;
  uint64_t frames = 0, unsteered_frames = 0;
  std::string reason;
  while (stream->Read(&message)) {
    if (message.has_header()) header = message.header();
    if (message.has_audio()) {
      const v1::AudioChunk& chunk = message.audio();
      if (chunk.control_sequence() == 0) unsteered_frames += chunk.num_samples();
      frames += chunk.num_samples();
      audio += chunk.data();
    }
    if (message.has_end()) reason = message.end().reason();
  }
  grpc::Status status = stream->Finish();
  // The UI thread may still be blocked on stdin (the server ended the session first): leave
  // without unwinding, so nothing it could still touch is destroyed under it.
  ui.detach();
  if (!status.ok()) {
    std::cerr << "distill_live: server ended the session: " << status.error_code() << ": "
              << status.error_message() << std::endl;
    std::_Exit(1);
  }
  const auto& format = header.format();
  distill_example::WriteWav(o.output, audio, format.sample_rate(), format.channels(),
           kEncodings.at(o.encoding).second, o.encoding == "float32");
  std::cout << "wrote " << o.output << ": " << frames << " frames, " << format.sample_rate()
            << " Hz, " << format.channels() << " ch; seed " << header.seed() << "; "
            << unsteered_frames << " frames before the first control; ended by " << reason
            << std::endl;
  std::_Exit(0);
}
