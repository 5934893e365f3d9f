// Platform layer: learning, without polling, that a child has exited.
#pragma once

#include <functional>
#include <memory>
#include <string_view>

#include "modkit/modkit.hpp"
#include "platform/process.hpp"

namespace modkit::platform {

/// Calls a callback once per watched process when it has exited (without
/// reaping it). Callbacks run on the monitor's own thread(s) with no lock of
/// the monitor held; they must not block (they run no host code).
class ExitMonitor {
 public:
  virtual ~ExitMonitor() = default;
  /// `on_exit` runs once, when the process exits; `on_contents` (optional)
  /// each time its group may have emptied (Process::contents_handle), before
  /// or after the exit, until unwatch(). `on_notify` (optional, with a
  /// Process::notify_handle) gets what the child writes to its notification
  /// pipe, in order, as it arrives (`eof` false), then once `eof` true with
  /// no data when the pipe's write end is closed; it is read by the
  /// monitor's own thread(s), never by a thread per process. `process` must
  /// outlive the watch: until unwatch() or shutdown() has returned.
  virtual Result<void> watch(Process& process, std::function<void()> on_exit, std::function<void()> on_contents = {},
                             std::function<void(std::string_view data, bool eof)> on_notify = {}) = 0;
  /// Forgets `process`: no callback of it runs after this returns (except the
  /// one that called unwatch, when called from a callback).
  virtual void unwatch(Process& process) = 0;
  /// Stops and joins the monitor's threads. Processes still watched get no callback.
  virtual void shutdown() = 0;
};

/// `prefer_pidfd` is a hint for Linux (see LocalProcessOptions::use_pidfd).
/// Errors: resource_unavailable_try_again when the monitor's thread cannot start.
Result<std::unique_ptr<ExitMonitor>> make_exit_monitor(bool prefer_pidfd);

}  // namespace modkit::platform
