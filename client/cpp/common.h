// What the C++ examples (client/cpp) share: the names their command lines take for chunk
// modes and encodings, and WAV output.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <utility>

#include "distill_serve/v1/distill.pb.h"

namespace distill_example {

namespace v1 = distill_serve::v1;

inline const std::map<std::string, v1::ChunkMode>& Modes() {
  static const std::map<std::string, v1::ChunkMode> modes = {
      {"crossfade", v1::CHUNK_MODE_CROSSFADE},
      {"latent_interp", v1::CHUNK_MODE_LATENT_INTERP},
      {"slider", v1::CHUNK_MODE_SLIDER}};
  return modes;
}

// Encoding name -> (enum, bytes per sample).
inline const std::map<std::string, std::pair<v1::AudioEncoding, uint32_t>>& Encodings() {
  static const std::map<std::string, std::pair<v1::AudioEncoding, uint32_t>> encodings = {
      {"pcm16", {v1::AUDIO_ENCODING_PCM16, 2}},
      {"pcm24", {v1::AUDIO_ENCODING_PCM24, 3}},
      {"float32", {v1::AUDIO_ENCODING_FLOAT32, 4}}};
  return encodings;
}

inline void WriteLE(std::ofstream& f, uint32_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) f.put(static_cast<char>((value >> (8 * i)) & 0xFF));
}

// A canonical 44-byte RIFF/WAVE header; format 1 = integer PCM, 3 = IEEE float.
inline void WriteWav(const std::string& path, const std::string& data, uint32_t rate,
                     uint32_t channels, uint32_t bytes_per_sample, bool is_float) {
  std::ofstream f(path, std::ios::binary);
  uint32_t block_align = channels * bytes_per_sample;
  f.write("RIFF", 4);
  WriteLE(f, 36 + static_cast<uint32_t>(data.size()), 4);
  f.write("WAVEfmt ", 8);
  WriteLE(f, 16, 4);
  WriteLE(f, is_float ? 3 : 1, 2);
  WriteLE(f, channels, 2);
  WriteLE(f, rate, 4);
  WriteLE(f, rate * block_align, 4);
  WriteLE(f, block_align, 2);
  WriteLE(f, bytes_per_sample * 8, 2);
  f.write("data", 4);
  WriteLE(f, static_cast<uint32_t>(data.size()), 4);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

}  // namespace distill_example
