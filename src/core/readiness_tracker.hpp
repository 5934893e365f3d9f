// Whether an instance is ready, as a state machine (see Readiness in
// modkit.hpp for the protocol):
//
//   Waiting --READY=1 / "\n" / the stdout line--> Ready --watchdog missed--> Failed
//      |                                            (pings move the deadline)
//      +--timeout / descriptor closed / exited--> Failed
//
// Failed carries the reason the instance is then ended for. Thread-safe: its
// own lock, last in the backend's lock order, never held while host code
// runs. Time is passed in, so tests drive it with a manual clock.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "modkit/modkit.hpp"

namespace modkit::core {

enum class ReadyState { Waiting, Ready, Failed };

class ReadinessTracker {
 public:
  using Clock = std::chrono::steady_clock;
  /// What an event asks of the caller once the tracker's lock is released.
  struct Effects {
    /// In the order the module wrote them: STATUS= texts, and an empty
    /// optional where it became ready.
    std::vector<std::optional<std::string>> notices;
    std::optional<ExitStatus::Reason> failed;  ///< just failed: end the instance for this reason
    std::string why;                           ///< words for the failure
    bool deadline_moved = false;               ///< deadline_hint() came nearer: whoever times it must look again
  };

  ReadinessTracker(const Readiness& config, Clock::time_point started);

  /// Bytes from the notification descriptor.
  Effects notify_data(std::string_view data, Clock::time_point now);
  /// The descriptor reached end of file; `process_exited` when that is
  /// because the child has exited (then it failed by exiting, not closing).
  Effects notify_closed(Clock::time_point now, bool process_exited = false);
  /// A stdout line (not a continuation); cheap when nothing is awaited.
  Effects stdout_line(std::string_view line, Clock::time_point now);
  /// The child exited. In StdoutLine mode its line may still be in the pipe:
  /// only stdout_closed decides there.
  Effects exited(Clock::time_point now);
  Effects stdout_closed(Clock::time_point now);
  Effects tick(Clock::time_point now);

  ReadyState state() const;
  /// Why it failed; empty unless state() is Failed.
  std::optional<ExitStatus::Reason> failure() const;
  bool awaits_stdout_line() const { return awaiting_line_.load(std::memory_order_acquire); }
  /// When tick() has something to do; time_point::max() when never. Read
  /// without the lock (the backend's supervisor skips trackers not due).
  Clock::time_point deadline_hint() const {
    return Clock::time_point(Clock::duration(deadline_hint_.load(std::memory_order_acquire)));
  }
  std::chrono::milliseconds time_to_ready() const;
  std::chrono::milliseconds timeout() const { return config_.timeout; }
  /// Failed because the notification descriptor was closed before readiness.
  bool closed_early() const;

  /// Longest notification line kept; the rest of a longer line is dropped.
  static constexpr std::size_t kMaxNotifyLine = 4096;
  /// How long after the descriptor's end of file an exit still counts as
  /// the cause (see notify_closed).
  static constexpr std::chrono::milliseconds kExitGrace{100};

 private:
  void line_locked(std::string_view line, Clock::time_point now, Effects& effects);
  void ready_locked(Clock::time_point now, Effects& effects);
  void fail_locked(ExitStatus::Reason reason, std::string why, Effects& effects);
  void set_deadline_locked(std::optional<Clock::time_point> deadline);

  const Readiness config_;
  const Clock::time_point started_;
  mutable std::mutex mutex_;
  ReadyState state_ = ReadyState::Waiting;
  std::optional<ExitStatus::Reason> failure_;
  Clock::time_point ready_at_{};
  std::optional<Clock::time_point> deadline_;  // readiness timeout, then the watchdog's
  std::string partial_;                        // a notification line without its newline yet
  bool overlong_ = false;                      // dropping the rest of an overlong line
  bool closed_early_ = false;
  std::atomic<bool> awaiting_line_{false};
  std::atomic<Clock::rep> deadline_hint_{Clock::time_point::max().time_since_epoch().count()};
};

}  // namespace modkit::core
