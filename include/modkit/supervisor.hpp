// modkit's Supervisor: keeps modules alive under a restart policy, starts
// groups in order once each is ready, and restarts one child without touching
// the rest. Included by modkit/modkit.hpp; the README's "Supervision" section
// states the policy as precisely as this header.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "modkit/modkit.hpp"

namespace modkit {

/// Whether a child that ended by itself is started again.
enum class RestartPolicy {
  Never,      ///< never (OTP's temporary)
  OnFailure,  ///< only after a failure (OTP's transient, systemd's on-failure)
  Always,     ///< after any end but a prevented one (OTP's permanent)
};
std::string_view to_string(RestartPolicy policy);

/// The delay before restart number n of a streak (n = 1, 2, ...):
///   table non-empty: table[min(n, size) - 1];
///   otherwise: min(maximum, initial * multiplier^(n-1));
/// then multiplied by (1 + jitter * u), u uniform in [-1, 1]; never negative.
/// An initial of 0 stays 0 however large n grows.
struct Backoff {
  std::chrono::milliseconds initial{100};
  double multiplier = 2.0;  ///< finite, >= 1
  std::chrono::milliseconds maximum{30000};
  double jitter = 0.1;  ///< in [0, 1]
  std::vector<std::chrono::milliseconds> table;
};

/// When the supervisor stops restarting a child (it moves to GaveUp, which
/// only restart(id) leaves). Each is off when zero.
struct GiveUp {
  /// More than max_restarts restarts within `period` (a sliding window over
  /// the times restarts were scheduled). Beware systemd's pitfall: once the
  /// backoff delay exceeds period / max_restarts this can never trip; use
  /// max_consecutive_failures to bound a crash loop whatever its delay.
  int max_restarts = 10;
  std::chrono::milliseconds period{60000};
  /// More than this many failures in a row (a run of at least reset_after, or
  /// an end that is not a failure, starts a new row).
  int max_consecutive_failures = 0;
};

/// One child of a Supervisor. Its durations (backoff initial, maximum and
/// table, give_up.period, reset_after) must not be negative; any longer than
/// 10^12 ms (about 31.7 years) counts as 10^12 ms, i.e. forever: nothing
/// overflows, and milliseconds::max() is a fine "never".
struct ChildSpec {
  /// Stable across restarts; unique in the Supervisor; not empty.
  std::string id;
  OopModuleConfig config;
  RestartPolicy restart = RestartPolicy::OnFailure;
  /// An exit with one of these codes is not a failure.
  std::vector<int> success_exit_codes{0};
  /// A death by one of these signals (POSIX numbers: HUP, INT, TERM, PIPE) is
  /// not a failure, unless modkit's readiness or watchdog sent it.
  std::vector<int> clean_signals{1, 2, 15, 13};
  /// An exit with one of these codes is never restarted, whatever the policy.
  std::vector<int> prevent_restart_exit_codes;
  Backoff backoff;
  /// A run at least this long (from readiness, or from the start when the
  /// config asks for none) resets the backoff streak and the failure row.
  std::chrono::milliseconds reset_after{10000};
  GiveUp give_up;
};

/// How a failure-driven restart spreads to the other children, in the order
/// they were started (see the README).
enum class Strategy {
  OneForOne,   ///< only the child that ended
  OneForAll,   ///< every child: the others are stopped (in reverse order) and all start again in order
  RestForOne,  ///< the child and those started after it
};
std::string_view to_string(Strategy strategy);

enum class ChildState {
  Starting,    ///< an incarnation runs and is not ready yet
  Running,     ///< ready
  Restarting,  ///< waiting for its backoff delay (or for an earlier child of its group to be ready)
  Stopped,     ///< stopped by stop(id), a strategy in progress, or the shutdown
  Exited,      ///< ended, and its policy says no restart
  GaveUp,      ///< a give-up limit was reached; only restart(id) leaves this state
};
std::string_view to_string(ChildState state);

struct ChildStatus {
  std::string id;
  ChildState state = ChildState::Stopped;
  /// 1 for the first incarnation, one more for each start after it.
  std::uint64_t generation = 0;
  /// The live incarnation, if any.
  std::optional<InstanceHandle> instance;
  std::optional<ExitStatus> last_exit;
  /// Restarts the policy made (restart(id) and strategies not counted).
  std::uint64_t restarts = 0;
  int consecutive_failures = 0;
  /// Restarting: the delay that was chosen for the pending restart.
  std::optional<std::chrono::milliseconds> restart_delay;
};

struct SupervisorEvent {
  enum class Kind {
    Started,           ///< an incarnation was started (instance set)
    StartFailed,       ///< a restart could not start it (message says why); counts as a failure
    Ready,             ///< it became ready (instance set)
    Exited,            ///< it ended (instance, status, failure set)
    RestartScheduled,  ///< a restart comes after `delay`
    GaveUp,            ///< a give-up limit was reached (message says which)
    Stopped,           ///< stopped by stop(id), remove(id), a strategy or the shutdown
  };
  Kind kind = Kind::Started;
  std::string child_id;
  std::uint64_t generation = 0;
  std::optional<InstanceHandle> instance;
  std::optional<ExitStatus> status;
  /// Exited: whether it counts as a failure.
  bool failure = false;
  std::chrono::milliseconds delay{0};
  std::string message;
};
std::string_view to_string(SupervisorEvent::Kind kind);

struct SupervisorOptions {
  Strategy strategy = Strategy::OneForOne;
  /// Every event, on the Supervisor's thread (or the caller's, for what a call
  /// does at once), with no lock held. It may call the Supervisor (a
  /// wait_for_shutdown from it returns at once); an exception is caught and
  /// dropped. Each event is also a library record in the sink.
  std::function<void(const SupervisorEvent&)> on_event;
  /// Empty: steady_time_source(). Give the Mock backend's ManualClock to test
  /// policy deterministically.
  std::shared_ptr<TimeSource> time;
  /// Jitter's random numbers in [0, 1); empty: a generator seeded per Supervisor.
  /// Runs under the Supervisor's lock (it must not call the Supervisor); an
  /// exception it throws, or a NaN or infinite result, counts as 0.5 (no jitter).
  std::function<double()> random;
};

/// Keeps children alive on a backend it owns. One thread per Supervisor.
///
/// The Supervisor uses only ModuleRuntimeBackend's interface (start_instance's
/// events, stop_instance, wait_for_shutdown), so it drives LocalProcessBackend,
/// MockBackend or any other backend the same way. Exits it caused itself (a
/// stop, restart, strategy or shutdown) never count and never restart. When
/// the token (the backend's, given again here) is cancelled, no restart is
/// scheduled and the backend stops every child with its one deadline.
class Supervisor {
 public:
  /// Errors: invalid_argument (no backend or no sink),
  /// resource_unavailable_try_again (its thread cannot start).
  static Result<std::unique_ptr<Supervisor>> create(std::unique_ptr<ModuleRuntimeBackend> backend,
                                                    CancellationToken token, std::shared_ptr<LogSink> sink,
                                                    SupervisorOptions options = {});
  /// Stops every child (one shared deadline through the backend's destructor)
  /// and joins the thread. A thread held in on_event or the sink is waited
  /// for at most 2 s, then abandoned: it ends by itself once the callback
  /// returns, and reports nothing more (a backend call it is making is waited
  /// for: the backend bounds it). The same from the Supervisor's own callback,
  /// without the wait. May be called from on_event on a caller's thread: that
  /// call then returns operation_canceled or its result, touching nothing freed.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  /// Adds a child and starts its first incarnation; returns once it is ready
  /// (or started, without readiness), waiting at most readiness.timeout + 5 s.
  /// Errors: invalid_argument (empty or duplicate id, bad backoff or limits,
  /// naming the field), the backend's spawn and readiness errors (timed_out,
  /// no_such_process: the child is then not kept), operation_canceled after
  /// shutdown, resource_deadlock_would_occur when called from on_event for a
  /// child that needs readiness (that thread reports it).
  Result<ChildStatus> start(ChildSpec spec);
  /// Stops the child's incarnation (the backend's graceful stop) and cancels a
  /// pending restart; the child stays, Stopped. Errors: invalid_argument
  /// (unknown id), the backend's stop errors.
  Result<void> stop(std::string_view id);
  /// Stops the child's incarnation if one runs, then starts a new one (a new
  /// generation), whatever its state (GaveUp included): this child only, and
  /// resets its backoff, failure row and give-up window. Returns once it is
  /// ready. Errors: invalid_argument (unknown id), device_or_resource_busy
  /// (its start or restart is under way on another thread), the stop's and
  /// the start's errors (the child is then Exited, not restarted by policy),
  /// resource_deadlock_would_occur as for start().
  Result<ChildStatus> restart(std::string_view id);
  /// Stops the child and forgets it. Errors: invalid_argument (unknown id),
  /// the backend's stop errors (the child is forgotten all the same).
  Result<void> remove(std::string_view id);
  /// Errors: invalid_argument (unknown id).
  Result<ChildStatus> status(std::string_view id) const;
  /// Every child, in start order.
  std::vector<ChildStatus> list() const;
  /// True when a child has given up since the Supervisor was made.
  bool any_gave_up() const;
  /// After the token is cancelled: blocks until every child has been stopped
  /// (the backend's bound). Returns at once if not cancelled, or when called
  /// from on_event.
  void wait_for_shutdown();

  class Impl;

 private:
  explicit Supervisor(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace modkit
