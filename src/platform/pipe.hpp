// Platform layer: the parent's read end of a child's output pipe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace modkit::platform {

/// Blocking reader of one pipe, used by exactly one reader thread, that
/// another thread can interrupt.
class PipeReader {
 public:
  virtual ~PipeReader() = default;
  /// Reads up to `size` bytes. Returns the count (> 0), 0 at end of file or
  /// after interrupt(), -1 on an unexpected error (treated as end of file).
  /// Retries on EINTR.
  virtual std::ptrdiff_t read(char* buffer, std::size_t size) = 0;
  /// Makes the current and every later read() return 0 at once. Callable from
  /// any thread, any number of times. The stdout and stderr readers of one
  /// child share one interruption: interrupting either stops both.
  virtual void interrupt() = 0;
};

}  // namespace modkit::platform
