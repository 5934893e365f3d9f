// The Supervisor's policy as pure logic: which ends are failures, how long to
// wait before a restart, when to give up, and each child's state machine.
// No threads, no clock, no backend: time and random numbers are passed in, so
// the unit tests drive it step by step.
//
// One child's states (modkit::ChildState) and transitions:
//
//   begin_start ------------------------------------------> Starting
//   Starting --became_ready----------------------------------> Running
//   Starting/Running --ended (by itself)--> Restarting | Exited | GaveUp
//   Restarting --start_failed--------------> Restarting | GaveUp
//   Restarting --(due) begin_start--------------------------> Starting
//   any --stopped (stop, remove, restart, shutdown)---------> Stopped
//   Starting/Running/Restarting --stopped_for_group---------> Stopped (a strategy)
//   Stopped --waiting_for_group-----------------------------> Restarting (no delay)
//   any --manual_restart, begin_start------------------------> Starting (GaveUp left)
//   Starting --manual_start_failed---------------------------> Exited
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>

#include "modkit/modkit.hpp"

namespace modkit::supervision {

using TimePoint = std::chrono::steady_clock::time_point;
using Milliseconds = std::chrono::milliseconds;

/// Longest delay ever computed (10^12 ms, about 31.7 years): keeps `now +
/// delay` far from overflowing a steady_clock time_point whatever the
/// configuration. Every duration of a ChildSpec longer than this counts as
/// this (the header's "forever").
constexpr Milliseconds kMaxDelay{1000LL * 1000 * 1000 * 1000};

/// invalid_argument naming the field, for everything but the id's uniqueness
/// (which only the Supervisor knows).
Result<void> validate(const ChildSpec& spec);

/// Whether an end counts as a failure:
/// - reason ReadinessTimeout, NotReady or WatchdogTimeout: failure;
/// - Exited with a code in success_exit_codes: not a failure;
/// - Signaled with a signal in clean_signals and not forced: not a failure;
/// - everything else (other codes and signals, Unknown): failure.
bool is_failure(const ChildSpec& spec, const ExitStatus& status);

/// An Exited end with a code in prevent_restart_exit_codes.
bool prevents_restart(const ChildSpec& spec, const ExitStatus& status);

/// The delay before restart number `n` (1, 2, ...) of a streak, as the header
/// states it. `random01` is the jitter's draw, clamped to [0, 1]; the factor
/// is 1 + jitter * (2 * random01 - 1). Rounded to the nearest millisecond,
/// never negative, never above kMaxDelay.
Milliseconds backoff_delay(const Backoff& backoff, std::uint64_t n, double random01);

/// The give-up limits' bookkeeping: the row of consecutive failures and the
/// sliding window of the times restarts were scheduled.
class GiveUpTracker {
 public:
  explicit GiveUpTracker(GiveUp limits = {}) : limits_(limits) {}

  /// An end that counts as a failure: one more in the row.
  void failure() { ++row_; }
  /// An end that is not a failure: the row starts again.
  void success() { row_ = 0; }
  void reset_row() { row_ = 0; }
  int row() const { return row_; }

  /// About to schedule a restart at `now`: why to give up instead, or nothing
  /// (and this restart enters the window). Checked in this order:
  /// max_consecutive_failures > 0 and row > max_consecutive_failures;
  /// max_restarts > 0 and the restarts scheduled within the last `period`,
  /// this one included, > max_restarts.
  std::optional<std::string> admit_restart(TimePoint now);

  /// Forgets the row and the window (restart(id)).
  void clear();
  std::size_t restarts_in_window() const { return window_.size(); }

 private:
  GiveUp limits_;
  int row_ = 0;
  std::deque<TimePoint> window_;  // times restarts were scheduled, oldest first
};

/// What the machine decided about an end nobody expected (or a failed start).
struct EndDecision {
  enum class Outcome { Exited, Restart, GaveUp };
  Outcome outcome = Outcome::Exited;
  bool failure = false;
  int row = 0;                       ///< failures in a row, this end included
  std::uint64_t restart_number = 0;  ///< Restart: n of the streak (1, 2, ...)
  Milliseconds delay{0};             ///< Restart: the backoff delay
  std::string reason;                ///< Exited: why no restart; GaveUp: which limit
};

/// One child's policy state. Not thread-safe: the Supervisor calls it under
/// its lock.
class ChildMachine {
 public:
  explicit ChildMachine(ChildSpec spec);

  const ChildSpec& spec() const { return spec_; }
  ChildState state() const { return state_; }
  std::uint64_t generation() const { return generation_; }
  std::uint64_t restarts() const { return restarts_; }
  std::uint64_t streak() const { return streak_; }
  int consecutive_failures() const { return tracker_.row(); }
  const std::optional<ExitStatus>& last_exit() const { return last_exit_; }
  /// Restarting by its own backoff: when the restart is due, and its delay.
  std::optional<TimePoint> due() const { return due_; }
  std::optional<Milliseconds> restart_delay() const { return delay_; }
  /// A restart the policy decided has not started yet (counted in restarts()
  /// when it does, whoever starts it: the timer or a group sequence).
  bool restart_owed() const { return restart_owed_; }
  bool immediate() const { return spec_.config.readiness.mode == Readiness::Mode::Immediate; }

  // --- Transitions ---------------------------------------------------------
  /// A new incarnation is being started: generation + 1, Starting (Running at
  /// once, ready at `now`, when the config asks for no readiness).
  void begin_start(TimePoint now);
  /// Starting -> Running. Ignored in any other state.
  void became_ready(TimePoint now);
  /// The live incarnation ended by itself at `now`. `random01` is called
  /// once when a restart is scheduled, not otherwise (a host's generator
  /// sees one draw per restart).
  EndDecision ended(const ExitStatus& status, TimePoint now, const std::function<double()>& random01);
  /// A restart's start_instance failed: a failure, decided like an end.
  EndDecision start_failed(TimePoint now, const std::function<double()>& random01);
  /// An end the Supervisor caused: only remembered.
  void record_exit(const ExitStatus& status) { last_exit_ = status; }
  /// stop(id), remove(id), the shutdown: Stopped, no restart owed.
  void stopped();
  /// A strategy stops it for a group restart: Stopped, but a restart the
  /// policy owed it is kept. Returns when its own restart was due, if any.
  std::optional<TimePoint> stopped_for_group();
  /// A group sequence began: Restarting, waiting for its turn (no delay).
  void waiting_for_group();
  /// restart(id): the streak, the row and the window start again, a pending
  /// restart is dropped, GaveUp is left (begin_start follows).
  void manual_restart();
  /// A start on a caller's thread (start, restart) failed or ended before it
  /// was ready: Exited, nothing scheduled; the caller gets the error.
  void manual_start_failed(const std::optional<ExitStatus>& status);

 private:
  EndDecision decide(bool failure, bool prevented, TimePoint now, const std::function<double()>& random01);

  ChildSpec spec_;
  ChildState state_ = ChildState::Stopped;
  std::uint64_t generation_ = 0;
  std::uint64_t restarts_ = 0;
  std::uint64_t streak_ = 0;  // restarts scheduled since the streak began
  GiveUpTracker tracker_;
  std::optional<TimePoint> ready_at_;  // this incarnation's readiness (its start when Immediate)
  std::optional<TimePoint> due_;
  std::optional<Milliseconds> delay_;
  bool restart_owed_ = false;
  std::optional<ExitStatus> last_exit_;
};

}  // namespace modkit::supervision
