// The life of one instance, from spawn to reap, as a state machine.
//
//   Running --begin_stop--> Stopping --grace over--> Killed
//      |                       |                       |
//      +-------- exit ---------+-------- exit ---------+--> ExitedUnreaped
//   ExitedUnreaped --both streams at EOF, group empty--> Drained --reap--> Reaped
//   ExitedUnreaped --drain_timeout--> group and output holders killed
//                  --drain_timeout again--> readers interrupted --> Drained
//
// "Group empty" matters for a contained child (platform/containment.hpp):
// the instance ends only when no process it started is left. Without
// containment the group counts as empty. A stop (before or after the exit)
// gives what is left of the group the same grace as the child, then kills it.
//
// The child is reaped last, after every group kill: until then its pid and
// group id stay reserved, so no signal can reach a recycled pid. Stop
// failures (the child may not be signalled, or was killed and did not exit
// within kill_timeout) leave the phase as it is and are reported by
// stop_error(); a later begin_stop tries again.
//
// Thread-safe: every event takes the lifecycle's own lock, which is the last
// in modkit's lock order (see local_process_backend.cpp) and is never held
// while host code runs. Platform calls made under it are non-blocking system
// calls. Time is passed in, so tests drive it with a manual clock.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "modkit/modkit.hpp"
#include "platform/process.hpp"

namespace modkit::core {

using Clock = std::chrono::steady_clock;

struct LifecycleTimings {
  std::chrono::milliseconds drain_timeout{1000};
  std::chrono::milliseconds kill_timeout{2000};
};

/// What an event asks of its caller once the lifecycle's lock is released.
struct LifecycleEffects {
  struct Record {
    LogLevel level;
    std::string text;
  };
  std::vector<Record> records;
  bool interrupt_readers = false;  ///< stop reading the output pipes
  bool finished = false;           ///< just reaped: unlist it, report its exit
  bool changed = false;            ///< anything at all changed: waiters must look again
  bool new_deadline = false;       ///< next_deadline() moved: whoever times it must look again
  bool settled_changed = false;    ///< settled() may have changed: stop waiters must look again
};

enum class Phase { Running, Stopping, Killed, ExitedUnreaped, Drained, Reaped };
std::string_view to_string(Phase phase);

class InstanceLifecycle {
 public:
  InstanceLifecycle(platform::Process& process, LifecycleTimings timings) : process_(process), timings_(timings) {}
  InstanceLifecycle(const InstanceLifecycle&) = delete;
  InstanceLifecycle& operator=(const InstanceLifecycle&) = delete;

  // --- Events ---------------------------------------------------------------
  /// A stop with `deadline` for the graceful step (concurrent stops share the
  /// earliest deadline).
  LifecycleEffects begin_stop(Clock::time_point now, Clock::time_point deadline);
  /// The exit monitor saw the child exit.
  LifecycleEffects exit_signalled(Clock::time_point now);
  /// A reader reached the end of stream `stream` (0 stdout, 1 stderr) or was interrupted.
  LifecycleEffects stream_closed(int stream, Clock::time_point now);
  /// The child's group may have emptied (Process::contents_handle fired).
  LifecycleEffects contents_changed(Clock::time_point now);
  /// Time passed: acts on every deadline that is due.
  LifecycleEffects tick(Clock::time_point now);

  /// Readers mark the time they spend inside the sink, so that a reader that
  /// is late because of the sink is not blamed on an unkillable process.
  void delivering(int stream, bool inside) { delivering_[stream].store(inside, std::memory_order_relaxed); }
  /// Records an event returned are counted until their caller has logged
  /// them, so a stop returns only after its records reached the sink.
  /// Returns how many are still undelivered.
  int records_delivered(std::size_t count) {
    return undelivered_.fetch_sub(static_cast<int>(count)) - static_cast<int>(count);
  }
  bool records_pending() const { return undelivered_.load() > 0; }
  int undelivered() const { return undelivered_.load(); }

  // --- Queries --------------------------------------------------------------
  Phase phase() const;
  /// The next time tick() has something to do.
  std::optional<Clock::time_point> next_deadline() const;
  /// The same, read without the lock (so a thread watching a thousand
  /// instances can skip those with nothing due): Clock::time_point::max()
  /// when there is none.
  Clock::time_point next_deadline_hint() const {
    return Clock::time_point(Clock::duration(deadline_hint_.load(std::memory_order_acquire)));
  }
  /// Nothing more will happen without a new event: reaped, or the stop failed.
  bool settled() const;
  /// Set once reaped.
  std::optional<ExitStatus> status() const;
  std::optional<Error> stop_error() const;
  bool stop_requested() const;
  /// Both output streams reached their end (or were given up on).
  bool streams_closed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return streams_closed_locked();
  }

 private:
  void kill_locked(Clock::time_point now, std::string why, LifecycleEffects& effects);
  void finish_locked(LifecycleEffects& effects);
  // In ExitedUnreaped: finishes when the streams are closed and the group is
  // empty, and kills a stopped instance's leftovers once its grace is over.
  void settle_exit_locked(Clock::time_point now, LifecycleEffects& effects);
  bool streams_closed_locked() const { return closed_[0] && closed_[1]; }
  bool sink_late_locked() const {
    return (!closed_[0] && delivering_[0].load(std::memory_order_relaxed)) ||
           (!closed_[1] && delivering_[1].load(std::memory_order_relaxed));
  }

  platform::Process& process_;
  const LifecycleTimings timings_;
  mutable std::mutex mutex_;
  Phase phase_ = Phase::Running;
  bool stop_requested_ = false;
  bool killed_ = false;             // modkit sent the kill before the exit
  bool leftovers_killed_ = false;   // group and holders killed after the exit
  bool remnants_killed_ = false;    // a stop's kill of the group is done (with the child, or after it)
  std::optional<Clock::time_point> remnants_deadline_;  // a stop's grace for the group
  bool closed_[2] = {false, false};
  Clock::time_point stop_deadline_{}, kill_deadline_{}, drain_deadline_{}, abandon_deadline_{}, exit_time_{};
  std::optional<ExitStatus> exit_;  // seen, not yet published
  std::optional<ExitStatus> status_;  // published once reaped
  std::optional<Error> stop_error_;
  std::atomic<bool> delivering_[2] = {{false}, {false}};
  std::atomic<int> undelivered_{0};
  std::atomic<Clock::rep> deadline_hint_{Clock::time_point::max().time_since_epoch().count()};
  // What waiters look at; an event that leaves it as it was wakes nobody
  // (a tick with nothing due must not, or the drivers would spin).
  std::optional<Clock::time_point> next_deadline_locked() const;
  struct Snapshot {
    std::optional<Clock::time_point> deadline;
    Phase phase;
    bool stop_error, closed0, closed1, leftovers_killed;
    Clock::time_point stop_deadline;
    bool operator==(const Snapshot& other) const {
      return phase == other.phase && stop_error == other.stop_error && closed0 == other.closed0 &&
             closed1 == other.closed1 && leftovers_killed == other.leftovers_killed &&
             stop_deadline == other.stop_deadline;
    }
  };
  Snapshot snapshot_locked() const {
    return Snapshot{next_deadline_locked(), phase_,           stop_error_.has_value(), closed_[0], closed_[1],
                    leftovers_killed_,      stop_deadline_};
  }
  LifecycleEffects counted(LifecycleEffects effects, const Snapshot& before) {
    undelivered_.fetch_add(static_cast<int>(effects.records.size()));
    const Snapshot after = snapshot_locked();
    effects.changed = !(after == before) || !effects.records.empty() || effects.finished || effects.interrupt_readers;
    effects.new_deadline = after.deadline != before.deadline;
    if (effects.new_deadline) {
      deadline_hint_.store(after.deadline ? after.deadline->time_since_epoch().count()
                                          : Clock::time_point::max().time_since_epoch().count(),
                           std::memory_order_release);
    }
    effects.settled_changed = effects.finished || after.stop_error != before.stop_error;
    return effects;
  }
};

}  // namespace modkit::core
