// Splits a byte stream into log lines of bounded length.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace modkit {

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
