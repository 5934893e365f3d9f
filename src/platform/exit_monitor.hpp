// Platform layer: learning, without polling, that a child has exited.
#pragma once

#include <functional>
#include <memory>

#include "modkit/modkit.hpp"
#include "platform/process.hpp"

namespace modkit::platform {

/// Calls a callback once per watched process when it has exited (the callback
/// then reaps it with Process::try_reap). Callbacks run on the monitor's own
/// thread(s) with no lock of the monitor held, so they may call watch().
class ExitMonitor {
 public:
  virtual ~ExitMonitor() = default;
  /// `process` must outlive the callback's call.
  virtual Result<void> watch(Process& process, std::function<void()> on_exit) = 0;
  /// Stops and joins the monitor's threads. Processes still watched get no callback.
  virtual void shutdown() = 0;
};

/// `prefer_pidfd` is a hint for Linux (see LocalProcessOptions::use_pidfd).
Result<std::unique_ptr<ExitMonitor>> make_exit_monitor(bool prefer_pidfd);

}  // namespace modkit::platform
