// Platform layer: the wake-up a signal handler (or, on Windows, a console
// control handler) raises to hand work to an ordinary thread. Used by
// CancellationToken::cancel_from_signal() and its relay thread.
#pragma once

#include <memory>

#include "modkit/modkit.hpp"

namespace modkit::platform {

/// A one-bit wake-up: notify() sets it, wait() blocks until it is
/// set and clears it. Notifications that arrive while nobody waits are kept
/// (at least one), so a notify() before wait() is never lost.
class SignalWakeup {
 public:
  virtual ~SignalWakeup() = default;
  /// Async-signal-safe and lock-free: callable from a signal handler that
  /// interrupted any thread, including one inside wait(). Never blocks; leaves
  /// errno (and the last-error value) as it found it. Any number of times.
  virtual void notify() noexcept = 0;
  /// Blocks (without polling) until notify() has been called since the
  /// previous wait() returned, then clears that. One waiting thread at a time.
  virtual void wait() = 0;
};

/// Errors: resource_unavailable_try_again when no descriptor or event can be
/// had (the message gives the cause).
Result<std::unique_ptr<SignalWakeup>> make_signal_wakeup();

}  // namespace modkit::platform
