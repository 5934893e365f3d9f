// LocalProcessBackend: the platform-free supervision logic around
// InstanceLifecycle (core/instance_lifecycle.hpp).
//
// Threads, all started through platform/thread.hpp with every signal blocked:
// per instance, one reader per output stream while it lives, taken from the
// backend's pool (core/thread_pool.hpp); per backend, the exit monitor
// (platform/exit_monitor.hpp) and one supervisor that delivers library
// records from threads that may not call the sink, reports the exits nobody
// else reported, acts on drain deadlines nobody else is waiting for, and
// starts the shutdown when the token is cancelled. Every thread holds a
// shared_ptr to the Impl and to its instance, so a thread that must be
// abandoned (stuck in a host callback) or that destroys the backend from a
// callback never touches freed memory.
//
// The exit path (issue 12): a child's output ends as it exits, so its last
// reader waits a moment for the exit, acts on it and reports it itself (sink
// and on_exit), and a stop_instance of one instance waits on the process
// itself. The monitor's hand-off through the supervisor remains for the rest:
// an exit while a reader is stuck in the sink, modules with readiness, an
// exit seen before the instance was watched, hosts without pidfds.
//
// Whoever waits for a stop drives it: stop_instance, wait_for_shutdown, the
// destructor and the supervisor all call tick() on the lifecycles they wait
// for, so no stop depends on another thread being free.
//
// Lock order (never held while the sink or on_exit runs):
//   instances_mutex_ (the live map)  ->  state_mutex_ (queues, flags, wake-ups)
//   ->  an InstanceLifecycle's own lock. The reader pool's lock is a leaf.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "core/config_validation.hpp"
#include "core/instance_lifecycle.hpp"
#include "core/limits_text.hpp"
#include "core/record_batcher.hpp"
#include "core/readiness_tracker.hpp"
#include "core/spawn_thread.hpp"
#include "core/thread_pool.hpp"
#include "core/platform_services.hpp"
#include "core/utf8.hpp"
#include "modkit/modkit.hpp"
#include "platform/exit_monitor.hpp"
#include "platform/process.hpp"
#include "platform/thread.hpp"

namespace modkit {
namespace {

using core::Clock;
using core::InstanceLifecycle;
using core::LifecycleEffects;

// One pipe's default capacity (64 KiB): a busy child's output is taken in as
// few read() calls as possible (each costs as much as splitting ~100 lines).
// The buffer's pages are only touched once that much output arrives.
constexpr std::size_t kReadChunkBytes = 64 * 1024;
constexpr std::size_t kSupervisorStackBytes = 256 * 1024;
// Scheduling slack on top of the documented bounds.
constexpr std::chrono::milliseconds kBoundSlack{250};
// How long the last reader waits for the exit once the output has ended.
// Nearly always it is a matter of microseconds; a module that closed its
// output and runs on costs a pooled thread this long once.
constexpr std::chrono::milliseconds kExitAfterOutputWait{1000};
// STATUS= notices of one instance waiting for the sink at most; more are
// counted and dropped (see Instance::queued_statuses).
constexpr int kMaxQueuedStatuses = 64;

struct Instance {
  Instance(std::unique_ptr<platform::Process> owned, core::LifecycleTimings timings)
      : process(std::move(owned)), lifecycle(*process, timings) {}

  InstanceHandle handle;
  std::unique_ptr<platform::Process> process;
  InstanceLifecycle lifecycle;
  InstanceEvents events;                              // start_instance's; set before anything can fire
  bool bounded = false;  // started with limits or privileges: its usage gets a record of its own
  std::unique_ptr<core::ReadinessTracker> readiness;  // none: ready at once
  // STATUS= notices queued for the supervisor, and those dropped because too
  // many were queued (a module flooding its descriptor must not grow the host).
  std::atomic<int> queued_statuses{0};
  std::atomic<std::uint64_t> dropped_statuses{0};
  // Why it ended (ExitStatus::Reason), -1 until known; the first to know wins
  // (a stop that comes after the child exited by itself does not rename it).
  std::atomic<int> end_reason{-1};
  std::unique_ptr<platform::PipeReader> pipes[2];  // stdout, stderr
  std::atomic<int> readers_running{0};
  // The spawn record (and BestEffort's warning): the stdout reader logs them
  // before it reads, so they come before the module's first line and no
  // other thread has to wake for them.
  std::vector<LifecycleEffects::Record> opening_records;
  // Whoever sees the exit first acts on it (the monitor, the last reader,
  // or a stop waiting on the process itself); the others do nothing.
  std::atomic<bool> exit_claimed{false};
  // Registered and watched (kWatched), or given up by a spawn that failed
  // after its readers started (kNeverWatched). Before that nobody but the
  // monitor may act on the exit: a reader that did would finish an instance
  // spawn has yet to list, and the monitor would then watch a process that
  // may be gone. Changes are announced on the backend's state_changed_.
  enum WatchState { kNotYetWatched, kWatched, kNeverWatched };
  std::atomic<int> watch_state{kNotYetWatched};
  bool watched() const { return watch_state.load() == kWatched; }
  // Readers past the end of their stream, and what the monitor saw while one
  // was (the exit, the group emptying), left to it: the same event wakes
  // both, and the reader, free to run host code, reports the exit at once.
  // Exactly one of them acts on each: see defer_to_reader().
  std::atomic<int> readers_in_tail{0};
  enum Deferred { kExitDeferred = 1, kContentsDeferred = 2 };
  std::atomic<int> deferred{0};
  // Library records of this instance queued for the supervisor (under the
  // backend's state_mutex_): its exit is reported where it is seen only
  // when none is left, so the report never overtakes them.
  int queued_records = 0;
  // Under the backend's state_mutex_:
  bool reported = false;   // exit reported (or abandoned: nothing to report)
  bool abandoned = false;
};

using InstancePtr = std::shared_ptr<Instance>;

// For the monitor: true when a reader past its stream will act on `what`
// (it looks at `deferred` after leaving its tail). The bit is set before
// looking again, so that exactly one of the two acts on it.
bool defer_to_reader(Instance& instance, int what) {
  // Never with readiness: the monitor delivers the notifications written
  // before the exit first, which a reader acting on the exit would overtake
  // (a READY=1 just before exiting must still count: found by CI under TSan).
  if (instance.readiness || instance.readers_in_tail.load() == 0) return false;
  instance.deferred.fetch_or(what);
  if (instance.readers_in_tail.load() > 0) return true;
  return (instance.deferred.fetch_and(~what) & what) == 0;  // cleared: a reader took it
}

void mark_end(Instance& instance, ExitStatus::Reason reason) {
  int unknown = -1;
  instance.end_reason.compare_exchange_strong(unknown, static_cast<int>(reason));
}

// A limit that ended the module is the cause of whatever else went wrong
// (a readiness failure, above all): marked first, as the first mark wins.
// The exit callback marks it too, but the readiness may fail before that
// callback runs (found by review: half the CPU-limited modules that were
// never ready ended as "NotReady").
void mark_limit_end(Instance& instance) {
  if (!instance.process->peek_exit()) return;
  if (auto limit = instance.process->limit_end()) mark_end(instance, *limit);
}

ExitStatus status_with_reason(const Instance& instance, ExitStatus status) {
  int reason = instance.end_reason.load();
  status.reason = reason < 0 ? ExitStatus::Reason::Exited : static_cast<ExitStatus::Reason>(reason);
  return status;
}

// to_string without the reason, which the callers add (or not) themselves.
std::string describe(ExitStatus status) {
  status.reason = ExitStatus::Reason::Exited;
  return to_string(status);
}

// Host code (a sink, an event) must not unwind through modkit's threads.
template <typename Call>
void call_host(Call&& call) {
#if defined(__cpp_exceptions)
  try {
    call();
  } catch (...) {
  }
#else
  call();
#endif
}

// Which backend's callback (sink or on_exit) this thread is running, if any.
thread_local const void* tls_backend = nullptr;
thread_local const Instance* tls_reader_of = nullptr;
thread_local int tls_reader_stream = 0;
thread_local bool tls_on_supervisor = false;
// The instance whose counted library record this thread is handing to the
// sink: a stop called from that sink call must not wait for that record.
thread_local const Instance* tls_delivering_for = nullptr;
// The instance whose exit this thread may report itself: set by a reader
// past the end of its stream (free, and allowed to run host code).
thread_local const Instance* tls_may_report = nullptr;

}  // namespace

class LocalProcessBackend::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(core::PlatformServices services, CancellationToken token, std::shared_ptr<LogSink> sink,
       LocalProcessOptions options)
      : services_(std::move(services)), token_(std::move(token)), sink_(std::move(sink)), options_(std::move(options)) {
    // Far above any sane line, and far enough from SIZE_MAX for the splitter's arithmetic.
    options_.max_line_bytes = std::min<std::size_t>(options_.max_line_bytes, std::size_t{1} << 30);
    timings_.drain_timeout = options_.drain_timeout;
    timings_.kill_timeout = options_.kill_timeout;
    core::ThreadPoolOptions pool;
    pool.stack_bytes = options_.reader_stack_bytes;
    pool.max_idle = options_.idle_readers;
    pool.idle_timeout = std::max(options_.idle_reader_timeout, std::chrono::milliseconds(0));
    reader_pool_ = std::make_unique<core::ThreadPool>(services_.start_thread, pool, "a reader");
  }

  Result<void> start();
  void teardown();
  void observe_cancel();
  const std::optional<Error>& start_error() const { return start_error_; }

  Result<InstanceHandle> spawn(const OopModuleConfig& config);
  Result<InstancePtr> start_child(const OopModuleConfig& config, InstanceEvents events);
  Result<std::optional<ExitStatus>> stop(const InstanceHandle& handle);
  std::vector<InstanceHandle> list(std::string_view module);
  void wait_for_shutdown();

  void log_event(const Instance* instance, LogLevel level, std::string_view text);

 private:
  Error cancelled_error(const std::string& module) const {
    return make_error(std::errc::operation_canceled,
                      "module '" + module + "': cannot spawn, the backend is shutting down (token cancelled)");
  }
  std::chrono::milliseconds after_kill_bound() const {
    return options_.kill_timeout + 2 * options_.drain_timeout + kBoundSlack;
  }

  void deliver(const LogRecord& record);
  void apply(const InstancePtr& instance, LifecycleEffects effects, bool may_report_here = true);
  void exit_seen(const InstancePtr& instance);
  void apply_readiness(const InstancePtr& instance, core::ReadinessTracker::Effects effects);
  Result<InstanceHandle> wait_until_ready(const InstancePtr& instance);
  void queue_record(const InstancePtr& instance, LogLevel level, std::string text);
  void notify() {
    std::lock_guard<std::mutex> lock(state_mutex_);
    ++generation_;
    state_changed_.notify_all();
  }
  void settle_watch(Instance& instance, Instance::WatchState state) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    instance.watch_state.store(state);
    state_changed_.notify_all();
  }
  void unlist(const Instance& instance) {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    instances_.erase(instance.handle.instance_id);
  }

  Result<void> start_readers(const InstancePtr& instance);
  void read_stream(const InstancePtr& instance, int index);
  void abandon_unregistered(const InstancePtr& instance);

  void stop_group(const std::vector<InstancePtr>& group, Clock::time_point deadline);
  void abandon(const InstancePtr& instance);
  std::vector<InstancePtr> live_instances();

  void supervise();
  bool deliver_pending_records();
  bool records_outstanding(const Instance& instance);
  void report_exit(const InstancePtr& instance);

  core::PlatformServices services_;
  core::SpawnThread spawn_thread_{services_};  // for Privileges::die_with_host
  std::unique_ptr<core::ThreadPool> reader_pool_;
  CancellationToken token_;
  std::shared_ptr<LogSink> sink_;
  LocalProcessOptions options_;
  core::LifecycleTimings timings_;
  std::unique_ptr<platform::ExitMonitor> monitor_;
  std::unique_ptr<platform::Containment> containment_;  // or none (fakes)
  std::unique_ptr<platform::Thread> supervisor_;
  std::optional<Error> start_error_;
  CancellationToken::Registration registration_;

  std::shared_mutex instances_mutex_;
  std::unordered_map<std::string, InstancePtr> instances_;  // live: spawned, not yet reaped
  bool closed_ = false;                                     // no more spawns

  std::mutex state_mutex_;
  // Waiters (stop drivers, the teardown) and the supervisor wait apart: the
  // supervisor wakes only when it has work, not at every change of a stop
  // someone else drives (each wake-up costs a context switch on the path).
  std::condition_variable state_changed_;
  std::uint64_t generation_ = 0;  // bumped by every change, so no wake-up is missed
  std::condition_variable supervisor_wake_;
  std::uint64_t supervisor_generation_ = 0;
  void wake_supervisor_locked() {
    ++supervisor_generation_;
    supervisor_wake_.notify_one();
  }
  std::vector<InstancePtr> unjoined_;  // every instance whose readers are not joined yet
  std::deque<InstancePtr> reports_;    // reaped, exit not yet reported
  struct PendingRecord {
    InstancePtr instance;
    LifecycleEffects::Record record;
    bool counted = true;  // counted by the instance's lifecycle until delivered
    // Ready and Status also call the instance's InstanceEvents; queued with
    // the records, so a ready event always comes before the exit report.
    enum class Kind { Record, Ready, Status } kind = Kind::Record;
  };
  void deliver_pending(PendingRecord& pending);
  void deliver_one(PendingRecord& pending);
  void push_pending_locked(PendingRecord pending) {
    if (pending.instance) ++pending.instance->queued_records;
    pending_records_.push_back(std::move(pending));
  }
  std::deque<PendingRecord> pending_records_;  // from threads that must not call the sink
  bool cancel_seen_ = false;
  Clock::time_point shutdown_deadline_{};
  bool destroying_ = false;
  bool torn_down_ = false;  // the destructor has returned: no more on_exit calls
  bool supervisor_done_ = false;
  bool supervisor_running_ = false;
  bool in_on_exit_ = false;  // the supervisor is inside on_exit
  std::atomic<bool> sink_closed_{false};  // the destructor returned: no sink call any more
};

// ---------------------------------------------------------------------------
// Records and host callbacks
// ---------------------------------------------------------------------------

// Host code runs only here and in report_exit. An exception from it (a host
// built with exceptions) must not unwind through modkit's threads.
void LocalProcessBackend::Impl::deliver(const LogRecord& record) {
  // The host may close what its sink writes to once the destructor returned.
  if (sink_closed_.load(std::memory_order_acquire)) return;
  call_host([&] { sink_->write(record); });
}

void LocalProcessBackend::Impl::log_event(const Instance* instance, LogLevel level, std::string_view text) {
  std::string scratch;
  LogRecord record;
  record.module = instance ? utf8::sanitize(instance->handle.module, scratch) : std::string_view("modkit");
  std::string module_copy(record.module);  // `scratch` is reused below
  record.module = module_copy;
  record.instance_id = instance ? std::string_view(instance->handle.instance_id) : std::string_view();
  record.stream = LogStream::Library;
  record.level = level;
  record.line = utf8::sanitize(text, scratch);
  record.timestamp = std::chrono::system_clock::now();
  deliver(record);
}

// Library records go to the supervisor, which alone calls the sink for them:
// a thread that waits against a bound (stop_instance, the destructor) or a
// host thread (spawn_instance) never blocks in a sink. Lines go from the
// readers. Until the supervisor runs, records are logged where they arise.
void LocalProcessBackend::Impl::apply(const InstancePtr& instance, LifecycleEffects effects, bool may_report_here) {
  if (effects.interrupt_readers) {
    for (auto& pipe : instance->pipes) {
      if (pipe) pipe->interrupt();
    }
  }
  // Unlisted before anyone can see the status: a stop_instance that returns
  // it must not find the instance again. The monitor lets go of the process
  // (it may be destroyed once reported).
  if (effects.finished) {
    unlist(*instance);
    monitor_->unwatch(*instance->process);
  }
  if (!effects.changed) return;
  bool report_here = false;
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (effects.finished) {
      // Reported on this thread, saving the supervisor's wake-up, when it is
      // a reader past its stream and nothing of the instance is still queued
      // for the supervisor (the report must not overtake it).
      report_here = may_report_here && tls_may_report == instance.get() && supervisor_running_ && !destroying_ &&
                    instance->queued_records == 0 && effects.records.empty();
          if (report_here) {
        instance->reported = true;
      } else {
        reports_.push_back(instance);
      }
    }
    for (auto& record : effects.records) push_pending_locked({instance, std::move(record)});
    if (effects.settled_changed || effects.new_deadline) {
      ++generation_;
      state_changed_.notify_all();
    }
    if ((effects.finished && !report_here) || !effects.records.empty() || effects.new_deadline) {
      wake_supervisor_locked();
    }
  }
  if (report_here) report_exit(instance);
}

// Acts on the child's exit, once, whichever thread saw it first.
void LocalProcessBackend::Impl::exit_seen(const InstancePtr& instance) {
  // Claimed only by a caller that found the exit itself: one woken for
  // something else (a monitor's stale event) must not take the claim, or
  // nobody would act on the real exit.
  if (!instance->process->peek_exit()) return;
  if (instance->exit_claimed.exchange(true)) return;
  Clock::time_point now = Clock::now();
  // The monitor delivered the notifications written before the exit.
  // A limit that ended it is the cause, also of a readiness failure.
  if (auto limit = instance->process->limit_end()) mark_end(*instance, *limit);
  core::ReadinessTracker::Effects ready;
  if (instance->readiness) ready = instance->readiness->exited(now);
  mark_end(*instance, ready.failed ? *ready.failed : ExitStatus::Reason::Exited);
  // The readiness records go through the supervisor's queue just after:
  // the exit report must not overtake them.
  const bool quiet = !ready.failed && ready.notices.empty();
  apply(instance, instance->lifecycle.exit_signalled(now), quiet);
  apply_readiness(instance, std::move(ready));
}

void LocalProcessBackend::Impl::queue_record(const InstancePtr& instance, LogLevel level, std::string text) {
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (supervisor_running_) {
      push_pending_locked({instance, {level, std::move(text)}, false});
      wake_supervisor_locked();
      return;
    }
  }
  log_event(instance.get(), level, text);
}

// A readiness failure ends the instance like a stop (graceful step, grace,
// kill, drain), under its own reason.
void LocalProcessBackend::Impl::apply_readiness(const InstancePtr& instance, core::ReadinessTracker::Effects effects) {
  // An instance already ending for another cause (a stop, the shutdown) did
  // not fail its readiness: it was not given the time to be ready.
  if (effects.failed) {
    int reason = instance->end_reason.load();
    if (reason >= 0 && reason != static_cast<int>(*effects.failed)) effects.failed.reset();
  }
  std::vector<PendingRecord> events;
  for (auto& notice : effects.notices) {
    if (notice) {
      if (instance->queued_statuses.fetch_add(1) >= kMaxQueuedStatuses) {
        instance->queued_statuses.fetch_sub(1);
        instance->dropped_statuses.fetch_add(1);
        continue;
      }
      events.push_back({instance, {LogLevel::Info, std::move(*notice)}, false, PendingRecord::Kind::Status});
    } else {
      events.push_back({instance, {LogLevel::Info, "ready"}, false, PendingRecord::Kind::Ready});
    }
  }
  if (effects.failed) {
    mark_limit_end(*instance);
    mark_end(*instance, *effects.failed);
    events.push_back({instance, {LogLevel::Warn, effects.why + ": stopping it"}, false});
  }
  if (!events.empty() || effects.deadline_moved) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    // Without the supervisor (teardown) there is nobody to deliver them.
    if (supervisor_running_) {
      for (auto& event : events) push_pending_locked(std::move(event));
      wake_supervisor_locked();  // also: it times the readiness, and the deadline came nearer
    }
    ++generation_;  // spawn_instance may be waiting for the readiness
    state_changed_.notify_all();
  }
  if (effects.failed) {
    Clock::time_point now = Clock::now();
    apply(instance, instance->lifecycle.begin_stop(now, now + options_.stop_grace));
  }
}

// ---------------------------------------------------------------------------
// Start and spawn
// ---------------------------------------------------------------------------

Result<void> LocalProcessBackend::Impl::start() {
  if (services_.open_containment) {
    std::vector<std::string> notes;
    auto containment = services_.open_containment(options_, notes);
    for (const auto& note : notes) log_event(nullptr, LogLevel::Warn, note);
    if (!containment) {
      start_error_ = containment.error();
      return std::move(containment).error();
    }
    containment_ = std::move(*containment);
  }
  auto monitor = services_.make_exit_monitor(options_.use_pidfd);
  if (!monitor) {
    start_error_ = monitor.error();
    return std::move(monitor).error();
  }
  monitor_ = std::move(*monitor);
  std::weak_ptr<Impl> weak = shared_from_this();
  auto supervisor = services_.start_thread(kSupervisorStackBytes, [self = shared_from_this()] { self->supervise(); },
                                           "the supervisor");
  if (!supervisor) {
    start_error_ = supervisor.error();
    monitor_->shutdown();
    return std::move(supervisor).error();
  }
  supervisor_ = std::move(*supervisor);
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    supervisor_running_ = true;
  }
  registration_ = token_.on_cancel([weak] {
    if (auto self = weak.lock()) self->observe_cancel();
  });
  return {};
}

// Idempotent. Runs from the token's callback, and from wait_for_shutdown: a
// token cancelled from a signal handler runs its callbacks a moment later, on
// its relay thread, and a host that waits at once must not find nothing to do.
void LocalProcessBackend::Impl::observe_cancel() {
  {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    closed_ = true;
  }
  std::lock_guard<std::mutex> lock(state_mutex_);
  if (cancel_seen_) return;
  cancel_seen_ = true;
  shutdown_deadline_ = Clock::now() + options_.shutdown_grace;
  ++generation_;
  state_changed_.notify_all();
  wake_supervisor_locked();
}

Result<InstanceHandle> LocalProcessBackend::Impl::spawn(const OopModuleConfig& config) {
  auto started = start_child(config, {});
  if (!started) return std::move(started).error();
  if (!(*started)->readiness) return (*started)->handle;
  return wait_until_ready(*started);
}

Result<InstancePtr> LocalProcessBackend::Impl::start_child(const OopModuleConfig& config, InstanceEvents events) {
  if (start_error_) {
    return make_error(std::errc::resource_unavailable_try_again,
                      "module '" + config.name + "': the backend could not start: " + start_error_->message);
  }
  if (token_.is_cancelled()) return cancelled_error(config.name);
  auto request = validate_config(config);
  if (!request) return std::move(request).error();

  request->instance_id = new_uuid_v7();
  request->containment = containment_.get();
  auto process = config.privileges.die_with_host ? spawn_thread_.run(*request) : services_.spawn(*request);
  if (!process) return std::move(process).error();

  auto instance = std::make_shared<Instance>(std::move(*process), timings_);
  instance->events = std::move(events);
  if (config.readiness.mode != Readiness::Mode::Immediate) {
    instance->readiness = std::make_unique<core::ReadinessTracker>(config.readiness, Clock::now());
  }
  instance->pipes[0] = instance->process->take_stdout();
  instance->pipes[1] = instance->process->take_stderr();
  instance->handle.module = config.name;
  instance->handle.instance_id = request->instance_id;
  instance->handle.backend = BackendKind::LocalProcess;
  instance->handle.pid = instance->process->pid();
  instance->handle.created_at = Clock::now();

  // Logged by the stdout reader before it reads: before the module's first
  // line, and before the exit report (which waits for that reader's end).
  std::string text = "spawned pid " + std::to_string(instance->process->pid()) + ": " + request->binary;
  if (options_.log_arguments) {
    for (const auto& arg : request->args) text += ' ' + arg;
  } else {
    text += " (" + std::to_string(request->args.size()) + " argument(s))";
  }
  // What it runs under: BestEffort's skipped limits are not named here but
  // in a warning of their own.
  const auto skipped = instance->process->limits_not_applied();
  if (std::string limits = core::describe_limits(core::without(config.limits, skipped), config.privileges);
      !limits.empty()) {
    text += " (" + limits + ")";
  }
  instance->bounded = !core::describe_limits(config.limits, config.privileges).empty();
  instance->opening_records.push_back({LogLevel::Info, std::move(text)});
  if (!skipped.empty()) {
    std::string warning = "not enforced (limits.enforcement is BestEffort): ";
    for (std::size_t i = 0; i < skipped.size(); ++i) warning += (i ? "; " : "") + skipped[i];
    instance->opening_records.push_back({LogLevel::Warn, std::move(warning)});
  }

  // Readers first: until they run, nobody else knows the instance, so a
  // failure here leaves nothing behind (no listing, no on_exit).
  auto readers = start_readers(instance);
  if (!readers) {
    abandon_unregistered(instance);
    Error error = std::move(readers).error();
    error.message = "module '" + config.name + "': " + error.message + "; the child was killed";
    return error;
  }

  // Registered in both lists under the map's lock, so a shutdown that has
  // closed the map sees every instance registered before it.
  bool closed;
  {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    closed = closed_;
    if (!closed) {
      instances_.emplace(instance->handle.instance_id, instance);
      std::lock_guard<std::mutex> state(state_mutex_);
      unjoined_.push_back(instance);
    }
  }
  if (closed) {
    settle_watch(*instance, Instance::kNeverWatched);
    abandon_unregistered(instance);
    return cancelled_error(config.name);
  }

  std::weak_ptr<Instance> weak_instance = instance;
  std::weak_ptr<Impl> weak_self = shared_from_this();
  auto watched = monitor_->watch(
      *instance->process,
      [weak_self, weak_instance] {
        auto self = weak_self.lock();
        auto alive = weak_instance.lock();
        if (self && alive && !defer_to_reader(*alive, Instance::kExitDeferred)) self->exit_seen(alive);
      },
      [weak_self, weak_instance] {
        auto self = weak_self.lock();
        auto alive = weak_instance.lock();
        if (self && alive && !defer_to_reader(*alive, Instance::kContentsDeferred)) {
          self->apply(alive, alive->lifecycle.contents_changed(Clock::now()));
        }
      },
      [weak_self, weak_instance](std::string_view data, bool eof) {
        auto self = weak_self.lock();
        auto alive = weak_instance.lock();
        if (!self || !alive || !alive->readiness) return;
        Clock::time_point now = Clock::now();
        // The end of file comes with the exit as often as before it: an
        // exited child failed by exiting, whichever the monitor saw first.
        self->apply_readiness(alive, eof ? alive->readiness->notify_closed(now, alive->process->peek_exit().has_value())
                                         : alive->readiness->notify_data(data, now));
      });
  if (!watched) {
    unlist(*instance);
    {
      std::lock_guard<std::mutex> state(state_mutex_);
      unjoined_.erase(std::remove(unjoined_.begin(), unjoined_.end(), instance), unjoined_.end());
    }
    settle_watch(*instance, Instance::kNeverWatched);
    abandon_unregistered(instance);
    Error error = std::move(watched).error();
    error.message = "module '" + config.name + "': " + error.message;
    return error;
  }
  settle_watch(*instance, Instance::kWatched);
  if (instance->readiness) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    wake_supervisor_locked();  // it times the readiness from now on
  }
  return instance;
}

// Waits for the readiness, driving its timeout itself (the supervisor may be
// the caller, in on_exit). A failed instance is stopped and drained before
// the error returns, within timeout + G + K + 2D.
Result<InstanceHandle> LocalProcessBackend::Impl::wait_until_ready(const InstancePtr& instance) {
  core::ReadinessTracker& tracker = *instance->readiness;
  for (;;) {
    std::uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      seen = generation_;
    }
    apply_readiness(instance, tracker.tick(Clock::now()));
    core::ReadyState state = tracker.state();
    if (state == core::ReadyState::Ready) return instance->handle;
    if (state == core::ReadyState::Failed || instance->lifecycle.status() || token_.is_cancelled()) {
      // Ready, then ended, between the two looks: the readiness came first
      // (its notifications are delivered before the exit), so it counts.
      // Found by CI under TSan once the exit was reported without a hop.
      if (tracker.state() == core::ReadyState::Ready) return instance->handle;
      break;
    }
    std::unique_lock<std::mutex> lock(state_mutex_);
    state_changed_.wait_until(lock, tracker.deadline_hint(), [&] { return generation_ != seen; });
  }
  // The thread that failed the tracker marks the end reason a moment after
  // the tracker shows Failed; mark it here too, before stop_group marks the
  // end as a stop (first mark wins). Found by CI under TSan.
  if (auto failure = tracker.failure()) {
    mark_limit_end(*instance);
    mark_end(*instance, *failure);
  }
  // Stopped (the shutdown, or a stop_instance from another thread) before it
  // could be ready: not a readiness failure.
  const int reason = instance->end_reason.load();
  const bool cancelled = reason == static_cast<int>(ExitStatus::Reason::Stopped) ||
                         (reason < 0 && tracker.state() != core::ReadyState::Failed && token_.is_cancelled());
  Clock::time_point deadline = Clock::now() + options_.stop_grace;
  if (token_.is_cancelled()) {
    observe_cancel();
    std::lock_guard<std::mutex> lock(state_mutex_);
    deadline = shutdown_deadline_;
  }
  stop_group({instance}, deadline);
  const std::string& module = instance->handle.module;
  if (cancelled && token_.is_cancelled()) return cancelled_error(module);
  if (cancelled) {
    return make_error(std::errc::operation_canceled,
                      "module '" + module + "': stopped (stop_instance) before it was ready");
  }
  std::string ended = " (it was stopped)";
  if (auto status = instance->lifecycle.status()) ended = " (" + describe(*status) + ")";
  switch (static_cast<ExitStatus::Reason>(instance->end_reason.load())) {
    case ExitStatus::Reason::ReadinessTimeout:
      return make_error(std::errc::timed_out, "module '" + module + "': not ready within " +
                                                  std::to_string(tracker.timeout().count()) + " ms" + ended);
    case ExitStatus::Reason::NotReady:
      if (tracker.closed_early()) {
        return make_error(std::errc::broken_pipe,
                          "module '" + module + "': closed its notification descriptor before it was ready" + ended);
      }
      return make_error(std::errc::no_such_process, "module '" + module + "': ended before it was ready" + ended);
    default:
      return make_error(std::errc::no_such_process, "module '" + module + "': ended before it was ready" + ended);
  }
}

// For a child nobody else knows yet: kill it, wait for it (bounded), reap it,
// and join whichever reader started.
void LocalProcessBackend::Impl::abandon_unregistered(const InstancePtr& instance) {
  (void)instance->process->kill_tree();
  bool exited = instance->process->wait_for_exit(options_.kill_timeout).has_value();
  if (exited) instance->process->reap();
  // Not waited for: a reader may already be inside the sink with a line, and
  // a sink that waits for a lock the host holds around spawn_instance would
  // deadlock us. Interrupted, it ends by itself; it holds what it uses.
  for (auto& pipe : instance->pipes) {
    if (pipe) pipe->interrupt();
  }
  if (!exited) {
    queue_record(instance, LogLevel::Error,
                 "pid " + std::to_string(instance->process->pid()) + " did not exit after being killed: abandoned");
  }
}

Result<void> LocalProcessBackend::Impl::start_readers(const InstancePtr& instance) {
  instance->readers_running = 2;
  for (int index = 0; index < 2; ++index) {
    auto started = reader_pool_->run([self = shared_from_this(), instance, index] { self->read_stream(instance, index); });
    if (!started) {
      instance->readers_running -= 2 - index;  // this reader and any after it never ran
      return std::move(started).error();
    }
  }
  return {};
}

void LocalProcessBackend::Impl::read_stream(const InstancePtr& instance, int index) {
  tls_backend = this;
  tls_reader_of = instance.get();
  tls_reader_stream = index;
  // Hands the lines of each chunk to the sink as one batch; a stdout line the
  // readiness waits for goes to the tracker once the sink has had it.
  class Forwarder final : public core::RecordBatcher::Output {
   public:
    Forwarder(Impl& impl, const InstancePtr& instance, LogStream stream)
        : impl_(impl), owner_(instance), instance_(*instance), stream_(stream) {}
    void deliver(const LogRecord* records, std::size_t count) override {
      // As deliver(): the host may close what its sink writes to once the
      // destructor returned.
      if (impl_.sink_closed_.load(std::memory_order_acquire)) return;
      call_host([&] { impl_.sink_->write_batch(records, count); });
    }
    bool wants_lines() override {
      return stream_ == LogStream::Stdout && instance_.readiness && instance_.readiness->awaits_stdout_line();
    }
    void line_seen(std::string_view text) override {
      impl_.apply_readiness(owner_, instance_.readiness->stdout_line(text, Clock::now()));
    }

   private:
    Impl& impl_;
    const InstancePtr& owner_;
    const Instance& instance_;
    LogStream stream_;
  };

  if (index == 0) {
    for (const auto& record : instance->opening_records) log_event(instance.get(), record.level, record.text);
  }
  // Until spawn has registered the instance, its pipes may be interrupted
  // (spawn failed) before anything is read: that costs nothing here.
  {
    const LogStream stream = index == 0 ? LogStream::Stdout : LogStream::Stderr;
    Forwarder forwarder(*this, instance, stream);
    core::RecordBatcher batcher(options_.max_line_bytes, instance->handle.module, instance->handle.instance_id, stream,
                                forwarder);
    std::unique_ptr<char[]> buffer(new char[kReadChunkBytes]);
    platform::PipeReader& pipe = *instance->pipes[index];
    for (;;) {
      std::ptrdiff_t count = pipe.read(buffer.get(), kReadChunkBytes);
      if (count <= 0) break;
      // One clock read per read() rather than per line (per line it cost
      // more than the rest of the forwarding): every line arrived at once.
      auto received = std::chrono::system_clock::now();
      instance->lifecycle.delivering(index, true);
      batcher.feed(std::string_view(buffer.get(), static_cast<std::size_t>(count)), received);
      instance->lifecycle.delivering(index, false);
    }
    auto received = std::chrono::system_clock::now();
    instance->lifecycle.delivering(index, true);
    batcher.finish(received);
    instance->lifecycle.delivering(index, false);
  }
  if (index == 0 && instance->readiness) apply_readiness(instance, instance->readiness->stdout_closed(Clock::now()));
  tls_may_report = instance.get();
  instance->readers_in_tail.fetch_add(1);
  apply(instance, instance->lifecycle.stream_closed(index, Clock::now()));
  // A child's output ends as it exits: the last reader waits a moment for the
  // exit and acts on it (and reports it) itself, rather than for the monitor
  // to wake and hand it to the supervisor. (Linux closes an exiting task's
  // descriptors before it becomes a zombie, so the exit is rarely there yet
  // at the end of file.) A module that closed its output and runs on only
  // costs this thread the wait; the monitor still sees its exit. Not with
  // readiness: the monitor reads the notifications written before the exit
  // first (a READY=1 just before exiting still counts).
  bool exited = false, emptied = false;
  // A module that exits at once (a few hundred microseconds after its exec)
  // can end before spawn_instance has watched it: wait for that, briefly.
  if (!instance->readiness && instance->lifecycle.streams_closed() &&
      instance->watch_state.load() == Instance::kNotYetWatched) {
    std::unique_lock<std::mutex> lock(state_mutex_);
    state_changed_.wait_for(lock, kExitAfterOutputWait,
                            [&] { return instance->watch_state.load() != Instance::kNotYetWatched; });
  }
  if (!instance->readiness && instance->watched() && instance->lifecycle.streams_closed() &&
      !instance->lifecycle.status()) {
    const auto until = Clock::now() + kExitAfterOutputWait;
    const bool claimed = instance->exit_claimed.load();  // by the monitor, before this reader got here
    if (!claimed) {
      exited = instance->process->peek_exit().has_value();
      if (!exited && instance->process->exit_waitable()) {
        exited = instance->process->wait_for_exit(kExitAfterOutputWait).has_value();
      }
    }
    // A contained child's group empties a moment after its exit shows.
    if (exited || claimed) {
      emptied = instance->process->wait_for_contents_empty(
          std::max(std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()), std::chrono::milliseconds(0)));
    }
  }
  instance->readers_in_tail.fetch_sub(1);
  // What the monitor saw while this reader (or the other) was here.
  const int deferred = instance->deferred.exchange(0);
  if (exited || (deferred & Instance::kExitDeferred)) exit_seen(instance);
  if (emptied || (deferred & Instance::kContentsDeferred)) {
    apply(instance, instance->lifecycle.contents_changed(Clock::now()));
  }
  tls_may_report = nullptr;
  {
    // Every decrement, not only the last: the teardown, run from the other
    // reader's sink, waits for the count to reach 1.
    bool last = instance->readers_running.fetch_sub(1) == 1;
    std::lock_guard<std::mutex> lock(state_mutex_);
    ++generation_;
    state_changed_.notify_all();
    if (last) wake_supervisor_locked();  // its readers can be joined
  }
  tls_reader_of = nullptr;
  tls_backend = nullptr;
}

// ---------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------

// Starts every stop at once, then drives all of them against one deadline
// until each is reaped or its stop failed, within G + K + 2D.
void LocalProcessBackend::Impl::stop_group(const std::vector<InstancePtr>& group, Clock::time_point deadline) {
  Clock::time_point now = Clock::now();
  for (const auto& instance : group) {
    mark_end(*instance, ExitStatus::Reason::Stopped);
    apply(instance, instance->lifecycle.begin_stop(now, deadline));
  }
  const Clock::time_point bound = std::max(deadline, now) + after_kill_bound();
  for (;;) {
    std::uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      seen = generation_;
    }
    now = Clock::now();
    bool all_settled = true;
    Clock::time_point next = bound;
    for (const auto& instance : group) {
      apply(instance, instance->lifecycle.tick(now));
      if (instance->lifecycle.settled() && !records_outstanding(*instance)) continue;
      all_settled = false;
      if (auto due = instance->lifecycle.next_deadline()) next = std::min(next, *due);
    }
    if (all_settled || now >= bound) {
      // Reaped instances unlisted before we return (apply does it too, but
      // perhaps a moment after the status became visible here).
      for (const auto& instance : group) {
        if (instance->lifecycle.status()) unlist(*instance);
      }
      return;
    }
    // From on_exit, on the supervisor: nobody else delivers the records.
    if (tls_on_supervisor && tls_backend == this && deliver_pending_records()) continue;
    // One instance whose exit nobody has seen yet: wait on the process itself
    // and act on its exit here, rather than for the monitor to wake and hand
    // it over (a thread wake-up the raw kill+waitpid does not pay). Not on
    // the supervisor, which must stay free to deliver records.
    if (group.size() == 1 && !tls_on_supervisor && !group[0]->readiness && group[0]->watched() &&
        !group[0]->exit_claimed.load() &&
        group[0]->process->exit_waitable()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(next - now);
      if (group[0]->process->wait_for_exit(std::max(left, std::chrono::milliseconds(0)))) exit_seen(group[0]);
      continue;
    }
    std::unique_lock<std::mutex> lock(state_mutex_);
    state_changed_.wait_until(lock, next, [&] { return generation_ != seen; });
  }
}

Result<std::optional<ExitStatus>> LocalProcessBackend::Impl::stop(const InstanceHandle& handle) {
  InstancePtr instance;
  {
    std::shared_lock<std::shared_mutex> lock(instances_mutex_);
    auto it = instances_.find(handle.instance_id);
    if (it != instances_.end()) instance = it->second;
  }
  if (!instance || instance->lifecycle.phase() == core::Phase::Reaped) return std::optional<ExitStatus>();
  auto with_module = [&](Error error) {
    if (error.message.rfind("module '", 0) != 0) error.message = "module '" + handle.module + "': " + error.message;
    return error;
  };

  if (tls_reader_of == instance.get()) {
    // The sink, on this instance's own reader: the drain cannot finish while
    // we wait here. Start the stop; the supervisor carries it on.
    mark_end(*instance, ExitStatus::Reason::Stopped);
    apply(instance, instance->lifecycle.begin_stop(Clock::now(), Clock::now() + options_.stop_grace));
    return with_module(make_error(std::errc::resource_deadlock_would_occur,
                                  "stop_instance called from the sink on the instance's own reader thread: the stop "
                                  "was started and goes on without waiting"));
  }
  stop_group({instance}, Clock::now() + options_.stop_grace);
  if (auto status = instance->lifecycle.status()) {
    unlist(*instance);
    return std::optional<ExitStatus>(status_with_reason(*instance, *status));
  }
  if (auto error = instance->lifecycle.stop_error()) return with_module(*error);
  return with_module(make_error(std::errc::timed_out, "pid " + std::to_string(instance->process->pid()) +
                                                          " was not reaped within the stop bound"));
}

std::vector<InstanceHandle> LocalProcessBackend::Impl::list(std::string_view module) {
  std::vector<InstancePtr> found;
  {
    std::shared_lock<std::shared_mutex> lock(instances_mutex_);
    for (const auto& entry : instances_) {
      if (entry.second->handle.module == module) found.push_back(entry.second);
    }
  }
  std::vector<InstanceHandle> result;
  for (const auto& instance : found) {
    result.push_back(instance->handle);
    result.back().processes = instance->process->process_count();
  }
  std::sort(result.begin(), result.end(),
            [](const InstanceHandle& a, const InstanceHandle& b) { return a.instance_id < b.instance_id; });
  return result;
}

std::vector<InstancePtr> LocalProcessBackend::Impl::live_instances() {
  std::vector<InstancePtr> group;
  std::shared_lock<std::shared_mutex> lock(instances_mutex_);
  for (const auto& entry : instances_) group.push_back(entry.second);
  return group;
}

void LocalProcessBackend::Impl::wait_for_shutdown() {
  if (token_.is_cancelled()) observe_cancel();
  Clock::time_point deadline;
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (!cancel_seen_ || tls_backend == this) return;
    deadline = shutdown_deadline_;
  }
  stop_group(live_instances(), deadline);
}

// An instance that could not be stopped in the bound: let go of it. Its
// readers are interrupted (joined later, or detached if a sink holds them);
// the process object never blocks or signals when destroyed.
void LocalProcessBackend::Impl::abandon(const InstancePtr& instance) {
  monitor_->unwatch(*instance->process);
  for (auto& pipe : instance->pipes) {
    if (pipe) pipe->interrupt();
  }
  unlist(*instance);
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    instance->abandoned = true;
    instance->reported = true;
  }
  std::string why = "not stopped";
  if (auto error = instance->lifecycle.stop_error()) why = error->message;
  queue_record(instance, LogLevel::Error,
               "abandoned pid " + std::to_string(instance->process->pid()) + " (" + why +
                "): modkit no longer watches it (see the README's Gotchas)");
}

// ---------------------------------------------------------------------------
// The supervisor thread
// ---------------------------------------------------------------------------

void LocalProcessBackend::Impl::report_exit(const InstancePtr& instance) {
  ExitStatus status = status_with_reason(*instance, *instance->lifecycle.status());
  bool stopping = instance->lifecycle.stop_requested() && status.reason == ExitStatus::Reason::Stopped;
  LogLevel level = LogLevel::Info;
  if ((!status.success() && !stopping) || (status.reason != ExitStatus::Reason::Exited && !stopping)) {
    level = status.kind == ExitStatus::Kind::Signaled ? LogLevel::Error : LogLevel::Warn;
  }
  std::string text = describe(status);
  if (status.reason != ExitStatus::Reason::Exited) text += " [" + std::string(to_string(status.reason)) + "]";
  // Its own record, just before the exit's, whose words hosts match.
  // Only for a module the host bounded (every status carries the usage): a
  // record more per exit costs every spawn a sink call.
  if (status.usage && instance->bounded) {
    log_event(instance.get(), LogLevel::Info, core::describe_usage(*status.usage));
  }
  log_event(instance.get(), level, text);
  {
    // Decided under the lock that the destructor sets torn_down_ with: no
    // on_exit starts after it has given up on the supervisor.
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (torn_down_ || (!options_.on_exit && !instance->events.on_exit)) return;
    in_on_exit_ = true;
  }
  bool threw = true;
  if (instance->events.on_exit) {
    call_host([&] {
      instance->events.on_exit(instance->handle, status);
      threw = false;
    });
    if (threw) log_event(instance.get(), LogLevel::Error, "the instance's on_exit event threw an exception (ignored)");
  }
  if (options_.on_exit) {
    threw = true;
    call_host([&] {
      options_.on_exit(instance->handle, status);
      threw = false;
    });
    if (threw) log_event(instance.get(), LogLevel::Error, "on_exit threw an exception (ignored)");
  }
  std::lock_guard<std::mutex> lock(state_mutex_);
  in_on_exit_ = false;
  ++generation_;
  state_changed_.notify_all();
}

// Whether a stop of `instance` should still wait for its library records to
// reach the sink: not for one this very thread is delivering (a sink that
// stops the instance it is told about), and not while the supervisor, which
// delivers them, is busy in on_exit (a slow on_exit must not hold up stops;
// those records then arrive after the stop returns).
bool LocalProcessBackend::Impl::records_outstanding(const Instance& instance) {
  int discount = tls_delivering_for == &instance ? 1 : 0;
  if (instance.lifecycle.undelivered() <= discount) return false;
  std::lock_guard<std::mutex> lock(state_mutex_);
  return !in_on_exit_ || tls_on_supervisor;
}

// Logs the queued library records; true if there were any.
bool LocalProcessBackend::Impl::deliver_pending_records() {
  bool any = false;
  for (;;) {
    PendingRecord pending;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      if (pending_records_.empty()) return any;
      pending = std::move(pending_records_.front());
      pending_records_.pop_front();
    }
    any = true;
    deliver_pending(pending);
  }
}

void LocalProcessBackend::Impl::deliver_pending(PendingRecord& pending) {
  deliver_one(pending);
  if (pending.instance) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    --pending.instance->queued_records;
  }
}

void LocalProcessBackend::Impl::deliver_one(PendingRecord& pending) {
  Instance* instance = pending.instance.get();
  switch (pending.kind) {
    case PendingRecord::Kind::Record:
      tls_delivering_for = pending.counted ? instance : nullptr;
      log_event(instance, pending.record.level, pending.record.text);
      tls_delivering_for = nullptr;
      if (instance && pending.counted) {
        if (instance->lifecycle.records_delivered(1) == 0) notify();
      }
      return;
    case PendingRecord::Kind::Ready:
      log_event(instance, LogLevel::Info,
                "ready after " + std::to_string(instance->readiness ? instance->readiness->time_to_ready().count() : 0) +
                    " ms");
      if (instance->events.on_ready) call_host([&] { instance->events.on_ready(instance->handle); });
      return;
    case PendingRecord::Kind::Status:
      instance->queued_statuses.fetch_sub(1);
      if (std::uint64_t dropped = instance->dropped_statuses.exchange(0)) {
        log_event(instance, LogLevel::Warn,
                  std::to_string(dropped) + " status notice(s) dropped: the module sent them faster than the sink took them");
      }
      log_event(instance, LogLevel::Info, "status: " + pending.record.text);
      if (instance->events.on_status) {
        call_host([&] { instance->events.on_status(instance->handle, pending.record.text); });
      }
      return;
  }
}

void LocalProcessBackend::Impl::supervise() {
  tls_backend = this;
  tls_on_supervisor = true;
  bool shutdown_started = false;
  bool announce_completion = false;
  std::unique_lock<std::mutex> lock(state_mutex_);
  for (;;) {
    std::uint64_t seen = supervisor_generation_;
    // 1. Records from threads that may not call the sink, then exit reports.
    bool delivered = !pending_records_.empty() || !reports_.empty();
    while (!pending_records_.empty() || !reports_.empty()) {
      if (!pending_records_.empty()) {
        PendingRecord pending = std::move(pending_records_.front());
        pending_records_.pop_front();
        lock.unlock();
        deliver_pending(pending);
      } else {
        InstancePtr instance = std::move(reports_.front());
        reports_.pop_front();
        instance->reported = true;
        lock.unlock();
        report_exit(instance);
      }
      lock.lock();
    }
    if (delivered) {  // the teardown waits for empty queues
      ++generation_;
      state_changed_.notify_all();
    }
    // 2. Forget reported instances whose readers have returned (their
    // threads went back to the pool).
    unjoined_.erase(std::remove_if(unjoined_.begin(), unjoined_.end(),
                                   [](const InstancePtr& instance) {
                                     return instance->reported && instance->readers_running.load() == 0;
                                   }),
                    unjoined_.end());
    if (destroying_) {
      supervisor_done_ = true;
      supervisor_running_ = false;
      state_changed_.notify_all();
      return;
    }
    bool start_shutdown = cancel_seen_ && !shutdown_started;
    Clock::time_point shutdown_deadline = shutdown_deadline_;
    std::vector<InstancePtr> watch = unjoined_;
    lock.unlock();
    if (start_shutdown) {
      // Starts every stop and goes on: the ticks below drive them, and this
      // thread must stay free to deliver their records.
      shutdown_started = true;
      auto group = live_instances();
      if (!group.empty()) {
        log_event(nullptr, LogLevel::Info, "shutting down: stopping " + std::to_string(group.size()) + " instance(s)");
        announce_completion = true;
      }
      Clock::time_point now = Clock::now();
      for (const auto& instance : group) {
        mark_end(*instance, ExitStatus::Reason::Stopped);
        apply(instance, instance->lifecycle.begin_stop(now, shutdown_deadline));
      }
      lock.lock();
      continue;
    }
    if (announce_completion && live_instances().empty()) {
      announce_completion = false;
      log_event(nullptr, LogLevel::Info, "shutdown complete: every instance stopped");
    }
    // 3. Deadlines nobody else is waiting for (drains after a natural exit,
    // a stop started from a sink).
    Clock::time_point now = Clock::now();
    std::optional<Clock::time_point> next;
    for (const auto& instance : watch) {
      if (instance->readiness) {
        if (instance->readiness->deadline_hint() <= now) apply_readiness(instance, instance->readiness->tick(now));
        auto due = instance->readiness->deadline_hint();
        if (due != Clock::time_point::max()) next = next ? std::min(*next, due) : due;
      }
      // Most instances have nothing due: skip them without their lock.
      if (instance->lifecycle.next_deadline_hint() > now) {
        auto due = instance->lifecycle.next_deadline_hint();
        if (due != Clock::time_point::max()) next = next ? std::min(*next, due) : due;
        continue;
      }
      apply(instance, instance->lifecycle.tick(now));
      if (auto due = instance->lifecycle.next_deadline()) next = next ? std::min(*next, *due) : *due;
    }
    watch.clear();
    lock.lock();
    auto woken = [&] { return supervisor_generation_ != seen; };
    if (next) {
      supervisor_wake_.wait_until(lock, *next, woken);
    } else {
      supervisor_wake_.wait(lock, woken);
    }
  }
}

// ---------------------------------------------------------------------------
// Teardown
// ---------------------------------------------------------------------------

// One deadline for the whole teardown, the documented bound: the stop, then
// what is left of it for the supervisor's last reports and the readers.
void LocalProcessBackend::Impl::teardown() {
  const Clock::time_point deadline = Clock::now() + options_.shutdown_grace + after_kill_bound();
  registration_.reset();
  {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    closed_ = true;
  }
  auto group = live_instances();
  // Destroyed from a sink on an instance's own reader: that stream will not
  // be read any further, so the stop below need not wait for it.
  if (tls_backend == this && tls_reader_of != nullptr) {
    for (const auto& instance : group) {
      if (instance.get() != tls_reader_of) continue;
      for (auto& pipe : instance->pipes) {
        if (pipe) pipe->interrupt();
      }
      apply(instance, instance->lifecycle.stream_closed(tls_reader_stream, Clock::now()));
    }
  }
  if (monitor_) {
    stop_group(group, Clock::now() + options_.shutdown_grace);
    for (const auto& instance : group) {
      if (!instance->lifecycle.status()) abandon(instance);
    }
  }

  // Readers end at EOF or once interrupted, unless a sink call holds them;
  // the supervisor delivers what is queued (records, exit reports).
  std::vector<InstancePtr> unjoined;
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    unjoined = unjoined_;
  }
  for (const auto& instance : unjoined) {
    for (auto& pipe : instance->pipes) {
      if (pipe) pipe->interrupt();
    }
  }
  const bool on_supervisor = supervisor_ && supervisor_->is_current();
  auto readers_done = [&](const Instance& instance) {
    int own = (tls_reader_of == &instance) ? 1 : 0;
    return instance.readers_running.load() <= own;
  };
  std::unique_lock<std::mutex> lock(state_mutex_);
  state_changed_.wait_until(lock, deadline, [&] {
    for (const auto& instance : unjoined) {
      if (!readers_done(*instance)) return false;
    }
    // A reaped instance's report may still be on its way to the queue (the
    // thread that reaped it publishes the report just after the status).
    for (const auto& instance : group) {
      if (!on_supervisor && supervisor_running_ && !instance->reported && instance->lifecycle.status()) return false;
    }
    return on_supervisor || !supervisor_running_ ||
           (pending_records_.empty() && reports_.empty() && !in_on_exit_);
  });
  int stuck_readers = 0;
  for (const auto& instance : unjoined) stuck_readers += readers_done(*instance) ? 0 : 1;
  if (stuck_readers > 0 && supervisor_running_) {
    pending_records_.push_back({nullptr,
                                {LogLevel::Error, "a sink call has not returned: the readers of " +
                                                      std::to_string(stuck_readers) +
                                                      " instance(s) abandoned; they end when the sink returns"},
                                false});
  }
  // Then the supervisor ends (after that record, if it can); no on_exit
  // starts once torn_down_ is set.
  destroying_ = true;
  wake_supervisor_locked();
  if (supervisor_ && !on_supervisor) state_changed_.wait_until(lock, deadline, [&] { return supervisor_done_; });
  torn_down_ = true;
  const bool supervisor_done = supervisor_done_;
  unjoined.clear();
  unjoined.swap(unjoined_);
  lock.unlock();

  if (supervisor_) {
    if (supervisor_done) {
      supervisor_->join();
    } else {
      supervisor_->detach();  // busy in on_exit or a sink: it holds what it uses
    }
  }
  if (monitor_) monitor_->shutdown();
  // What is still running (an abandoned reader or supervisor) finishes its
  // current call and makes no other: no sink call after the destructor.
  sink_closed_.store(true, std::memory_order_release);
  // Idle readers are joined; one still in a sink call is let go (it ends
  // when the sink returns; it holds what it uses).
  reader_pool_->shutdown(deadline);
  unjoined.clear();
  group.clear();
  // The backend's own group directory goes once its instances' have; one that
  // an abandoned process still fills stays, for a later backend to remove.
  if (containment_) containment_->release();
}

// ---------------------------------------------------------------------------
// Public face
// ---------------------------------------------------------------------------

struct BackendAccess {
  static Result<std::unique_ptr<LocalProcessBackend>> make(core::PlatformServices services, CancellationToken token,
                                                           std::shared_ptr<LogSink> sink, LocalProcessOptions options) {
    auto impl = std::make_shared<LocalProcessBackend::Impl>(
        std::move(services), std::move(token), sink ? std::move(sink) : std::make_shared<TextLogSink>(),
        std::move(options));
    std::unique_ptr<LocalProcessBackend> backend(new LocalProcessBackend(impl));
    auto started = impl->start();
    if (!started) return std::move(started).error();
    return backend;
  }
};

core::PlatformServices core::real_platform_services() {
  PlatformServices services;
  services.spawn = [](const platform::SpawnRequest& request) { return platform::spawn(request); };
  services.make_exit_monitor = [](bool prefer_pidfd) { return platform::make_exit_monitor(prefer_pidfd); };
  services.start_thread = [](std::size_t stack_bytes, std::function<void()> body, std::string_view what) {
    return platform::start_thread(stack_bytes, std::move(body), what);
  };
  services.open_containment = [](const LocalProcessOptions& options, std::vector<std::string>& notes) {
    return platform::open_containment(options, notes);
  };
  return services;
}

Result<std::unique_ptr<LocalProcessBackend>> core::make_backend(PlatformServices services, CancellationToken token,
                                                                std::shared_ptr<LogSink> sink,
                                                                LocalProcessOptions options) {
  return BackendAccess::make(std::move(services), std::move(token), std::move(sink), std::move(options));
}

Result<std::unique_ptr<LocalProcessBackend>> LocalProcessBackend::create(CancellationToken token,
                                                                         std::shared_ptr<LogSink> sink,
                                                                         LocalProcessOptions options) {
  return BackendAccess::make(core::real_platform_services(), std::move(token), std::move(sink), std::move(options));
}

LocalProcessBackend::LocalProcessBackend(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

LocalProcessBackend::LocalProcessBackend(CancellationToken token, std::shared_ptr<LogSink> sink,
                                         LocalProcessOptions options)
    : impl_(std::make_shared<Impl>(core::real_platform_services(), std::move(token),
                                   sink ? std::move(sink) : std::make_shared<TextLogSink>(), std::move(options))) {
  auto started = impl_->start();
  if (!started) {
    impl_->log_event(nullptr, LogLevel::Error, "cannot start the backend: " + started.error().message);
  }
}

LocalProcessBackend::~LocalProcessBackend() {
  auto keep = impl_;  // a callback inside the teardown must not free it under us
  keep->teardown();
}

// Each call holds the Impl: a callback it runs may destroy the backend.
Result<InstanceHandle> LocalProcessBackend::spawn_instance(const OopModuleConfig& config) {
  auto keep = impl_;
  return keep->spawn(config);
}

Result<InstanceHandle> LocalProcessBackend::start_instance(const OopModuleConfig& config, InstanceEvents events) {
  auto keep = impl_;
  auto started = keep->start_child(config, std::move(events));
  if (!started) return std::move(started).error();
  return (*started)->handle;
}

Result<std::optional<ExitStatus>> LocalProcessBackend::stop_instance(const InstanceHandle& handle) {
  auto keep = impl_;
  return keep->stop(handle);
}

Result<std::vector<InstanceHandle>> LocalProcessBackend::list_instances(std::string_view module) {
  auto keep = impl_;
  return keep->list(module);
}

void LocalProcessBackend::wait_for_shutdown() {
  auto keep = impl_;
  keep->wait_for_shutdown();
}

}  // namespace modkit
