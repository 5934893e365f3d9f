// Platform layer: creating, signalling and reaping one child process.
// Implemented once per platform (src/posix/process.cpp, src/win32/process.cpp);
// the build picks one, so the code above this layer has no #ifdef.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "modkit/modkit.hpp"
#include "platform/pipe.hpp"

namespace modkit::platform {

/// Everything spawn needs, already validated by core/config_validation.
struct SpawnRequest {
  std::string module;  // for messages only
  std::string binary;
  std::vector<std::string> args;  // without argv[0]
  std::vector<std::pair<std::string, std::string>> env;  // overrides, validated
  bool clear_environment = false;
  std::optional<std::string> working_directory;
  GracefulStop graceful_stop = GracefulStop::Signal;
  bool allow_batch_files = false;
};

/// A started child. Thread-safe: signalling and reaping may happen from
/// different threads; signals are never sent once the child has been reaped,
/// so a recycled pid is never hit.
class Process {
 public:
  virtual ~Process() = default;
  virtual std::int64_t pid() const = 0;

  /// The read ends of the child's stdout and stderr; each may be taken once.
  virtual std::unique_ptr<PipeReader> take_stdout() = 0;
  virtual std::unique_ptr<PipeReader> take_stderr() = 0;

  /// Asks the child to stop (its GracefulStop). Returns false when there is no
  /// graceful step to wait for (GracefulStop::None, or already reaped).
  virtual bool request_stop() = 0;
  /// Kills the child and its whole tree (process group / Job object). Safe to
  /// call after the child was reaped: then only descendants still in the tree
  /// are killed.
  virtual void kill_tree() = 0;
  /// Kills processes outside the tree that still hold the child's output
  /// pipes (a descendant that left the process group, e.g. with setsid).
  /// Returns how many. Windows: none can exist, as a Job object's
  /// descendants cannot leave it.
  virtual int kill_pipe_holders() = 0;

  /// Reaps the child if it has exited; never blocks. Called by the ExitMonitor
  /// when the exit was signalled. Returns the status the first time it
  /// succeeds, then nullopt.
  virtual std::optional<ExitStatus> try_reap() = 0;
  /// Blocks until the child exits and reaps it. Only for error paths where no
  /// ExitMonitor watches the child; returns nullopt if it was already reaped.
  virtual std::optional<ExitStatus> reap_blocking() = 0;
};

/// Starts a child. On failure nothing is left behind: no process, no zombie,
/// no descriptor or handle.
Result<std::unique_ptr<Process>> spawn(const SpawnRequest& request);

}  // namespace modkit::platform
