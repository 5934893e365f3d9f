// Splits a byte stream into log lines of bounded length.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>
#include <string_view>

#if defined(__SSE2__) && defined(__GNUC__)
#include <emmintrin.h>
#define MODKIT_SCAN_SSE2 1
#endif

namespace modkit {

/// The first '\n' of [p, end) (nullptr if none), and in `high` a nonzero
/// value if a byte before it is not ASCII. One pass for both: an ASCII line,
/// the usual kind, then needs no UTF-8 check of its own. Inline: it runs for
/// every line.
inline const char* scan_line(const char* p, const char* end, unsigned& high) {
#ifdef MODKIT_SCAN_SSE2
  const __m128i newline = _mm_set1_epi8('\n');
  while (end - p >= 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const unsigned found = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, newline)));
    const unsigned top = static_cast<unsigned>(_mm_movemask_epi8(bytes));  // high bits
    if (found != 0) {
      high |= top & ((found & (0u - found)) - 1);  // the bytes before the first '\n'
      return p + __builtin_ctz(found);
    }
    high |= top;
    p += 16;
  }
  for (; p < end; ++p) {
    if (*p == '\n') return p;
    high |= static_cast<unsigned char>(*p) & 0x80u;
  }
  return nullptr;
#else
  high = 0x80;  // not looked at: the line gets the full UTF-8 check
  return static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
#endif
}

/// Feeds bytes in, calls `Sink::line(text, continuation)` for each line out.
///
/// Lines end at '\n'; one trailing '\r' is dropped. A line longer than
/// `max_line_bytes` is cut (never inside a UTF-8 sequence) and its later
/// pieces are flagged as continuations. Every line handed out is valid UTF-8
/// (invalid bytes become U+FFFD). Memory held is bounded by max_line_bytes.
class LineSplitter {
 public:
  class Sink {
   public:
    virtual ~Sink() = default;
    virtual void line(std::string_view text, bool continuation) = 0;
  };

  LineSplitter(std::size_t max_line_bytes, Sink& sink);
  void feed(std::string_view bytes);
  /// End of stream: hands out a last line that had no '\n'.
  void finish();
  /// No part of a line held back: the next byte fed starts a line.
  bool idle() const { return pending_.empty(); }
  std::size_t max_line_bytes() const { return max_; }

 private:
  // `ascii`: known to be all ASCII, so valid UTF-8 as it is.
  void emit(std::string_view raw, bool line_complete, bool ascii = false);
  void emit_bounded(std::string_view raw, bool ascii = false);

  std::size_t max_;
  Sink& sink_;
  std::string pending_;  // start of a line whose '\n' has not arrived
  std::string scratch_;
  bool continuing_ = false;
};

}  // namespace modkit
