// Helpers shared by the fuzz targets: a byte reader over the fuzzer's input
// and an independent UTF-8 checker (not src/core/utf8.cpp, which is under test).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace modkit::fuzz {

/// Fails the run (libFuzzer saves the input as a crash artifact).
#define MODKIT_FUZZ_CHECK(condition, what)                                                  \
  do {                                                                                      \
    if (!(condition)) {                                                                     \
      std::fprintf(stderr, "invariant violated: %s (%s:%d)\n", what, __FILE__, __LINE__); \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

/// Consumes the fuzzer's bytes front to back; runs dry gracefully.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(reinterpret_cast<const char*>(data)), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t byte() { return pos_ < size_ ? static_cast<std::uint8_t>(data_[pos_++]) : 0; }
  /// Bytes up to the next `separator` (consumed, not returned) or the end.
  std::string_view until(char separator) {
    std::size_t start = pos_;
    while (pos_ < size_ && data_[pos_] != separator) ++pos_;
    std::string_view result(data_ + start, pos_ - start);
    if (pos_ < size_) ++pos_;
    return result;
  }
  std::string_view rest() {
    std::string_view result(data_ + pos_, size_ - (pos_ < size_ ? pos_ : size_));
    pos_ = size_;
    return result;
  }

 private:
  const char* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

/// Well-formed UTF-8 per Unicode table 3-7, decoded by code point value.
inline bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    std::size_t extra;
    std::uint32_t code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      code = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    static constexpr std::uint32_t kMinimum[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMinimum[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

}  // namespace modkit::fuzz
