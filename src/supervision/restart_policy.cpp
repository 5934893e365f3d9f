// The Supervisor's policy as pure logic (see restart_policy.hpp).
#include "supervision/restart_policy.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

namespace modkit::supervision {
namespace {

bool contains(const std::vector<int>& values, int value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

Error field_error(const ChildSpec& spec, const std::string& what) {
  return make_error(std::errc::invalid_argument, "child '" + spec.id + "': " + what);
}

std::string ms_text(Milliseconds value) { return std::to_string(value.count()) + " ms"; }

// Longer durations mean "forever"; clamping keeps every sum and conversion in range.
Milliseconds clamped(Milliseconds value) { return std::min(value, kMaxDelay); }

// Compared in milliseconds: converting a huge limit to the clock's
// nanoseconds would overflow. Exact, since the limit is whole milliseconds.
bool at_least(std::chrono::steady_clock::duration elapsed, Milliseconds limit) {
  return std::chrono::duration_cast<Milliseconds>(elapsed) >= clamped(limit);
}

}  // namespace

Result<void> validate(const ChildSpec& spec) {
  if (spec.id.empty()) return make_error(std::errc::invalid_argument, "child id must not be empty");
  const Backoff& backoff = spec.backoff;
  if (backoff.initial.count() < 0) return field_error(spec, "backoff.initial must not be negative");
  // Written as !(x >= y) so that NaN is refused too; infinity makes 0 * inf.
  if (!(backoff.multiplier >= 1.0) || !std::isfinite(backoff.multiplier)) {
    return field_error(spec, "backoff.multiplier must be finite and at least 1 (got " +
                                 std::to_string(backoff.multiplier) + ")");
  }
  if (backoff.table.empty() && backoff.maximum < backoff.initial) {
    return field_error(spec, "backoff.maximum must be at least backoff.initial");
  }
  if (!(backoff.jitter >= 0.0 && backoff.jitter <= 1.0)) {
    return field_error(spec, "backoff.jitter must be in [0, 1] (got " + std::to_string(backoff.jitter) + ")");
  }
  for (std::size_t i = 0; i < backoff.table.size(); ++i) {
    if (backoff.table[i].count() < 0) {
      return field_error(spec, "backoff.table[" + std::to_string(i) + "] must not be negative");
    }
  }
  if (spec.give_up.max_restarts < 0) return field_error(spec, "give_up.max_restarts must not be negative");
  if (spec.give_up.period.count() < 0) return field_error(spec, "give_up.period must not be negative");
  if (spec.give_up.max_consecutive_failures < 0) {
    return field_error(spec, "give_up.max_consecutive_failures must not be negative");
  }
  if (spec.reset_after.count() < 0) return field_error(spec, "reset_after must not be negative");
  return {};
}

bool is_failure(const ChildSpec& spec, const ExitStatus& status) {
  switch (status.reason) {
    case ExitStatus::Reason::ReadinessTimeout:
    case ExitStatus::Reason::NotReady:
    case ExitStatus::Reason::WatchdogTimeout:
    case ExitStatus::Reason::MemoryLimit:
    case ExitStatus::Reason::CpuLimit: return true;
    case ExitStatus::Reason::Exited:
    case ExitStatus::Reason::Stopped: break;
  }
  switch (status.kind) {
    case ExitStatus::Kind::Exited: return !contains(spec.success_exit_codes, status.code);
    case ExitStatus::Kind::Signaled: return status.forced || !contains(spec.clean_signals, status.code);
    case ExitStatus::Kind::Unknown: return true;
  }
  return true;
}

bool prevents_restart(const ChildSpec& spec, const ExitStatus& status) {
  return status.kind == ExitStatus::Kind::Exited && contains(spec.prevent_restart_exit_codes, status.code);
}

Milliseconds backoff_delay(const Backoff& backoff, std::uint64_t n, double random01) {
  if (n == 0) n = 1;
  double base = 0;
  if (!backoff.table.empty()) {
    std::size_t index = static_cast<std::size_t>(std::min<std::uint64_t>(n, backoff.table.size())) - 1;
    base = static_cast<double>(backoff.table[index].count());
  } else {
    const double initial = static_cast<double>(clamped(backoff.initial).count());
    // 0 * pow(...) is NaN once pow overflows: an initial of 0 stays 0.
    if (initial > 0.0) base = initial * std::pow(backoff.multiplier, static_cast<double>(n - 1));
    if (std::isnan(base)) base = 0.0;
    // Also catches an overflow to infinity.
    const double maximum = static_cast<double>(clamped(backoff.maximum).count());
    if (!(base <= maximum)) base = maximum;
  }
  double r = random01;
  if (!(r >= 0.0)) r = 0.0;  // NaN too
  if (r > 1.0) r = 1.0;
  double value = base * (1.0 + backoff.jitter * (2.0 * r - 1.0));
  if (!(value > 0.0)) return Milliseconds(0);
  if (value >= static_cast<double>(kMaxDelay.count())) return kMaxDelay;
  return Milliseconds(std::llround(value));
}

std::optional<std::string> GiveUpTracker::admit_restart(TimePoint now) {
  if (limits_.max_consecutive_failures > 0 && row_ > limits_.max_consecutive_failures) {
    return std::to_string(row_) + " failures in a row (give_up.max_consecutive_failures is " +
           std::to_string(limits_.max_consecutive_failures) + ")";
  }
  if (limits_.max_restarts > 0) {
    // A restart exactly `period` ago has left the window.
    while (!window_.empty() && at_least(now - window_.front(), limits_.period)) window_.pop_front();
    if (window_.size() + 1 > static_cast<std::size_t>(limits_.max_restarts)) {
      return std::to_string(window_.size() + 1) + " restarts within " + ms_text(limits_.period) +
             " (give_up.max_restarts is " + std::to_string(limits_.max_restarts) + ")";
    }
    window_.push_back(now);  // only kept when a limit reads it: at most max_restarts entries
  }
  return std::nullopt;
}

void GiveUpTracker::clear() {
  row_ = 0;
  window_.clear();
}

ChildMachine::ChildMachine(ChildSpec spec) : spec_(std::move(spec)), tracker_(spec_.give_up) {}

void ChildMachine::begin_start(TimePoint now) {
  ++generation_;
  if (restart_owed_) ++restarts_;
  restart_owed_ = false;
  due_.reset();
  delay_.reset();
  ready_at_.reset();
  state_ = ChildState::Starting;
  if (immediate()) {
    state_ = ChildState::Running;
    ready_at_ = now;
  }
}

void ChildMachine::became_ready(TimePoint now) {
  if (state_ != ChildState::Starting) return;
  state_ = ChildState::Running;
  ready_at_ = now;
}

EndDecision ChildMachine::ended(const ExitStatus& status, TimePoint now, const std::function<double()>& random01) {
  last_exit_ = status;
  // A run of at least reset_after (from readiness) starts a new streak and
  // row; this end is then the first of them. A run never ready never resets.
  if (ready_at_ && at_least(now - *ready_at_, spec_.reset_after)) {
    streak_ = 0;
    tracker_.reset_row();
  }
  ready_at_.reset();
  const bool prevented = prevents_restart(spec_, status);
  EndDecision decision = decide(is_failure(spec_, status), prevented, now, random01);
  if (prevented) decision.reason = "exit code " + std::to_string(status.code) + " is in prevent_restart_exit_codes";
  return decision;
}

EndDecision ChildMachine::start_failed(TimePoint now, const std::function<double()>& random01) {
  ready_at_.reset();
  return decide(true, false, now, random01);
}

EndDecision ChildMachine::decide(bool failure, bool prevented, TimePoint now,
                                 const std::function<double()>& random01) {
  EndDecision decision;
  decision.failure = failure;
  if (failure) {
    tracker_.failure();
  } else {
    tracker_.success();
  }
  decision.row = tracker_.row();
  due_.reset();
  delay_.reset();
  restart_owed_ = false;
  if (prevented) {
    state_ = ChildState::Exited;
    return decision;
  }
  if (spec_.restart == RestartPolicy::Never) {
    state_ = ChildState::Exited;
    decision.reason = "restart policy is never";
    return decision;
  }
  if (spec_.restart == RestartPolicy::OnFailure && !failure) {
    state_ = ChildState::Exited;
    decision.reason = "not a failure, and the restart policy is on_failure";
    return decision;
  }
  if (auto why = tracker_.admit_restart(now)) {
    state_ = ChildState::GaveUp;
    decision.outcome = EndDecision::Outcome::GaveUp;
    decision.reason = std::move(*why);
    return decision;
  }
  ++streak_;
  decision.outcome = EndDecision::Outcome::Restart;
  decision.restart_number = streak_;
  decision.delay = backoff_delay(spec_.backoff, streak_, random01 ? random01() : 0.5);
  state_ = ChildState::Restarting;
  due_ = now + decision.delay;
  delay_ = decision.delay;
  restart_owed_ = true;
  return decision;
}

void ChildMachine::stopped() {
  state_ = ChildState::Stopped;
  due_.reset();
  delay_.reset();
  ready_at_.reset();
  restart_owed_ = false;
}

std::optional<TimePoint> ChildMachine::stopped_for_group() {
  std::optional<TimePoint> due = due_;
  state_ = ChildState::Stopped;
  due_.reset();
  delay_.reset();
  ready_at_.reset();
  return due;
}

void ChildMachine::waiting_for_group() {
  state_ = ChildState::Restarting;
  due_.reset();
  delay_.reset();
}

void ChildMachine::manual_restart() {
  streak_ = 0;
  tracker_.clear();
  restart_owed_ = false;
  due_.reset();
  delay_.reset();
}

void ChildMachine::manual_start_failed(const std::optional<ExitStatus>& status) {
  if (status) last_exit_ = status;
  state_ = ChildState::Exited;
  ready_at_.reset();
}

}  // namespace modkit::supervision
