// MockBackend: scripted instances without processes, on a TimeSource.
//
// One thread per backend moves every instance along its script. Everything an
// instance reports (its lines, the library record of its end, on_ready,
// on_exit) goes through a queue of its own, which one thread at a time drains
// without the Mock's lock held: the Mock's thread, or the caller of
// stop_instance, or the destructor. So the events of one instance always come
// in order (lines, on_ready before on_exit, on_exit last), and none is ever
// delivered while the Mock holds its lock.
//
// Where the header leaves it open:
// - Events at one same time of one instance come in this order: lines, then
//   readiness, then the scripted exit, then the readiness timeout. A line at
//   exactly exit_after is still written; lines after the end are not.
// - A scripted exit_status keeps a reason other than Exited as given (a test
//   can simulate a watchdog failure); the default reason becomes Exited, or
//   NotReady when the instance ends before the readiness its config asked for.
// - A stop, the token's cancellation and the destructor end an instance the
//   same way: Signaled 15, or Signaled 9 and forced when the script ignores
//   the graceful step; always at once, in Mock time as in real time (the
//   stop grace is not waited for).
// - stop_instance returns once on_exit has been delivered, except when called
//   from inside one of this Mock's callbacks: then on_exit may come after it
//   returns (waiting could wait for the calling thread itself).
// - script() scripts the starts that come after it: the first start after
//   the call takes scripts[0], whatever was started before. starts() counts
//   every start that reached the scripts (spawn_error included) since the
//   backend was made; an invalid config, or a start after the cancellation,
//   is not counted and takes no script.
// - spawn_instance's errors when the instance ends before it is ready:
//   timed_out (ReadinessTimeout), operation_canceled (stopped: the token, a
//   stop_instance from another thread, the destructor), no_such_process
//   (exited by itself first).
#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/utf8.hpp"
#include "modkit/modkit.hpp"
#include "platform/thread.hpp"

namespace modkit {
namespace {

constexpr std::size_t kMockStackBytes = 256 * 1024;
// Signal numbers of a stop, as a real POSIX module would report them.
constexpr int kGracefulSignal = 15;  // the graceful step's signal
constexpr int kKillSignal = 9;       // the kill after the grace

using Duration = std::chrono::steady_clock::duration;
constexpr Duration kNever = Duration::max();

// One thing to report about an instance, in order.
struct Action {
  enum class Kind { Line, Ready, LibraryRecord, Exit };
  Kind kind = Kind::Line;
  LogStream stream = LogStream::Stdout;
  LogLevel level = LogLevel::Info;
  std::string text;
};

}  // namespace

class MockBackend::Impl : public std::enable_shared_from_this<MockBackend::Impl> {
 public:
  Impl(CancellationToken token, std::shared_ptr<LogSink> sink, Options options)
      : token_(std::move(token)), sink_(std::move(sink)), options_(std::move(options)) {
    if (!options_.time) options_.time = steady_time_source();
    time_ = options_.time;
  }

  Result<void> start();
  void teardown();

  void script(const std::string& module, std::vector<MockScript> scripts) {
    std::lock_guard<std::mutex> lock(mutex_);
    Scripted& scripted = scripts_[module];
    scripted.scripts = std::move(scripts);
    scripted.taken = 0;
  }
  int starts(const std::string& module) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = starts_.find(module);
    return found == starts_.end() ? 0 : found->second;
  }

  Result<InstanceHandle> start(const OopModuleConfig& config, InstanceEvents events) {
    auto started = begin(config, std::move(events));
    if (!started) return std::move(started).error();
    return (*started)->handle;
  }
  Result<InstanceHandle> spawn(const OopModuleConfig& config);
  std::optional<ExitStatus> stop(const InstanceHandle& handle);
  std::vector<InstanceHandle> list(std::string_view module);
  void wait_for_shutdown();

 private:
  struct Instance {
    InstanceHandle handle;
    MockScript script;  // lines sorted by time
    InstanceEvents events;
    TimeSource::time_point started{};
    bool wants_readiness = false;
    Duration readiness_timeout{};
    bool ready = false;
    std::size_t next_line = 0;
    bool ended = false;
    ExitStatus status;
    std::deque<Action> pending;   // to report, in order
    bool delivering = false;      // a thread is draining `pending`
    bool exit_delivered = false;  // on_exit has returned
  };
  using InstancePtr = std::shared_ptr<Instance>;

  Result<InstancePtr> begin(const OopModuleConfig& config, InstanceEvents events);
  void run();
  void on_cancelled();
  void changed() {  // with mutex_ held
    ++generation_;
    changed_.notify_all();
  }
  std::optional<TimeSource::time_point> advance(Instance& instance, TimeSource::time_point now);
  std::optional<TimeSource::time_point> advance_all(TimeSource::time_point now);
  void end(Instance& instance, ExitStatus status);
  ExitStatus stop_status(const Instance& instance) const;
  void end_all_stopped();
  bool deliver_one_round(std::unique_lock<std::mutex>& lock);
  void deliver(std::unique_lock<std::mutex>& lock, const InstancePtr& instance);
  void perform(const Instance& instance, const Action& action);
  void wait_for_change(std::unique_lock<std::mutex>& lock, std::optional<TimeSource::time_point> due);
  bool in_own_callback() const;

  CancellationToken token_;
  std::shared_ptr<LogSink> sink_;
  Options options_;
  std::shared_ptr<TimeSource> time_;
  std::unique_ptr<platform::Thread> thread_;
  CancellationToken::Registration registration_;
  // Called by a manual clock after each advance(); holds only a weak_ptr to us.
  std::shared_ptr<std::function<void()>> wake_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // the Mock's thread and every waiter
  std::uint64_t generation_ = 0;     // bumped by every change, so no wake-up is missed
  struct Scripted {
    std::vector<MockScript> scripts;
    std::size_t taken = 0;  // starts since script() was called
  };
  std::map<std::string, Scripted> scripts_;
  std::map<std::string, int> starts_;
  std::unordered_map<std::string, InstancePtr> instances_;  // started, on_exit not yet delivered
  bool closed_ = false;                                     // no more starts (cancelled or destroyed)
  bool quit_ = false;                                       // the Mock's thread ends once all is delivered
};

namespace {
// The Mock whose callback this thread is running (nested calls save and restore it).
thread_local const MockBackend::Impl* tls_in_callback_of = nullptr;

// Script times beyond this (100 years) never come: `started + time` stays
// far from overflowing, and the conversion to nanoseconds cannot overflow.
constexpr std::chrono::milliseconds kScriptHorizon = std::chrono::hours(24 * 365 * 100);

Duration to_duration(std::chrono::milliseconds value) {
  if (value > kScriptHorizon) return kNever;
  if (value < -kScriptHorizon) value = -kScriptHorizon;
  return std::chrono::duration_cast<Duration>(value);
}
}  // namespace

bool MockBackend::Impl::in_own_callback() const { return tls_in_callback_of == this; }

Result<void> MockBackend::Impl::start() {
  std::weak_ptr<Impl> weak = shared_from_this();
  wake_ = std::make_shared<std::function<void()>>([weak] {
    if (auto self = weak.lock()) {
      std::lock_guard<std::mutex> lock(self->mutex_);
      self->changed();
    }
  });
  time_->subscribe(wake_);
  auto thread = platform::start_thread(kMockStackBytes, [self = shared_from_this()] { self->run(); }, "the mock");
  if (!thread) return thread.error();
  thread_ = std::move(*thread);
  registration_ = token_.on_cancel([weak] {
    if (auto self = weak.lock()) self->on_cancelled();
  });
  return {};
}

// ---------------------------------------------------------------------------
// Timelines (all with mutex_ held)
// ---------------------------------------------------------------------------

// Moves `instance` along its script up to `now`, queueing what it reports.
// Returns when its next event is due, or nothing if it has ended.
std::optional<TimeSource::time_point> MockBackend::Impl::advance(Instance& instance, TimeSource::time_point now) {
  if (instance.ended) return std::nullopt;
  const MockScript& script = instance.script;
  const Duration elapsed = now - instance.started;
  for (;;) {
    Duration line_at = kNever;
    if (instance.next_line < script.lines.size()) line_at = to_duration(script.lines[instance.next_line].at);
    Duration ready_at = kNever;
    Duration timeout_at = kNever;
    if (instance.wants_readiness && !instance.ready) {
      if (script.ready_after && to_duration(*script.ready_after) <= instance.readiness_timeout) {
        ready_at = to_duration(*script.ready_after);
      } else {
        timeout_at = instance.readiness_timeout;
      }
    }
    Duration exit_at = script.exit_after ? to_duration(*script.exit_after) : kNever;

    // Ties: lines, then readiness, then the exit, then the timeout.
    Duration first = std::min({line_at, ready_at, exit_at, timeout_at});
    if (first == kNever) return std::nullopt;  // runs until stopped, nothing left to do
    if (first > elapsed) return instance.started + first;

    if (line_at == first) {
      const MockScript::Line& line = script.lines[instance.next_line++];
      Action action;
      action.kind = Action::Kind::Line;
      action.stream = line.stream;
      action.text = line.text;
      instance.pending.push_back(std::move(action));
    } else if (ready_at == first) {
      instance.ready = true;
      Action action;
      action.kind = Action::Kind::Ready;
      instance.pending.push_back(std::move(action));
    } else if (exit_at == first) {
      ExitStatus status = script.exit_status;
      if (status.reason == ExitStatus::Reason::Exited && instance.wants_readiness && !instance.ready) {
        status.reason = ExitStatus::Reason::NotReady;
      }
      end(instance, status);
      return std::nullopt;
    } else {
      ExitStatus status;
      status.kind = ExitStatus::Kind::Signaled;
      status.code = kGracefulSignal;
      status.forced = false;
      status.reason = ExitStatus::Reason::ReadinessTimeout;
      end(instance, status);
      return std::nullopt;
    }
  }
}

std::optional<TimeSource::time_point> MockBackend::Impl::advance_all(TimeSource::time_point now) {
  std::optional<TimeSource::time_point> next;
  bool queued = false;
  for (auto& entry : instances_) {
    Instance& instance = *entry.second;
    std::size_t before = instance.pending.size();
    auto due = advance(instance, now);
    if (instance.pending.size() != before) queued = true;
    if (due && (!next || *due < *next)) next = due;
  }
  if (queued) changed();
  return next;
}

// Ends `instance` with `status`: its library record and on_exit are queued.
void MockBackend::Impl::end(Instance& instance, ExitStatus status) {
  if (instance.ended) return;
  instance.ended = true;
  instance.status = status;
  Action record;
  record.kind = Action::Kind::LibraryRecord;
  record.stream = LogStream::Library;
  ExitStatus words = status;  // the scripted record carries no reason
  words.reason = ExitStatus::Reason::Exited;
  record.text = to_string(words);
  if (status.success() || status.reason == ExitStatus::Reason::Stopped) {
    record.level = LogLevel::Info;
  } else {
    record.level = status.kind == ExitStatus::Kind::Signaled ? LogLevel::Error : LogLevel::Warn;
  }
  instance.pending.push_back(std::move(record));
  Action exit_action;
  exit_action.kind = Action::Kind::Exit;
  instance.pending.push_back(std::move(exit_action));
  changed();
}

ExitStatus MockBackend::Impl::stop_status(const Instance& instance) const {
  ExitStatus status;
  status.kind = ExitStatus::Kind::Signaled;
  status.reason = ExitStatus::Reason::Stopped;
  if (instance.script.ignores_graceful_stop) {
    status.code = kKillSignal;
    status.forced = true;
  } else {
    status.code = kGracefulSignal;
    status.forced = false;
  }
  return status;
}

void MockBackend::Impl::end_all_stopped() {
  advance_all(time_->now());  // what was due before the stop still happens
  for (auto& entry : instances_) {
    if (!entry.second->ended) end(*entry.second, stop_status(*entry.second));
  }
}

// ---------------------------------------------------------------------------
// Delivery (called with mutex_ held; unlocks it around every callback)
// ---------------------------------------------------------------------------

// Drains the queue of `instance`, which the caller has found not being drained.
void MockBackend::Impl::deliver(std::unique_lock<std::mutex>& lock, const InstancePtr& instance) {
  instance->delivering = true;
  while (!instance->pending.empty()) {
    Action action = std::move(instance->pending.front());
    instance->pending.pop_front();
    lock.unlock();
    perform(*instance, action);
    lock.lock();
    if (action.kind == Action::Kind::Exit) {
      instance->exit_delivered = true;
      instances_.erase(instance->handle.instance_id);
    }
  }
  instance->delivering = false;
  changed();
}

// One pass over every instance whose queue no one drains; true if it delivered anything.
bool MockBackend::Impl::deliver_one_round(std::unique_lock<std::mutex>& lock) {
  std::vector<InstancePtr> ready;
  for (auto& entry : instances_) {
    if (!entry.second->pending.empty() && !entry.second->delivering) ready.push_back(entry.second);
  }
  for (auto& instance : ready) {
    if (!instance->pending.empty() && !instance->delivering) deliver(lock, instance);
  }
  return !ready.empty();
}

void MockBackend::Impl::perform(const Instance& instance, const Action& action) {
  const Impl* previous = tls_in_callback_of;
  tls_in_callback_of = this;
  auto call = [&] {
    switch (action.kind) {
      case Action::Kind::Line:
      case Action::Kind::LibraryRecord: {
        std::string scratch;
        LogRecord record;
        record.module = instance.handle.module;
        record.instance_id = instance.handle.instance_id;
        record.stream = action.stream;
        record.line = utf8::sanitize(action.text, scratch);
        record.level = action.kind == Action::Kind::Line ? detect_level(record.line) : action.level;
        record.timestamp = std::chrono::system_clock::now();
        sink_->write(record);
        break;
      }
      case Action::Kind::Ready:
        if (instance.events.on_ready) instance.events.on_ready(instance.handle);
        break;
      case Action::Kind::Exit:
        if (instance.events.on_exit) instance.events.on_exit(instance.handle, instance.status);
        break;
    }
  };
#if defined(__cpp_exceptions)
  try {
    call();
  } catch (...) {
  }
#else
  call();
#endif
  tls_in_callback_of = previous;
}

// Sleeps until something changes or, on a clock that passes by itself, `due` comes.
void MockBackend::Impl::wait_for_change(std::unique_lock<std::mutex>& lock, std::optional<TimeSource::time_point> due) {
  const std::uint64_t seen = generation_;
  auto changed_since = [&] { return generation_ != seen; };
  if (time_->passes_by_itself() && due) {
    // The TimeSource's time need not be the steady clock's: sleep for the difference.
    Duration left = *due - time_->now();
    if (left <= Duration::zero()) return;
    changed_.wait_until(lock, std::chrono::steady_clock::now() + left, changed_since);
  } else {
    changed_.wait(lock, changed_since);  // a manual clock's advance() wakes us
  }
}

// ---------------------------------------------------------------------------
// The Mock's thread
// ---------------------------------------------------------------------------

void MockBackend::Impl::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    auto due = advance_all(time_->now());
    if (deliver_one_round(lock)) continue;  // the lock was let go: look again
    if (quit_) break;  // every instance has ended; what is left is being drained elsewhere
    wait_for_change(lock, due);
  }
}

void MockBackend::Impl::on_cancelled() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  end_all_stopped();
  changed();
}

// ---------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------

Result<MockBackend::Impl::InstancePtr> MockBackend::Impl::begin(const OopModuleConfig& config,
                                                                 InstanceEvents events) {
  if (config.name.empty()) return make_error(std::errc::invalid_argument, "mock: the module name is empty");
  const bool wants_readiness = config.readiness.mode != Readiness::Mode::Immediate;
  // LocalProcessBackend's rule: a day bounds every wait (and its arithmetic).
  constexpr std::chrono::milliseconds kLongestWait = std::chrono::hours(24);
  if (wants_readiness &&
      (config.readiness.timeout <= std::chrono::milliseconds::zero() || config.readiness.timeout > kLongestWait)) {
    return make_error(std::errc::invalid_argument, "mock: module '" + config.name +
                                                       "': readiness timeout must be positive and at most a day");
  }
  std::unique_lock<std::mutex> lock(mutex_);
  if (closed_ || token_.is_cancelled()) {
    return make_error(std::errc::operation_canceled,
                      "mock: module '" + config.name + "' not started: the backend is shutting down");
  }
  ++starts_[config.name];
  MockScript script;  // unscripted: ready at once, runs until stopped
  auto scripted = scripts_.find(config.name);
  if (scripted != scripts_.end() && !scripted->second.scripts.empty()) {
    const auto& list = scripted->second.scripts;
    script = list[std::min(scripted->second.taken++, list.size() - 1)];
  }
  if (script.spawn_error) return *script.spawn_error;

  auto instance = std::make_shared<Instance>();
  instance->started = time_->now();
  instance->handle.module = config.name;
  instance->handle.instance_id = new_uuid_v7();
  instance->handle.backend = BackendKind::Mock;
  instance->handle.pid = std::nullopt;
  instance->handle.created_at = instance->started;
  std::stable_sort(script.lines.begin(), script.lines.end(),
                   [](const MockScript::Line& a, const MockScript::Line& b) { return a.at < b.at; });
  instance->script = std::move(script);
  instance->events = std::move(events);
  instance->wants_readiness = wants_readiness;
  instance->readiness_timeout = to_duration(config.readiness.timeout);
  if (!wants_readiness) {
    instance->ready = true;  // on_ready from the Mock's thread, after this returns the handle
    Action action;
    action.kind = Action::Kind::Ready;
    instance->pending.push_back(std::move(action));
  }
  instances_.emplace(instance->handle.instance_id, instance);
  changed();
  return instance;
}

Result<InstanceHandle> MockBackend::Impl::spawn(const OopModuleConfig& config) {
  auto started = begin(config, InstanceEvents{});
  if (!started) return std::move(started).error();
  InstancePtr instance = std::move(*started);
  std::unique_lock<std::mutex> lock(mutex_);
  // Moves this instance along itself, so that it needs neither the Mock's thread
  // (this may be a callback on it) nor anything but the clock.
  for (;;) {
    std::size_t before = instance->pending.size();
    auto due = advance(*instance, time_->now());
    if (instance->pending.size() != before) changed();  // the Mock's thread delivers it
    if (instance->ready || instance->ended) break;
    wait_for_change(lock, due);
  }
  if (instance->ready) return instance->handle;
  switch (instance->status.reason) {
    case ExitStatus::Reason::ReadinessTimeout:
      return make_error(std::errc::timed_out, "mock: module '" + config.name + "' was not ready within " +
                                                  std::to_string(config.readiness.timeout.count()) + " ms");
    case ExitStatus::Reason::Stopped:
      return make_error(std::errc::operation_canceled,
                        "mock: module '" + config.name + "' was stopped before it was ready");
    default:
      return make_error(std::errc::no_such_process, "mock: module '" + config.name + "' ended before it was ready");
  }
}

std::optional<ExitStatus> MockBackend::Impl::stop(const InstanceHandle& handle) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto found = instances_.find(handle.instance_id);
  if (found == instances_.end() || found->second->handle.module != handle.module) return std::nullopt;
  InstancePtr instance = found->second;
  advance(*instance, time_->now());  // it may have ended by itself by now
  if (instance->ended) {
    if (!instance->pending.empty()) changed();
    return std::nullopt;
  }
  ExitStatus status = stop_status(*instance);
  end(*instance, status);
  if (!instance->delivering) {
    deliver(lock, instance);  // on this thread, the lock let go around each callback
  } else if (!in_own_callback()) {
    changed_.wait(lock, [&] { return instance->exit_delivered; });
  }
  return status;
}

std::vector<InstanceHandle> MockBackend::Impl::list(std::string_view module) {
  std::vector<InstanceHandle> result;
  std::lock_guard<std::mutex> lock(mutex_);
  advance_all(time_->now());
  for (const auto& entry : instances_) {
    if (!entry.second->ended && entry.second->handle.module == module) result.push_back(entry.second->handle);
  }
  std::sort(result.begin(), result.end(),
            [](const InstanceHandle& a, const InstanceHandle& b) { return a.instance_id < b.instance_id; });
  return result;
}

void MockBackend::Impl::wait_for_shutdown() {
  if (!token_.is_cancelled()) return;
  std::unique_lock<std::mutex> lock(mutex_);
  if (!closed_) {
    // cancel_from_signal() without its relay sets the flag but runs no callback.
    closed_ = true;
    end_all_stopped();
    changed();
  }
  if (in_own_callback()) return;  // the rest may need this very thread
  deliver_one_round(lock);
  changed_.wait(lock, [&] { return instances_.empty(); });
}

void MockBackend::Impl::teardown() {
  registration_.reset();  // no cancel callback runs after this
  std::unique_lock<std::mutex> lock(mutex_);
  closed_ = true;
  quit_ = true;
  end_all_stopped();
  changed();
  std::unique_ptr<platform::Thread> thread = std::move(thread_);
  if (thread) {
    if (thread->is_current()) {
      // Destroyed from a callback on the Mock's thread: it drains what is left
      // and ends by itself once the callback has returned.
      thread->detach();
      return;
    }
    lock.unlock();
    thread->join();
    lock.lock();
  }
  if (in_own_callback()) return;  // the rest may need this very thread
  // What another thread still drains (its callback destroyed us) is waited for.
  while (deliver_one_round(lock)) {
  }
  changed_.wait(lock, [&] { return instances_.empty(); });
}

// ---------------------------------------------------------------------------
// MockBackend
// ---------------------------------------------------------------------------

Result<std::unique_ptr<MockBackend>> MockBackend::create(CancellationToken token, std::shared_ptr<LogSink> sink,
                                                         Options options) {
  if (!sink) return make_error(std::errc::invalid_argument, "mock: the log sink is null");
  auto impl = std::make_shared<Impl>(std::move(token), std::move(sink), std::move(options));
  auto started = impl->start();
  if (!started) {
    Error error = std::move(started).error();
    if (error.code != std::errc::resource_unavailable_try_again) {
      error.code = std::make_error_code(std::errc::resource_unavailable_try_again);
    }
    return error;
  }
  return std::unique_ptr<MockBackend>(new MockBackend(std::move(impl)));
}

MockBackend::MockBackend(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

MockBackend::~MockBackend() {
  if (impl_) impl_->teardown();
}

void MockBackend::script(const std::string& module, std::vector<MockScript> scripts) {
  impl_->script(module, std::move(scripts));
}

int MockBackend::starts(const std::string& module) const { return impl_->starts(module); }

Result<InstanceHandle> MockBackend::spawn_instance(const OopModuleConfig& config) { return impl_->spawn(config); }

Result<InstanceHandle> MockBackend::start_instance(const OopModuleConfig& config, InstanceEvents events) {
  return impl_->start(config, std::move(events));
}

Result<std::optional<ExitStatus>> MockBackend::stop_instance(const InstanceHandle& handle) {
  return impl_->stop(handle);
}

Result<std::vector<InstanceHandle>> MockBackend::list_instances(std::string_view module) {
  return impl_->list(module);
}

void MockBackend::wait_for_shutdown() { impl_->wait_for_shutdown(); }

}  // namespace modkit
