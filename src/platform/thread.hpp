// Platform layer: threads with a chosen stack size (std::thread cannot set one).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "modkit/modkit.hpp"

namespace modkit::platform {

class Thread {
 public:
  virtual ~Thread() = default;  // must have been joined
  virtual void join() = 0;
};

/// Starts `body` on a new thread whose stack is `stack_bytes` (raised to the
/// platform minimum).
Result<std::unique_ptr<Thread>> start_thread(std::size_t stack_bytes, std::function<void()> body);

}  // namespace modkit::platform
