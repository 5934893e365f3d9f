// Platform layer: every thread modkit starts (readers, exit monitor,
// supervisor, cancellation relay), with a chosen stack size (std::thread
// cannot set one) and an error instead of an exception when none can be had.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string_view>

#include "modkit/modkit.hpp"

namespace modkit::platform {

/// A started thread. Destroy it only after join() or detach(). The body lives
/// on the thread itself, so a detached thread never touches this object again.
class Thread {
 public:
  virtual ~Thread() = default;
  virtual void join() = 0;
  /// Lets the thread run on and end by itself (used only to abandon a thread
  /// stuck in a host callback, or when a thread must let go of itself).
  virtual void detach() = 0;
  /// True when called on this very thread (joining it would deadlock).
  virtual bool is_current() const = 0;
};

/// Starts `body` on a new thread whose stack is `stack_bytes` (raised to the
/// platform minimum). POSIX: the thread starts with every signal blocked, so a
/// host's signal (SIGTERM it means to take with sigwait or a signalfd, say)
/// is never delivered to a modkit thread. `what` names the thread in the
/// error: "cannot start <what> thread: <cause>" (resource_unavailable_try_again).
Result<std::unique_ptr<Thread>> start_thread(std::size_t stack_bytes, std::function<void()> body,
                                             std::string_view what);

}  // namespace modkit::platform
