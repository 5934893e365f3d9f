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
#include "platform/containment.hpp"
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
  bool show_window = false;  // Windows
  /// Where the child's group is made (nullptr or inactive: none), and the
  /// name it gets there.
  Containment* containment = nullptr;
  std::string instance_id;
  /// Give the child a readiness notification pipe (Readiness::Mode::Notify):
  /// its write end at descriptor 3 (POSIX) or as an inherited handle
  /// (Windows), named in MODKIT_NOTIFY_FD. Without it MODKIT_NOTIFY_FD and
  /// MODKIT_WATCHDOG_MS are removed from what the child inherits (a host
  /// that is itself a module must not pass its own on).
  bool notify = false;
  /// Validated by core/config_validation. The platform decides what it can
  /// enforce: under Enforcement::Required a field it cannot is an error
  /// (not_supported, naming the field); under BestEffort it is skipped and
  /// named by Process::limits_not_applied().
  ResourceLimits limits;
  Privileges privileges;
};

/// A started child. Thread-safe. The child stays unreaped (a zombie once it
/// has exited) until reap(): while it is unreaped its pid and group id cannot
/// be given to another process, so the group signals below are safe. Once
/// reaped (by reap(), or by someone else: see peek_exit), every signal call
/// is a no-op: a recycled pid is never hit.
class Process {
 public:
  /// Never blocks and never signals; an unreaped child is left as it is.
  virtual ~Process() = default;
  virtual std::int64_t pid() const = 0;

  /// The read ends of the child's stdout and stderr; each may be taken once.
  virtual std::unique_ptr<PipeReader> take_stdout() = 0;
  virtual std::unique_ptr<PipeReader> take_stderr() = 0;

  /// What the ExitMonitor waits on: a pidfd (Linux) or the process handle
  /// (Windows), owned by this object; -1 when there is none (the monitor then
  /// uses the pid).
  virtual std::intptr_t exit_handle() const = 0;

  /// Asks the child to stop (its GracefulStop; POSIX: SIGTERM then SIGCONT to
  /// the group, so a stopped child can act on it). Returns false when there is
  /// no graceful step to wait for. Error operation_not_permitted (naming the
  /// pid) when no process of the group may be signalled.
  virtual Result<bool> request_stop() = 0;
  /// Kills the child's whole tree (process group and cgroup / Job object).
  /// Same errors (a cgroup is killed whatever its members' user ids).
  virtual Result<void> kill_tree() = 0;
  /// Kills processes outside the tree that hold the write end of the child's
  /// output pipes (a descendant that left the process group), never the host
  /// or a process the host forked. Repeats the search until it finds none (a
  /// bounded number of rounds). Returns how many were killed. None when the
  /// child has a group of its own: everything it started is in there, and a
  /// holder outside was not started by modkit. Windows: none can exist (a
  /// Job's descendants cannot leave it).
  virtual int kill_output_holders() = 0;

  /// The child's group (see Containment): a handle that turns ready (POSIX:
  /// EPOLLPRI) when it may have emptied, -1 when there is none; whether no
  /// process is left in it (true without one); how many there are (empty
  /// without one).
  virtual std::intptr_t contents_handle() const = 0;
  virtual bool contents_empty() = 0;
  /// Waits up to `timeout` for contents_empty() (for the reader that acts on
  /// an exit itself: the group may empty a moment after the child exits).
  virtual bool wait_for_contents_empty(std::chrono::milliseconds) { return contents_empty(); }
  virtual std::optional<std::int64_t> process_count() = 0;

  /// The parent's end of the notification pipe (SpawnRequest::notify),
  /// owned by this object, for the ExitMonitor; -1 when there is none.
  virtual std::intptr_t notify_handle() const { return -1; }

  /// The limits skipped under Enforcement::BestEffort, each as
  /// "field (why)", for the host's warning record.
  virtual std::vector<std::string> limits_not_applied() const { return {}; }
  /// Once the child has exited: MemoryLimit or CpuLimit when one of its
  /// limits ended it, as far as the platform can tell; nullopt otherwise.
  virtual std::optional<ExitStatus::Reason> limit_end() { return std::nullopt; }

  /// The exit status once the child has exited, without reaping it; nullopt
  /// while it runs. Carries ExitStatus::usage where it can be read. Kind::Unknown when someone else reaped it (a host calling
  /// waitpid(-1), or SIGCHLD ignored); signals are off from then on.
  virtual std::optional<ExitStatus> peek_exit() = 0;
  /// Waits up to `timeout` for the exit (for error paths where no monitor
  /// watches the child); returns peek_exit().
  virtual std::optional<ExitStatus> wait_for_exit(std::chrono::milliseconds timeout) = 0;
  /// True when wait_for_exit() blocks on the exit itself (a pidfd, a process
  /// handle) rather than polling: a stop may then wait for the exit there.
  virtual bool exit_waitable() const { return false; }
  /// Reaps the exited child: call only after peek_exit() returned a status.
  /// After this no signal reaches the pid again.
  virtual void reap() = 0;
};

/// Starts a child. On failure nothing is left behind: no process, no zombie,
/// no descriptor or handle. Errors name the module and the path.
Result<std::unique_ptr<Process>> spawn(const SpawnRequest& request);

}  // namespace modkit::platform
