// WAV output for the C++ examples (client/cpp).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace distill_example {

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
