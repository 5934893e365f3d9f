#include "core/readiness_tracker.hpp"

#include "core/text.hpp"

namespace modkit::core {

ReadinessTracker::ReadinessTracker(const Readiness& config, Clock::time_point started)
    : config_(config), started_(started) {
  if (config_.mode == Readiness::Mode::Immediate) {
    state_ = ReadyState::Ready;
    ready_at_ = started;
    return;
  }
  set_deadline_locked(started + config_.timeout);
  awaiting_line_.store(config_.mode == Readiness::Mode::StdoutLine, std::memory_order_release);
}

void ReadinessTracker::set_deadline_locked(std::optional<Clock::time_point> deadline) {
  deadline_ = deadline;
  deadline_hint_.store(deadline ? deadline->time_since_epoch().count() : Clock::time_point::max().time_since_epoch().count(),
                       std::memory_order_release);
}

void ReadinessTracker::ready_locked(Clock::time_point now, Effects& effects) {
  if (state_ != ReadyState::Waiting) return;
  state_ = ReadyState::Ready;
  ready_at_ = now;
  awaiting_line_.store(false, std::memory_order_release);
  effects.notices.emplace_back(std::nullopt);
  if (config_.watchdog > std::chrono::milliseconds::zero()) {
    set_deadline_locked(now + config_.watchdog);
  } else {
    set_deadline_locked(std::nullopt);
  }
}

void ReadinessTracker::fail_locked(ExitStatus::Reason reason, std::string why, Effects& effects) {
  if (state_ == ReadyState::Failed) return;
  state_ = ReadyState::Failed;
  failure_ = reason;
  awaiting_line_.store(false, std::memory_order_release);
  set_deadline_locked(std::nullopt);
  effects.failed = reason;
  effects.why = std::move(why);
}

void ReadinessTracker::line_locked(std::string_view line, Clock::time_point now, Effects& effects) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.empty() || line == "READY=1") {
    if (config_.mode == Readiness::Mode::Notify) ready_locked(now, effects);
  } else if (line == "WATCHDOG=1") {
    if (state_ == ReadyState::Ready && config_.watchdog > std::chrono::milliseconds::zero()) {
      set_deadline_locked(now + config_.watchdog);
    }
  } else if (line.substr(0, 7) == "STATUS=") {
    effects.notices.emplace_back(std::string(line.substr(7)));
  }
}

ReadinessTracker::Effects ReadinessTracker::notify_data(std::string_view data, Clock::time_point now) {
  Effects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == ReadyState::Failed) return effects;
  while (!data.empty()) {
    std::size_t newline = data.find('\n');
    std::string_view piece = data.substr(0, newline);
    if (!overlong_) {
      std::size_t room = kMaxNotifyLine - partial_.size();
      if (piece.size() > room) {
        overlong_ = true;  // the line is dropped whole: a cut "STATUS=" would mislead
        partial_.clear();
      } else {
        partial_.append(piece);
      }
    }
    if (newline == std::string_view::npos) break;
    if (!overlong_) line_locked(partial_, now, effects);
    partial_.clear();
    overlong_ = false;
    data.remove_prefix(newline + 1);
  }
  return effects;
}

ReadinessTracker::Effects ReadinessTracker::notify_closed(Clock::time_point now, bool process_exited) {
  Effects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  // A last line without its newline still counts (a module that writes
  // "READY=1" and closes).
  if (!partial_.empty() && !overlong_ && state_ != ReadyState::Failed) line_locked(partial_, now, effects);
  partial_.clear();
  if (state_ == ReadyState::Waiting && config_.mode == Readiness::Mode::Notify && process_exited) {
    fail_locked(ExitStatus::Reason::NotReady, "exited before it was ready", effects);
  } else if (state_ == ReadyState::Waiting && config_.mode == Readiness::Mode::Notify) {
    // An exiting process closes its descriptors before it can be waited for,
    // so the end of file often comes just before the exit: give the exit a
    // moment to be seen, then call it a close.
    closed_early_ = true;
    Clock::time_point soon = now + kExitGrace;
    if (!deadline_ || soon < *deadline_) {
      set_deadline_locked(soon);
      effects.deadline_moved = true;
    }
  }
  return effects;
}

ReadinessTracker::Effects ReadinessTracker::stdout_line(std::string_view line, Clock::time_point now) {
  Effects effects;
  if (!awaits_stdout_line()) return effects;
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == ReadyState::Waiting && line.substr(0, config_.line_prefix.size()) == config_.line_prefix) {
    ready_locked(now, effects);
  }
  return effects;
}

ReadinessTracker::Effects ReadinessTracker::exited(Clock::time_point now) {
  (void)now;
  Effects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == ReadyState::Waiting && config_.mode == Readiness::Mode::Notify) {
    closed_early_ = false;
    fail_locked(ExitStatus::Reason::NotReady, "exited before it was ready", effects);
  }
  // Once ended, the watchdog has nothing left to watch.
  if (state_ == ReadyState::Ready) set_deadline_locked(std::nullopt);
  return effects;
}

ReadinessTracker::Effects ReadinessTracker::stdout_closed(Clock::time_point now) {
  (void)now;
  Effects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  if (state_ == ReadyState::Waiting && config_.mode == Readiness::Mode::StdoutLine) {
    fail_locked(ExitStatus::Reason::NotReady, "closed its stdout before writing its ready line", effects);
  }
  return effects;
}

ReadinessTracker::Effects ReadinessTracker::tick(Clock::time_point now) {
  Effects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  if (!deadline_ || now < *deadline_) return effects;
  if (state_ == ReadyState::Waiting && closed_early_) {
    fail_locked(ExitStatus::Reason::NotReady, "closed its notification descriptor before it was ready", effects);
  } else if (state_ == ReadyState::Waiting) {
    fail_locked(ExitStatus::Reason::ReadinessTimeout,
                concat({"not ready within ", Decimal(config_.timeout.count()), " ms"}), effects);
  } else if (state_ == ReadyState::Ready) {
    fail_locked(ExitStatus::Reason::WatchdogTimeout,
                concat({"no watchdog ping within ", Decimal(config_.watchdog.count()), " ms"}), effects);
  }
  return effects;
}

bool ReadinessTracker::closed_early() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_early_;
}

ReadyState ReadinessTracker::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

std::optional<ExitStatus::Reason> ReadinessTracker::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

std::chrono::milliseconds ReadinessTracker::time_to_ready() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::chrono::duration_cast<std::chrono::milliseconds>(ready_at_ - started_);
}

}  // namespace modkit::core
