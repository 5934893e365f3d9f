#include "core/instance_lifecycle.hpp"

#include <algorithm>

#include "core/text.hpp"

namespace modkit::core {
std::string_view to_string(Phase phase) {
  switch (phase) {
    case Phase::Running: return "running";
    case Phase::Stopping: return "stopping";
    case Phase::Killed: return "killed";
    case Phase::ExitedUnreaped: return "exited-unreaped";
    case Phase::Drained: return "drained";
    case Phase::Reaped: return "reaped";
  }
  return "?";
}

LifecycleEffects InstanceLifecycle::begin_stop(Clock::time_point now, Clock::time_point deadline) {
  LifecycleEffects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  const Snapshot before = snapshot_locked();
  stop_requested_ = true;
  switch (phase_) {
    case Phase::Running: {
      stop_error_.reset();
      auto graceful = process_.request_stop();
      if (!graceful) {
        stop_error_ = graceful.error();
        effects.records.push_back({LogLevel::Error, "cannot stop: " + graceful.error().message});
      } else if (*graceful) {
        phase_ = Phase::Stopping;
        stop_deadline_ = deadline;
        remnants_deadline_ = deadline;
        effects.records.push_back({LogLevel::Info, "stopping: graceful stop requested"});
      } else {
        kill_locked(now, "killed (no graceful step)", effects);
      }
      break;
    }
    case Phase::Stopping:
      stop_deadline_ = std::min(stop_deadline_, deadline);
      remnants_deadline_ = stop_deadline_;
      if (stop_error_) {  // the kill at the deadline failed: try again
        stop_error_.reset();
        if (now >= stop_deadline_) kill_locked(now, "grace period expired: killed the process group", effects);
      }
      break;
    case Phase::Killed:
      if (stop_error_) {  // the kill failed or did not take: try again
        stop_error_.reset();
        kill_locked(now, "killed again", effects);
      }
      break;
    case Phase::ExitedUnreaped:
      // The child is gone; what it left in its group gets the graceful step
      // and the grace too (the drain deadline waits for it).
      if (!remnants_killed_ && !process_.contents_empty()) {
        if (remnants_deadline_) {
          remnants_deadline_ = std::min(*remnants_deadline_, deadline);
        } else {
          auto graceful = process_.request_stop();
          if (graceful && *graceful) {
            remnants_deadline_ = deadline;
            effects.records.push_back(
                {LogLevel::Info, "stopping: graceful stop requested for the processes the instance left running"});
          }
        }
        if (remnants_deadline_ && !leftovers_killed_) drain_deadline_ = std::max(drain_deadline_, *remnants_deadline_);
      }
      settle_exit_locked(now, effects);
      break;
    case Phase::Drained:
    case Phase::Reaped:
      break;
  }
  return counted(std::move(effects), before);
}

void InstanceLifecycle::kill_locked(Clock::time_point now, std::string why, LifecycleEffects& effects) {
  auto killed = process_.kill_tree();
  if (!killed) {
    stop_error_ = killed.error();
    effects.records.push_back({LogLevel::Error, "cannot kill: " + killed.error().message});
    return;
  }
  phase_ = Phase::Killed;
  killed_ = true;
  remnants_killed_ = true;  // the whole group went with the child
  kill_deadline_ = now + timings_.kill_timeout;
  effects.records.push_back({LogLevel::Warn, std::move(why)});
}

LifecycleEffects InstanceLifecycle::exit_signalled(Clock::time_point now) {
  LifecycleEffects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  const Snapshot before = snapshot_locked();
  if (exit_ || phase_ == Phase::Reaped) return effects;
  exit_ = process_.peek_exit();
  if (!exit_) return effects;  // not waitable yet (nothing changed): the monitor signals again
  if (exit_->kind == ExitStatus::Kind::Unknown) {
    effects.records.push_back(
        {LogLevel::Warn, concat({"exit status lost: pid ", Decimal(process_.pid()),
                                 " was reaped by someone else (a SIGCHLD handler calling waitpid(-1), or SIGCHLD "
                                 "ignored); see the README's Gotchas"})});
  }
  exit_->forced = killed_;
  stop_error_.reset();
  phase_ = Phase::ExitedUnreaped;
  exit_time_ = now;
  drain_deadline_ = now + timings_.drain_timeout;
  // A stop's grace holds for the rest of the group too: not killed as
  // leftovers before it has run out.
  if (stop_requested_ && !remnants_killed_ && remnants_deadline_ && !process_.contents_empty()) {
    drain_deadline_ = std::max(drain_deadline_, *remnants_deadline_);
  }
  settle_exit_locked(now, effects);
  return counted(std::move(effects), before);
}

LifecycleEffects InstanceLifecycle::stream_closed(int stream, Clock::time_point now) {
  LifecycleEffects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  const Snapshot before = snapshot_locked();
  closed_[stream] = true;
  if (phase_ == Phase::ExitedUnreaped) settle_exit_locked(now, effects);
  return counted(std::move(effects), before);
}

LifecycleEffects InstanceLifecycle::contents_changed(Clock::time_point now) {
  LifecycleEffects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  const Snapshot before = snapshot_locked();
  if (phase_ == Phase::ExitedUnreaped) {
    settle_exit_locked(now, effects);
  } else if (phase_ != Phase::Reaped) {
    // Looking re-arms the handle (a cgroup.events that is not read stays
    // ready), so a watcher that polls it is not woken again and again.
    (void)process_.contents_empty();
  }
  return counted(std::move(effects), before);
}

void InstanceLifecycle::settle_exit_locked(Clock::time_point now, LifecycleEffects& effects) {
  bool empty = process_.contents_empty();
  if (!empty && stop_requested_ && !remnants_killed_ && (!remnants_deadline_ || now >= *remnants_deadline_)) {
    // Still unreaped, so the group id is still the child's own.
    remnants_killed_ = true;
    (void)process_.kill_tree();
    effects.records.push_back({LogLevel::Warn, remnants_deadline_
                                                   ? "grace period expired: killed the processes the instance left running"
                                                   : "stopping: killed the processes the instance left running"});
    empty = process_.contents_empty();  // usually not yet: the group reports its end later
  }
  if (empty && streams_closed_locked()) finish_locked(effects);
}

LifecycleEffects InstanceLifecycle::tick(Clock::time_point now) {
  LifecycleEffects effects;
  std::lock_guard<std::mutex> lock(mutex_);
  const Snapshot before = snapshot_locked();
  switch (phase_) {
    case Phase::Stopping:
      if (now >= stop_deadline_ && !stop_error_) kill_locked(now, "grace period expired: killed the process group", effects);
      break;
    case Phase::Killed:
      if (now >= kill_deadline_ && !stop_error_) {
        stop_error_ = error_of(std::errc::timed_out, {"pid ", Decimal(process_.pid()),
                                                      " was killed but has not exited after ",
                                                      Decimal(timings_.kill_timeout.count()), " ms"});
        effects.records.push_back({LogLevel::Error, stop_error_->message});
      }
      break;
    case Phase::ExitedUnreaped:
      if (stop_requested_ && !remnants_killed_ && remnants_deadline_ && now >= *remnants_deadline_) {
        settle_exit_locked(now, effects);
        if (remnants_killed_ && !leftovers_killed_) {
          // The kill gets its own drain_timeout before the leftovers step.
          drain_deadline_ = std::max(drain_deadline_, now + timings_.drain_timeout);
        }
        remnants_killed_ = true;  // killed, or nothing was left: this deadline is done
      } else {
        // An emptied group whose notice was lost (it is re-armed by every
        // look) must not wait for the drain deadline.
        settle_exit_locked(now, effects);
      }
      if (phase_ != Phase::ExitedUnreaped) break;
      if (!leftovers_killed_ && now >= drain_deadline_) {
        // The child is unreaped, so its group id is still its own.
        leftovers_killed_ = true;
        abandon_deadline_ = now + timings_.drain_timeout;
        auto left = process_.contents_empty() ? std::nullopt : process_.process_count();
        (void)process_.kill_tree();
        int holders = process_.kill_output_holders();
        bool sink_late = sink_late_locked();
        const Decimal waited(std::chrono::duration_cast<std::chrono::milliseconds>(now - exit_time_).count());
        std::string text = concat({sink_late                   ? "a sink call is late: output not drained "
                                   : !streams_closed_locked() ? "output still open "
                                                              : "processes of the instance still running ",
                                   waited, " ms after the exit; killed what is left of the process group"});
        if (left) append(text, {" (", Decimal(*left), " process(es) in its group)"});
        if (holders > 0) append(text, {" and ", Decimal(holders), " process(es) outside it holding the output"});
        effects.records.push_back({LogLevel::Warn, std::move(text)});
      } else if (leftovers_killed_ && now >= abandon_deadline_) {
        std::string text;
        if (sink_late_locked()) {
          text = "a sink call has not returned: stopped waiting for the output (the sink is late, not the module)";
        } else if (!streams_closed_locked()) {
          text = "output still held open by a process modkit cannot kill: stopped reading";
        } else {
          auto left = process_.process_count();
          text = concat({Decimal(left.value_or(0)), " process(es) of the instance did not end after being killed: left running"});
        }
        effects.records.push_back({LogLevel::Warn, std::move(text)});
        effects.interrupt_readers = true;
        finish_locked(effects);
      }
      break;
    case Phase::Running:
    case Phase::Drained:
    case Phase::Reaped:
      break;
  }
  return counted(std::move(effects), before);
}

void InstanceLifecycle::finish_locked(LifecycleEffects& effects) {
  phase_ = Phase::Drained;
  // A stop ends the whole group, also members that closed their output and
  // outlived the leader; still safe, as the leader is not reaped yet.
  if (stop_requested_) (void)process_.kill_tree();
  process_.reap();
  phase_ = Phase::Reaped;
  status_ = exit_;
  effects.finished = true;
}

Phase InstanceLifecycle::phase() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return phase_;
}

std::optional<Clock::time_point> InstanceLifecycle::next_deadline() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return next_deadline_locked();
}

std::optional<Clock::time_point> InstanceLifecycle::next_deadline_locked() const {
  switch (phase_) {
    case Phase::Stopping:
      if (!stop_error_) return stop_deadline_;
      break;
    case Phase::Killed:
      if (!stop_error_) return kill_deadline_;
      break;
    case Phase::ExitedUnreaped:
      if (leftovers_killed_) return abandon_deadline_;
      if (stop_requested_ && !remnants_killed_ && remnants_deadline_) return std::min(drain_deadline_, *remnants_deadline_);
      return drain_deadline_;
    default:
      break;
  }
  return std::nullopt;
}

bool InstanceLifecycle::settled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return phase_ == Phase::Reaped || stop_error_.has_value();
}

std::optional<ExitStatus> InstanceLifecycle::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

std::optional<Error> InstanceLifecycle::stop_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stop_error_;
}

bool InstanceLifecycle::stop_requested() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stop_requested_;
}

}  // namespace modkit::core
