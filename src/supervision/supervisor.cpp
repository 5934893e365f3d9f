// Supervisor: keeps children alive on a backend it owns. The policy itself
// (failures, backoff, give-up, each child's states) is restart_policy.hpp;
// this file wires it to the backend, one thread and the events.
//
// Threads. One thread per Supervisor ("the thread") processes what the
// backend reports (on_ready, on_exit: the backend's threads only queue them),
// fires due restarts, runs group sequences and the strategies' stops. Calls
// (start, stop, restart, remove) do their own backend calls on the caller's
// thread and never wait for the thread, except that start() and restart()
// wait for readiness, which the thread reports.
//
// Lock order. Impl::mutex_ is the Supervisor's only lock, and nothing is
// called with it held but TimeSource::now() (a ManualClock takes its own lock
// and never calls out holding it) and options.random. Never with it held: the
// backend, the sink, on_event, the token (on_cancel may run the callback on
// the calling thread). So the backend's events, the clock's wake-ups and the
// token's callback may all take it.
//
// Incarnations. Each start of a child is an incarnation with a key of its
// own; the backend's events carry that key (not the instance id, which the
// start has not returned yet when an event may already come). An incarnation
// is "held" while its starter has not reported Started yet (and, for a start
// on a caller's thread, again from readiness until the caller reported
// Ready): its events wait in the queue, so every child's events come in
// order (Started, Ready, Exited). An incarnation the Supervisor ends itself is
// marked `expected` before stop_instance is called: its end never counts.
//
// Where the header leaves it open:
// - Every start attempt takes a new generation, a failed one (StartFailed)
//   included; `restarts` counts the attempts the policy made.
// - start() and restart() wait for readiness at most readiness.timeout +
//   kReadinessSlack in real time (the backend ends a module that is not
//   ready at its timeout; the slack only covers a backend that does not).
//   Called on the Supervisor's own thread (from on_event) with a readiness
//   mode other than Immediate they return resource_deadlock_would_occur:
//   the readiness they would wait for is reported by that very thread.
// - restart(id) also clears the give-up window. If its start fails, or the
//   incarnation ends before it is ready, the error is returned and the child
//   is Exited (no policy restart: the caller decides). A child whose start
//   or restart is in progress on another thread is skipped by strategies;
//   restart() of it returns device_or_resource_busy.
// - remove(id) forgets the child even when the stop fails (the error is
//   returned).
// - A group (OneForAll, RestForOne) restarts when the latest of the delays
//   its members are owed has passed. One group restart is pending at a time:
//   a failure while one is pending or running merges into it (the union of
//   the members, the later due time, the sequence starts again from the
//   first). A member stopped or restarted by a call leaves the group; the
//   rest still restart. If a member's start fails or it ends before ready
//   and it is not restarted (it gave up, or its policy says no), the members
//   not started yet are left Stopped.
// - Stops made by a strategy run on the thread, one after the other, each
//   within the backend's stop bound; meanwhile the thread handles nothing
//   else (events queue up).
// - Exited is reported only for ends the Supervisor did not cause; an end it
//   caused (or one during the shutdown) is reported as Stopped, once per
//   child, with the status when known. An incarnation that ends before it is
//   ready in start()/restart() is reported Exited, then the call fails.
// - on_event may run on the thread and on callers' threads at once. The
//   destructor reports nothing. options.random runs under the lock: it must
//   not call the Supervisor; it is called once per scheduled restart; its
//   exception or a non-finite draw counts as 0.5.
// - The destructor waits kTeardownBound for a thread held in on_event or the
//   sink, then detaches it (never while it calls the backend, which is
//   destroyed next). Every callback and re-entrant backend call checks
//   stopping_ first, so an abandoned thread does nothing visible.
// - Each public call holds the Impl (a shared_ptr copy), so on_event may
//   destroy the Supervisor from a caller's thread: the call then finishes on
//   the Impl without the backend.
#include "modkit/supervisor.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/utf8.hpp"
#include "platform/thread.hpp"
#include "supervision/restart_policy.hpp"

namespace modkit {

std::string_view to_string(RestartPolicy policy) {
  switch (policy) {
    case RestartPolicy::Never: return "never";
    case RestartPolicy::OnFailure: return "on_failure";
    case RestartPolicy::Always: return "always";
  }
  return "on_failure";
}

std::string_view to_string(Strategy strategy) {
  switch (strategy) {
    case Strategy::OneForOne: return "one_for_one";
    case Strategy::OneForAll: return "one_for_all";
    case Strategy::RestForOne: return "rest_for_one";
  }
  return "one_for_one";
}

std::string_view to_string(ChildState state) {
  switch (state) {
    case ChildState::Starting: return "starting";
    case ChildState::Running: return "running";
    case ChildState::Restarting: return "restarting";
    case ChildState::Stopped: return "stopped";
    case ChildState::Exited: return "exited";
    case ChildState::GaveUp: return "gave_up";
  }
  return "stopped";
}

std::string_view to_string(SupervisorEvent::Kind kind) {
  switch (kind) {
    case SupervisorEvent::Kind::Started: return "started";
    case SupervisorEvent::Kind::StartFailed: return "start_failed";
    case SupervisorEvent::Kind::Ready: return "ready";
    case SupervisorEvent::Kind::Exited: return "exited";
    case SupervisorEvent::Kind::RestartScheduled: return "restart_scheduled";
    case SupervisorEvent::Kind::GaveUp: return "gave_up";
    case SupervisorEvent::Kind::Stopped: return "stopped";
  }
  return "started";
}

namespace {

using Clock = std::chrono::steady_clock;
using supervision::ChildMachine;
using supervision::EndDecision;
using supervision::TimePoint;
using Kind = SupervisorEvent::Kind;

// The thread runs host callbacks (on_event, the sink) and the backend's
// start_instance: more than the backend's 256 KiB readers.
constexpr std::size_t kThreadStackBytes = 512 * 1024;
// See "Where the header leaves it open".
constexpr std::chrono::seconds kReadinessSlack{5};
// wait_for_shutdown's own wait, after the backend's, for the last ends.
constexpr std::chrono::seconds kShutdownBound{10};
// How long ~Supervisor waits for a thread stuck in on_event or the sink
// before it abandons it (the header states it).
constexpr std::chrono::seconds kTeardownBound{2};

// The Supervisor whose on_event runs on this thread (wait_for_shutdown from
// it must not wait).
thread_local const void* tls_emitting_for = nullptr;
// The Supervisor whose thread this is (its callbacks may be abandoned).
thread_local const void* tls_thread_of = nullptr;

template <typename F>
void call_host(F&& function) {
#if defined(__cpp_exceptions)
  try {
    function();
  } catch (...) {
    // A host callback's exception is dropped (the header says so).
  }
#else
  function();
#endif
}

struct Incarnation {
  std::uint64_t child = 0;               // the owning child's key (the child may be gone)
  std::optional<InstanceHandle> handle;  // once start_instance returned
  bool hold = true;                      // its events wait in the queue (see the top)
  bool expected = false;                 // the Supervisor ends it: never counts, never restarts
  bool ready = false;
  bool ended = false;
  bool waited = false;  // a caller (start, restart) waits on it and erases it
  std::optional<ExitStatus> status;
};

struct Child {
  Child(std::uint64_t child_key, ChildSpec spec) : key(child_key), machine(std::move(spec)) {}
  const std::string& id() const { return machine.spec().id; }
  std::uint64_t key;  // keys grow: key order is start order
  ChildMachine machine;
  std::uint64_t incarnation = 0;  // the current incarnation while it lives, else 0
  bool busy = false;              // start() or restart() is starting it on a caller's thread
  bool in_group = false;          // waits in the pending group restart, not started yet
};

struct QueuedEvent {
  bool exit = false;  // else ready
  std::uint64_t incarnation = 0;
  ExitStatus status;
};

// The pending group restart (OneForAll, RestForOne).
struct GroupPlan {
  std::vector<std::uint64_t> members;  // not started yet, in start order
  TimePoint due{};
  bool running = false;           // the sequence has begun
  std::uint64_t waiting_for = 0;  // the member whose readiness the sequence waits for
};

// An event, and its library record, made under the lock and emitted without it.
struct Note {
  SupervisorEvent event;
  std::string module;
  LogLevel level = LogLevel::Info;
  std::string line;
};

// Work of the thread that runs without the lock.
struct Action {
  enum class Kind { Emit, Stop, Launch };
  Kind kind = Kind::Emit;
  Note note;                       // Emit; Stop: the Stopped note, completed with the status
  std::uint64_t incarnation = 0;   // Stop
  InstanceHandle handle;           // Stop
  std::uint64_t child = 0;         // Launch, Stop
  bool group = false;              // Launch: a group sequence's start
};

std::string prefix(const std::string& id, std::uint64_t generation) {
  return "child '" + id + "' generation " + std::to_string(generation) + ": ";
}

}  // namespace

class Supervisor::Impl : public std::enable_shared_from_this<Supervisor::Impl> {
 public:
  Impl(std::unique_ptr<ModuleRuntimeBackend> backend, CancellationToken token, std::shared_ptr<LogSink> sink,
       SupervisorOptions options)
      : backend_(std::move(backend)),
        token_(std::move(token)),
        sink_(std::move(sink)),
        options_(std::move(options)),
        on_event_(std::make_shared<const std::function<void(const SupervisorEvent&)>>(std::move(options_.on_event))) {}

  // --- Set-up and teardown ---------------------------------------------------
  void seed(std::uint64_t seed_value) {
    generator_.seed(static_cast<std::uint_fast32_t>(seed_value ^ (seed_value >> 32)));
  }

  void wake() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++wakeups_;
    changed_.notify_all();
  }

  void begin_shutdown() {
    std::lock_guard<std::mutex> lock(mutex_);
    begin_shutdown_locked();
  }

  /// The destructor's first step: nothing more is started, no end counts.
  void stop_thread() {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (auto& [key, incarnation] : incarnations_) incarnation.expected = true;
    plan_.reset();
    ++wakeups_;
    changed_.notify_all();
  }

  void run();
  /// The destructor's wait: true once the thread has ended (join it); false
  /// when it sits in a host callback past kTeardownBound (detach it).
  bool wait_for_thread();

  // --- Calls ------------------------------------------------------------------
  Result<ChildStatus> start(ChildSpec spec);
  Result<void> stop(std::string_view id);
  Result<ChildStatus> restart(std::string_view id);
  Result<void> remove(std::string_view id);
  Result<ChildStatus> status(std::string_view id) const;
  std::vector<ChildStatus> list() const;
  bool any_gave_up() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return any_gave_up_;
  }
  void wait_for_shutdown();

  std::unique_ptr<ModuleRuntimeBackend> backend_;
  CancellationToken token_;
  std::shared_ptr<LogSink> sink_;
  SupervisorOptions options_;
  // Shared so that emit() calls a copy that outlives the Supervisor.
  const std::shared_ptr<const std::function<void(const SupervisorEvent&)>> on_event_;
  std::unique_ptr<platform::Thread> thread_;
  std::shared_ptr<std::function<void()>> clock_wake_;  // the clock holds it weakly
  CancellationToken::Registration registration_;

 private:
  // --- Under the lock ---------------------------------------------------------
  void begin_shutdown_locked() {
    if (!shutting_down_) {
      shutting_down_ = true;
      for (auto& [key, incarnation] : incarnations_) incarnation.expected = true;
    }
    ++wakeups_;
    changed_.notify_all();
  }
  bool shutting_down_locked() {
    if (!shutting_down_ && token_.is_cancelled()) begin_shutdown_locked();
    return shutting_down_;
  }
  TimePoint now() const { return options_.time->now(); }
  double random01() {
    if (options_.random) {
      // A host callback: its exception or a non-finite draw means "no jitter".
      double value = 0.5;
#if defined(__cpp_exceptions)
      try {
        value = options_.random();
      } catch (...) {
        value = 0.5;
      }
#else
      value = options_.random();
#endif
      return std::isfinite(value) ? value : 0.5;
    }
    return static_cast<double>(generator_() - std::minstd_rand::min()) /
           (static_cast<double>(std::minstd_rand::max() - std::minstd_rand::min()) + 1.0);
  }
  Child* find(std::uint64_t key) const {
    for (const auto& child : children_) {
      if (child->key == key) return child.get();
    }
    return nullptr;
  }
  Child* find_id(std::string_view id) const {
    for (const auto& child : children_) {
      if (child->id() == id) return child.get();
    }
    return nullptr;
  }
  Incarnation* incarnation(std::uint64_t key) {
    auto it = incarnations_.find(key);
    return it == incarnations_.end() ? nullptr : &it->second;
  }
  const Incarnation* incarnation(std::uint64_t key) const {
    auto it = incarnations_.find(key);
    return it == incarnations_.end() ? nullptr : &it->second;
  }
  void erase_child(std::uint64_t key) {
    children_.erase(std::remove_if(children_.begin(), children_.end(),
                                   [&](const std::unique_ptr<Child>& child) { return child->key == key; }),
                    children_.end());
  }
  std::uint64_t new_incarnation(Child& child) {
    std::uint64_t key = next_key_++;
    Incarnation& incarnation = incarnations_[key];
    incarnation.child = child.key;
    child.incarnation = key;
    return key;
  }
  /// The live incarnation's handle, marked expected first; empty if none (or
  /// still being started: its starter stops it).
  std::optional<InstanceHandle> expect_end(Child& child) {
    Incarnation* live = child.incarnation ? incarnation(child.incarnation) : nullptr;
    if (!live || live->ended) return std::nullopt;
    live->expected = true;
    return live->handle;
  }
  void leave_group(Child& child) {
    child.in_group = false;
    if (plan_) plan_->members.erase(std::remove(plan_->members.begin(), plan_->members.end(), child.key),
                                    plan_->members.end());
  }
  ChildStatus snapshot(const Child& child) const {
    ChildStatus status;
    status.id = child.id();
    status.state = child.machine.state();
    status.generation = child.machine.generation();
    if (const Incarnation* live = child.incarnation ? incarnation(child.incarnation) : nullptr) {
      if (!live->ended) status.instance = live->handle;
    }
    status.last_exit = child.machine.last_exit();
    status.restarts = child.machine.restarts();
    status.consecutive_failures = child.machine.consecutive_failures();
    if (status.state == ChildState::Restarting) status.restart_delay = child.machine.restart_delay();
    return status;
  }
  Note note(const Child& child, Kind kind, const std::string& body, LogLevel level = LogLevel::Info,
            const std::optional<InstanceHandle>& instance = std::nullopt) {
    Note result;
    result.event.kind = kind;
    result.event.child_id = child.id();
    result.event.generation = child.machine.generation();
    result.event.instance = instance;
    result.event.message = body;
    result.module = child.machine.spec().config.name;
    result.level = level;
    result.line = prefix(child.id(), child.machine.generation()) + body;
    return result;
  }
  static Action emit_action(Note note) {
    Action action;
    action.kind = Action::Kind::Emit;
    action.note = std::move(note);
    return action;
  }
  Note started_note(const Child& child, const InstanceHandle& handle) {
    std::string body = "started";
    if (handle.pid) body += " (pid " + std::to_string(*handle.pid) + ")";
    return note(child, Kind::Started, body, LogLevel::Info, handle);
  }
  Note exited_note(const Child& child, const ExitStatus& status, const std::optional<InstanceHandle>& handle,
                   bool failure, int row, const std::string& extra) {
    std::string body = to_string(status);
    body += failure ? ", a failure (" + std::to_string(row) + " in a row)" : ", not a failure";
    if (!extra.empty()) body += "; " + extra;
    Note result = note(child, Kind::Exited, body, failure ? LogLevel::Warn : LogLevel::Info, handle);
    result.event.status = status;
    result.event.failure = failure;
    return result;
  }
  /// Ends an incarnation the Supervisor ended (or that ended during the
  /// shutdown): remembered, never counted. A child still Starting or Running
  /// with it becomes Stopped.
  void end_expected(std::uint64_t key, const std::optional<ExitStatus>& status, std::vector<Note>& notes);
  /// An end nobody expected (the thread).
  void on_end(std::uint64_t key, const ExitStatus& status, TimePoint at, std::vector<Action>& actions);
  void on_ready(std::uint64_t key, TimePoint at, std::vector<Action>& actions);
  /// What follows the machine's decision: the events, the strategy, the group.
  void after_decision(Child& child, const EndDecision& decision, bool was_awaited, std::vector<Action>& actions);
  void apply_strategy(Child& trigger, std::vector<Action>& actions);
  void abandon_group(const Child& cause, std::vector<Action>& actions);
  void advance_group(std::vector<Action>& actions);
  void apply_shutdown(std::vector<Action>& actions);
  std::optional<TimePoint> step(std::vector<Action>& actions);

  // --- Without the lock ------------------------------------------------------
  /// Before a host callback: false once the destructor began.
  bool enter_host();
  void leave_host();
  template <typename F>
  auto use_backend(F&& call) -> decltype(call());
  Result<InstanceHandle> start_backend(const OopModuleConfig& config, InstanceEvents events);
  Result<std::optional<ExitStatus>> stop_backend(const InstanceHandle& handle);
  void emit(const Note& note);
  void emit_all(const std::vector<Note>& notes) {
    for (const auto& each : notes) emit(each);
  }
  void execute(std::vector<Action>& actions);
  void execute_stop(Action& action);
  void execute_launch(std::uint64_t child_key, bool group);
  /// start() and restart(): starts the child (busy) on the caller's thread and
  /// waits for its readiness. `initial`: a failed start forgets the child.
  Result<ChildStatus> start_on_caller(std::uint64_t child_key, bool initial);
  InstanceEvents events_for(std::uint64_t key);
  void post(QueuedEvent event) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(event));
    ++wakeups_;
    changed_.notify_all();
  }

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  const std::function<double()> draw_ = [this] { return random01(); };  // called under mutex_
  std::uint64_t wakeups_ = 0;  // bumped by whatever the thread must look at
  std::minstd_rand generator_;
  std::vector<std::unique_ptr<Child>> children_;  // in start order
  std::map<std::uint64_t, Incarnation> incarnations_;
  std::deque<QueuedEvent> queue_;
  std::optional<GroupPlan> plan_;
  std::uint64_t next_key_ = 1;  // children and incarnations share it
  bool shutting_down_ = false;
  bool shutdown_applied_ = false;  // the thread has stopped what had no incarnation
  bool stopping_ = false;          // the destructor runs
  bool thread_done_ = false;       // run() has returned
  int thread_in_host_ = 0;         // the thread runs on_event or the sink (nested: re-entry)
  int thread_in_backend_ = 0;      // the thread calls the backend (from on_event too)
  bool acting_ = false;            // the thread runs a step's actions (reports included)
  bool any_gave_up_ = false;
};

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

bool Supervisor::Impl::enter_host() {
  // Nothing after the destructor began (it may run from an earlier on_event
  // of this very thread, or have abandoned this thread in a callback).
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return false;
  if (tls_thread_of == this) {
    ++thread_in_host_;
    changed_.notify_all();
  }
  return true;
}

void Supervisor::Impl::leave_host() {
  if (tls_thread_of != this) return;
  std::lock_guard<std::mutex> lock(mutex_);
  --thread_in_host_;
}

template <typename F>
auto Supervisor::Impl::use_backend(F&& call) -> decltype(call()) {
  const bool on_thread = tls_thread_of == this;
  {
    // Once the destructor began the backend may be gone (on_event destroyed
    // the Supervisor during this call). It abandons the thread only outside
    // the backend.
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return make_error(std::errc::operation_canceled, "the Supervisor is being destroyed");
    if (on_thread) ++thread_in_backend_;
  }
  auto result = call();
  if (on_thread) {
    std::lock_guard<std::mutex> lock(mutex_);
    --thread_in_backend_;
    changed_.notify_all();
  }
  return result;
}

Result<InstanceHandle> Supervisor::Impl::start_backend(const OopModuleConfig& config, InstanceEvents events) {
  return use_backend([&] { return backend_->start_instance(config, std::move(events)); });
}

Result<std::optional<ExitStatus>> Supervisor::Impl::stop_backend(const InstanceHandle& handle) {
  return use_backend([&] { return backend_->stop_instance(handle); });
}

void Supervisor::Impl::emit(const Note& note) {
  std::string scratch;
  LogRecord record;
  record.module = note.module;
  if (note.event.instance) record.instance_id = note.event.instance->instance_id;
  record.stream = LogStream::Library;
  record.level = note.level;
  record.line = utf8::sanitize(note.line, scratch);  // ids and names come from the host
  record.timestamp = std::chrono::system_clock::now();
  if (!enter_host()) return;
  call_host([&] { sink_->write(record); });
  leave_host();
  if (on_event_ && *on_event_) {
    if (!enter_host()) return;
    // A copy: the callback may destroy the Supervisor, and with it options_.
    const auto callback = on_event_;
    const void* outer = tls_emitting_for;
    tls_emitting_for = this;
    call_host([&] { (*callback)(note.event); });
    tls_emitting_for = outer;
    leave_host();
  }
}

InstanceEvents Supervisor::Impl::events_for(std::uint64_t key) {
  // Weak: an event that comes after the Supervisor is gone finds nothing.
  std::weak_ptr<Impl> weak = weak_from_this();
  InstanceEvents events;
  events.on_ready = [weak, key](const InstanceHandle&) {
    if (auto self = weak.lock()) self->post({false, key, {}});
  };
  events.on_exit = [weak, key](const InstanceHandle&, const ExitStatus& status) {
    if (auto self = weak.lock()) self->post({true, key, status});
  };
  return events;
}

// ---------------------------------------------------------------------------
// The thread: decisions under the lock
// ---------------------------------------------------------------------------

void Supervisor::Impl::end_expected(std::uint64_t key, const std::optional<ExitStatus>& status,
                                    std::vector<Note>& notes) {
  Incarnation* ended = incarnation(key);
  if (!ended || ended->ended) return;
  ended->ended = true;
  ended->status = status;
  Child* child = find(ended->child);
  if (child && child->incarnation == key) {
    if (status) child->machine.record_exit(*status);
    child->incarnation = 0;
    // Only the shutdown leaves a child Starting or Running until its end
    // comes: every call moves it before it stops the incarnation.
    ChildState state = child->machine.state();
    if (state == ChildState::Starting || state == ChildState::Running) {
      child->machine.stopped();
      Note stopped = note(*child, Kind::Stopped, shutting_down_ ? "stopped by the shutdown" : "stopped",
                          LogLevel::Info, ended->handle);
      stopped.event.status = status;
      notes.push_back(std::move(stopped));
    }
  }
  if (!ended->waited) incarnations_.erase(key);
  ++wakeups_;
  changed_.notify_all();
}

void Supervisor::Impl::on_ready(std::uint64_t key, TimePoint at, std::vector<Action>& actions) {
  Incarnation* live = incarnation(key);
  if (!live || live->ended || live->ready) return;
  live->ready = true;
  Child* child = find(live->child);
  if (!child || child->incarnation != key || live->expected) return;
  if (child->busy) {
    // Its caller reports Ready; what comes after waits for that.
    live->hold = true;
    changed_.notify_all();
    return;
  }
  if (child->machine.state() != ChildState::Starting) return;
  child->machine.became_ready(at);
  actions.push_back(emit_action(note(*child, Kind::Ready, "ready", LogLevel::Info, live->handle)));
}

void Supervisor::Impl::on_end(std::uint64_t key, const ExitStatus& status, TimePoint at,
                              std::vector<Action>& actions) {
  Incarnation* ended = incarnation(key);
  if (!ended || ended->ended) return;
  if (ended->expected || shutting_down_locked() || stopping_) {
    std::vector<Note> notes;
    end_expected(key, status, notes);
    for (auto& each : notes) actions.push_back(emit_action(std::move(each)));
    return;
  }
  ended->ended = true;
  ended->status = status;
  Child* child = find(ended->child);
  if (!child || child->incarnation != key) {
    if (!ended->waited) incarnations_.erase(key);
    return;
  }
  if (child->busy) {
    // Ended before it was ready (a ready one is held): its caller reports it.
    changed_.notify_all();
    return;
  }
  const std::optional<InstanceHandle> handle = ended->handle;
  child->incarnation = 0;
  if (!ended->waited) incarnations_.erase(key);
  const bool was_awaited = plan_ && plan_->running && plan_->waiting_for == child->key;
  EndDecision decision = child->machine.ended(status, at, draw_);
  std::string extra;
  if (decision.outcome == EndDecision::Outcome::Exited) extra = "not restarted: " + decision.reason;
  actions.push_back(emit_action(exited_note(*child, status, handle, decision.failure, decision.row, extra)));
  after_decision(*child, decision, was_awaited, actions);
}

void Supervisor::Impl::after_decision(Child& child, const EndDecision& decision, bool was_awaited,
                                      std::vector<Action>& actions) {
  switch (decision.outcome) {
    case EndDecision::Outcome::Restart: {
      std::string why = decision.row > 0 ? "failure " + std::to_string(decision.row) + " in a row"
                                         : "restart " + std::to_string(decision.restart_number) + " of the streak";
      Note scheduled = note(child, Kind::RestartScheduled,
                            "restart scheduled in " + std::to_string(decision.delay.count()) + " ms (" + why + ")");
      scheduled.event.delay = decision.delay;
      scheduled.event.failure = decision.failure;
      actions.push_back(emit_action(std::move(scheduled)));
      apply_strategy(child, actions);
      return;
    }
    case EndDecision::Outcome::GaveUp:
      any_gave_up_ = true;
      actions.push_back(emit_action(note(child, Kind::GaveUp, "gave up: " + decision.reason, LogLevel::Error)));
      break;
    case EndDecision::Outcome::Exited: break;
  }
  if (was_awaited) abandon_group(child, actions);
}

void Supervisor::Impl::apply_strategy(Child& trigger, std::vector<Action>& actions) {
  if (options_.strategy == Strategy::OneForOne) return;
  const std::string cause = "stopped by the " + std::string(to_string(options_.strategy)) + " strategy (child '" +
                            trigger.id() + "' restarts)";
  std::set<std::uint64_t> members;
  TimePoint due = trigger.machine.due().value_or(now());
  if (plan_) {
    members.insert(plan_->members.begin(), plan_->members.end());
    due = std::max(due, plan_->due);
  }
  for (const auto& child : children_) {
    if (child.get() == &trigger || child->busy) continue;
    const bool in_scope = options_.strategy == Strategy::OneForAll || child->key > trigger.key;
    const ChildState state = child->machine.state();
    const bool live = state == ChildState::Starting || state == ChildState::Running || state == ChildState::Restarting;
    if (child->in_group || (in_scope && live)) members.insert(child->key);
  }
  // The others stop right away, the last started first.
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    Child* child = find(*it);
    if (!child) continue;
    if (child->in_group) {
      child->machine.stopped_for_group();  // a waiting member: already reported Stopped
      continue;
    }
    child->in_group = true;
    if (auto own_due = child->machine.stopped_for_group()) due = std::max(due, *own_due);
    Note stopped = note(*child, Kind::Stopped, cause);
    Incarnation* live = child->incarnation ? incarnation(child->incarnation) : nullptr;
    if (live && !live->ended && live->handle) {
      live->expected = true;
      stopped.event.instance = live->handle;
      Action stop;
      stop.kind = Action::Kind::Stop;
      stop.incarnation = child->incarnation;
      stop.child = child->key;
      stop.handle = *live->handle;
      stop.note = std::move(stopped);
      actions.push_back(std::move(stop));
    } else {
      if (live) live->expected = true;
      actions.push_back(emit_action(std::move(stopped)));
    }
  }
  trigger.in_group = true;
  members.insert(trigger.key);
  GroupPlan plan;
  plan.members.assign(members.begin(), members.end());  // keys grow: start order
  plan.due = due;
  plan_ = std::move(plan);
  ++wakeups_;
}

void Supervisor::Impl::abandon_group(const Child& cause, std::vector<Action>& actions) {
  if (!plan_) return;
  for (std::uint64_t key : plan_->members) {
    Child* child = find(key);
    if (!child || !child->in_group) continue;
    child->in_group = false;
    child->machine.stopped();
    actions.push_back(emit_action(
        note(*child, Kind::Stopped, "group restart abandoned: child '" + cause.id() + "' is not restarted")));
  }
  plan_.reset();
}

void Supervisor::Impl::advance_group(std::vector<Action>& actions) {
  if (plan_->waiting_for != 0) {
    Child* awaited = find(plan_->waiting_for);
    // Still starting: wait for its readiness (or its end, which on_end handles).
    if (awaited && awaited->incarnation != 0 && awaited->machine.state() == ChildState::Starting) return;
    // Ready, or taken out by a call: the next one.
    plan_->waiting_for = 0;
  }
  while (!plan_->members.empty()) {
    std::uint64_t key = plan_->members.front();
    plan_->members.erase(plan_->members.begin());
    Child* child = find(key);
    if (!child || !child->in_group) continue;
    child->in_group = false;
    plan_->waiting_for = key;
    Action launch;
    launch.kind = Action::Kind::Launch;
    launch.child = key;
    launch.group = true;
    actions.push_back(std::move(launch));
    return;
  }
  plan_.reset();
}

void Supervisor::Impl::apply_shutdown(std::vector<Action>& actions) {
  shutdown_applied_ = true;
  plan_.reset();
  for (const auto& child : children_) {
    child->in_group = false;
    if (child->busy) continue;
    // What runs becomes Stopped as its end comes (the backend stops it).
    if (child->machine.state() == ChildState::Restarting) {
      child->machine.stopped();
      actions.push_back(emit_action(note(*child, Kind::Stopped, "stopped by the shutdown")));
    }
  }
  ++wakeups_;
  changed_.notify_all();
}

std::optional<TimePoint> Supervisor::Impl::step(std::vector<Action>& actions) {
  const TimePoint at = now();
  if (shutting_down_locked() && !shutdown_applied_) apply_shutdown(actions);
  // The backend's events in order; a held incarnation's stay queued.
  std::deque<QueuedEvent> pending;
  pending.swap(queue_);
  for (auto& event : pending) {
    Incarnation* target = incarnation(event.incarnation);
    if (!target) continue;
    if (target->hold) {
      queue_.push_back(std::move(event));
      continue;
    }
    if (event.exit) {
      on_end(event.incarnation, event.status, at, actions);
    } else {
      on_ready(event.incarnation, at, actions);
    }
  }
  if (shutting_down_ || stopping_) return std::nullopt;
  std::optional<TimePoint> next;
  auto consider = [&](TimePoint due) { next = next ? std::min(*next, due) : due; };
  for (const auto& child : children_) {
    if (child->busy || child->in_group || child->machine.state() != ChildState::Restarting) continue;
    auto due = child->machine.due();
    if (!due) continue;
    if (*due <= at) {
      Action launch;
      launch.kind = Action::Kind::Launch;
      launch.child = child->key;
      actions.push_back(std::move(launch));
    } else {
      consider(*due);
    }
  }
  if (plan_ && !plan_->running) {
    if (plan_->due <= at) {
      plan_->running = true;
      for (std::uint64_t key : plan_->members) {
        if (Child* child = find(key); child && child->in_group) child->machine.waiting_for_group();
      }
    } else {
      consider(plan_->due);
    }
  }
  if (plan_ && plan_->running) advance_group(actions);
  return next;
}

// ---------------------------------------------------------------------------
// The thread: work without the lock
// ---------------------------------------------------------------------------

void Supervisor::Impl::run() {
  tls_thread_of = this;
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    const std::uint64_t seen = wakeups_;
    std::vector<Action> actions;
    std::optional<TimePoint> next = step(actions);
    if (!actions.empty()) {
      acting_ = true;
      lock.unlock();
      execute(actions);
      lock.lock();
      acting_ = false;
      changed_.notify_all();  // wait_for_shutdown waits for what the thread reports
      continue;
    }
    auto woken = [&] { return stopping_ || wakeups_ != seen; };
    if (next && options_.time->passes_by_itself()) {
      changed_.wait_until(lock, *next, woken);
    } else {
      // A manual clock wakes us through clock_wake_ when it moves.
      changed_.wait(lock, woken);
    }
  }
  thread_done_ = true;
  changed_.notify_all();
}

bool Supervisor::Impl::wait_for_thread() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, kTeardownBound, [&] { return thread_done_; });
  // Past the bound, only a host callback is abandoned: a backend call has the
  // backend's own bound, and the backend is destroyed after this.
  changed_.wait(lock, [&] { return thread_done_ || (thread_in_host_ > 0 && thread_in_backend_ == 0); });
  return thread_done_;
}

void Supervisor::Impl::execute(std::vector<Action>& actions) {
  for (auto& action : actions) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;  // the destructor runs (maybe from the last on_event)
    }
    switch (action.kind) {
      case Action::Kind::Emit: emit(action.note); break;
      case Action::Kind::Stop: execute_stop(action); break;
      case Action::Kind::Launch: execute_launch(action.child, action.group); break;
    }
  }
}

void Supervisor::Impl::execute_stop(Action& action) {
  bool stopped_anyway = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const Incarnation* target = incarnation(action.incarnation);
    if (!target || target->ended) {
      // Ended first. Reported here unless a call took the child out of the
      // group (the call reported it).
      const Child* child = find(action.child);
      if (!child || !child->in_group) return;
      if (target) action.note.event.status = target->status;
      stopped_anyway = true;
    }
  }
  if (stopped_anyway) {
    emit(action.note);
    return;
  }
  auto stopped = stop_backend(action.handle);
  std::vector<Note> notes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped && *stopped) end_expected(action.incarnation, *stopped, notes);
  }
  if (stopped) {
    action.note.event.status = *stopped;
  } else {
    action.note.level = LogLevel::Warn;
    action.note.line += "; the stop failed: " + stopped.error().message;
  }
  emit(action.note);
  emit_all(notes);
}

void Supervisor::Impl::execute_launch(std::uint64_t child_key, bool group) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_ || shutting_down_locked()) return;
  Child* child = find(child_key);
  if (!child || child->busy || child->machine.state() != ChildState::Restarting) return;
  const TimePoint at = now();
  if (group) {
    if (!plan_ || !plan_->running || plan_->waiting_for != child_key) return;
  } else {
    auto due = child->machine.due();
    if (child->in_group || !due || *due > at) return;
  }
  const std::uint64_t key = new_incarnation(*child);
  child->machine.begin_start(at);
  if (child->machine.immediate()) incarnations_[key].ready = true;
  OopModuleConfig config = child->machine.spec().config;
  lock.unlock();
  auto started = start_backend(config, events_for(key));
  lock.lock();
  child = find(child_key);
  Incarnation* launched = incarnation(key);
  const bool current = launched && child && child->incarnation == key;
  std::vector<Action> actions;
  if (!started) {
    const bool expected = (launched && launched->expected) || shutting_down_locked() || stopping_;
    incarnations_.erase(key);
    if (!current) return;
    child->incarnation = 0;
    if (expected) {
      // Stopped meanwhile (a call moved it already) or the shutdown.
      ChildState state = child->machine.state();
      if (state == ChildState::Starting || state == ChildState::Running) {
        child->machine.stopped();
        actions.push_back(emit_action(note(*child, Kind::Stopped, "stopped by the shutdown")));
      }
    } else {
      const bool was_awaited = group && plan_ && plan_->waiting_for == child_key;
      EndDecision decision = child->machine.start_failed(at, draw_);
      Note failed = note(*child, Kind::StartFailed,
                         "start failed: " + started.error().message + " (failure " + std::to_string(decision.row) +
                             " in a row)",
                         LogLevel::Warn);
      failed.event.failure = true;
      actions.push_back(emit_action(std::move(failed)));
      after_decision(*child, decision, was_awaited, actions);
    }
    lock.unlock();
    execute(actions);
    return;
  }
  if (!current || launched->expected || shutting_down_ || stopping_) {
    // Stopped or removed while it started: its stop is ours (no events: the
    // call reported it).
    if (launched) {
      launched->handle = *started;
      launched->expected = true;
    }
    lock.unlock();
    auto stopped = stop_backend(*started);
    std::vector<Note> notes;
    lock.lock();
    end_expected(key, stopped && *stopped ? *stopped : std::optional<ExitStatus>(), notes);
    lock.unlock();
    emit_all(notes);
    return;
  }
  launched->handle = *started;
  std::vector<Note> notes{started_note(*child, *started)};
  if (child->machine.immediate()) notes.push_back(note(*child, Kind::Ready, "ready", LogLevel::Info, *started));
  lock.unlock();
  emit_all(notes);
  lock.lock();
  if (Incarnation* released = incarnation(key)) released->hold = false;
  ++wakeups_;
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

Result<ChildStatus> Supervisor::Impl::start(ChildSpec spec) {
  if (auto valid = supervision::validate(spec); !valid) return valid.error();
  const bool immediate = spec.config.readiness.mode == Readiness::Mode::Immediate;
  std::uint64_t key = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || shutting_down_locked()) {
      return make_error(std::errc::operation_canceled, "child '" + spec.id + "': the Supervisor shuts down");
    }
    if (find_id(spec.id)) return make_error(std::errc::invalid_argument, "child '" + spec.id + "' already exists");
    if (!immediate && thread_->is_current()) {
      return make_error(std::errc::resource_deadlock_would_occur,
                        "child '" + spec.id + "': start() from on_event cannot wait for readiness");
    }
    key = next_key_++;
    children_.push_back(std::make_unique<Child>(key, std::move(spec)));
    children_.back()->busy = true;
  }
  return start_on_caller(key, true);
}

Result<ChildStatus> Supervisor::Impl::start_on_caller(std::uint64_t child_key, bool initial) {
  std::unique_lock<std::mutex> lock(mutex_);
  Child* child = find(child_key);
  if (!child) return make_error(std::errc::operation_canceled, "the child was removed while it started");
  if (stopping_) {
    // Destroyed from on_event during restart(): the backend is gone.
    child->busy = false;
    return make_error(std::errc::operation_canceled, "child '" + child->id() + "': the Supervisor was destroyed");
  }
  const std::string id = child->id();
  const std::uint64_t key = new_incarnation(*child);
  incarnations_[key].waited = true;
  child->machine.begin_start(now());
  const bool immediate = child->machine.immediate();
  if (immediate) incarnations_[key].ready = true;
  OopModuleConfig config = child->machine.spec().config;
  lock.unlock();

  auto started = start_backend(config, events_for(key));

  lock.lock();
  child = find(child_key);
  // Leaves the child after a start that did not come to readiness.
  auto fail = [&](const std::optional<ExitStatus>& status) {
    if (!child) return;
    if (initial) {
      erase_child(child_key);
      child = nullptr;
      return;
    }
    if (child->incarnation == key) child->incarnation = 0;
    child->machine.manual_start_failed(status);
    child->busy = false;
  };
  if (!started) {
    incarnations_.erase(key);
    fail(std::nullopt);
    ++wakeups_;
    changed_.notify_all();
    return started.error();
  }
  Incarnation* live = incarnation(key);
  live->handle = *started;
  auto interrupted = [&] {
    child = find(child_key);
    return !child || child->incarnation != key || live->expected || shutting_down_locked() || stopping_;
  };
  // Stopped, removed or shut down meanwhile: the call that did it reported
  // it; the start gives up. `unstopped`: the call came before the handle was
  // known, so the stop is ours (in a shutdown, the backend's).
  auto give_up = [&](bool unstopped) -> Result<ChildStatus> {
    const bool stop_it = unstopped && !live->ended && !shutting_down_;
    Error canceled = make_error(std::errc::operation_canceled,
                                "child '" + id + "': " +
                                    (shutting_down_ ? "the Supervisor shuts down" : "stopped while it started"));
    live->expected = true;
    live->waited = false;
    live->hold = false;
    if (child) child->busy = false;
    const bool canceled_start = initial && child && (shutting_down_ || stopping_);
    if (canceled_start) erase_child(child_key);
    if (live->ended) incarnations_.erase(key);
    ++wakeups_;
    changed_.notify_all();
    lock.unlock();
    if (stop_it) {
      auto stopped = stop_backend(*started);
      std::vector<Note> notes;
      lock.lock();
      end_expected(key, stopped && *stopped ? *stopped : std::optional<ExitStatus>(), notes);
      lock.unlock();
      emit_all(notes);
    }
    return canceled;
  };
  if (interrupted()) return give_up(true);

  std::vector<Note> notes{started_note(*child, *started)};
  if (immediate) {
    notes.push_back(note(*child, Kind::Ready, "ready", LogLevel::Info, *started));
    ChildStatus result = snapshot(*child);
    lock.unlock();
    emit_all(notes);
    lock.lock();
    if ((child = find(child_key))) child->busy = false;
    if (Incarnation* released = incarnation(key)) {
      released->hold = false;
      released->waited = false;
      if (released->ended) incarnations_.erase(key);
    }
    ++wakeups_;
    changed_.notify_all();
    return result;
  }
  lock.unlock();
  emit_all(notes);
  lock.lock();
  live = incarnation(key);  // still there: waited
  live->hold = false;
  ++wakeups_;
  changed_.notify_all();

  // Clamped: another backend may accept any timeout.
  const auto deadline = Clock::now() + std::min(config.readiness.timeout, supervision::kMaxDelay) + kReadinessSlack;
  changed_.wait_until(lock, deadline, [&] { return live->ready || live->ended || interrupted(); });
  child = find(child_key);
  if (interrupted()) return give_up(false);
  const TimePoint at = now();
  if (live->ended) {
    // Ended before it was ready.
    const ExitStatus status = live->status.value_or(ExitStatus{});
    const bool failure = supervision::is_failure(child->machine.spec(), status);
    Note exited = exited_note(*child, status, *started, failure, child->machine.consecutive_failures() + (failure ? 1 : 0),
                              "before it was ready");
    incarnations_.erase(key);
    fail(status);
    ++wakeups_;
    changed_.notify_all();
    lock.unlock();
    emit(exited);
    const bool timed_out = status.reason == ExitStatus::Reason::ReadinessTimeout;
    return make_error(timed_out ? std::errc::timed_out : std::errc::no_such_process,
                      "child '" + id + "': " + to_string(status) + " before it was ready");
  }
  if (live->ready) {
    child->machine.became_ready(at);
    ChildStatus result = snapshot(*child);
    Note ready = note(*child, Kind::Ready, "ready", LogLevel::Info, *started);
    lock.unlock();
    emit(ready);  // while held: its end (if any) is reported after this
    lock.lock();
    if ((child = find(child_key))) child->busy = false;
    if (Incarnation* released = incarnation(key)) {
      released->hold = false;
      released->waited = false;
      if (released->ended) incarnations_.erase(key);
    }
    ++wakeups_;
    changed_.notify_all();
    return result;
  }
  // Neither ready nor ended within the bound: the backend did not end it.
  live->expected = true;
  live->waited = false;
  fail(std::nullopt);
  lock.unlock();
  auto stopped = stop_backend(*started);
  std::vector<Note> end_notes;
  lock.lock();
  end_expected(key, stopped && *stopped ? *stopped : std::optional<ExitStatus>(), end_notes);
  ++wakeups_;
  changed_.notify_all();
  lock.unlock();
  emit_all(end_notes);
  return make_error(std::errc::timed_out, "child '" + id + "': not ready within readiness.timeout (" +
                                              std::to_string(config.readiness.timeout.count()) + " ms) and " +
                                              std::to_string(kReadinessSlack.count()) + " s");
}

Result<void> Supervisor::Impl::stop(std::string_view id) {
  std::optional<InstanceHandle> handle;
  std::uint64_t key = 0;
  Note stopped;
  bool report = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Child* child = find_id(id);
    if (!child) return make_error(std::errc::invalid_argument, "no child '" + std::string(id) + "'");
    report = child->machine.state() != ChildState::Stopped || child->in_group;
    leave_group(*child);
    child->machine.stopped();
    key = child->incarnation;
    handle = expect_end(*child);
    report = report || handle.has_value();
    stopped = note(*child, Kind::Stopped, "stopped by stop()", LogLevel::Info, handle);
    ++wakeups_;
    changed_.notify_all();
  }
  Result<void> result;
  std::vector<Note> notes;
  if (handle) {
    auto ended = stop_backend(*handle);
    if (ended) {
      stopped.event.status = *ended;
      std::lock_guard<std::mutex> lock(mutex_);
      if (*ended) end_expected(key, *ended, notes);
    } else {
      result = ended.error();
    }
  }
  if (report) emit(stopped);
  emit_all(notes);
  return result;
}

Result<ChildStatus> Supervisor::Impl::restart(std::string_view id) {
  std::optional<InstanceHandle> handle;
  std::uint64_t key = 0, child_key = 0;
  Note stopped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Child* child = find_id(id);
    if (!child) return make_error(std::errc::invalid_argument, "no child '" + std::string(id) + "'");
    if (stopping_ || shutting_down_locked()) {
      return make_error(std::errc::operation_canceled, "child '" + std::string(id) + "': the Supervisor shuts down");
    }
    if (child->busy) {
      return make_error(std::errc::device_or_resource_busy,
                        "child '" + std::string(id) + "': a start or restart of it is in progress");
    }
    if (!child->machine.immediate() && thread_->is_current()) {
      return make_error(std::errc::resource_deadlock_would_occur,
                        "child '" + std::string(id) + "': restart() from on_event cannot wait for readiness");
    }
    child_key = child->key;
    leave_group(*child);
    child->machine.manual_restart();
    child->machine.stopped();
    key = child->incarnation;
    handle = expect_end(*child);
    child->busy = true;
    stopped = note(*child, Kind::Stopped, "stopped by restart()", LogLevel::Info, handle);
    ++wakeups_;
    changed_.notify_all();
  }
  if (handle) {
    auto ended = stop_backend(*handle);
    std::vector<Note> notes;
    if (ended) {
      stopped.event.status = *ended;
      std::lock_guard<std::mutex> lock(mutex_);
      if (*ended) end_expected(key, *ended, notes);
    }
    emit(stopped);
    emit_all(notes);
    if (!ended) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (Child* child = find(child_key)) child->busy = false;
      ++wakeups_;
      return ended.error();
    }
  }
  return start_on_caller(child_key, false);
}

Result<void> Supervisor::Impl::remove(std::string_view id) {
  std::optional<InstanceHandle> handle;
  std::uint64_t key = 0;
  Note stopped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Child* child = find_id(id);
    if (!child) return make_error(std::errc::invalid_argument, "no child '" + std::string(id) + "'");
    leave_group(*child);
    key = child->incarnation;
    handle = expect_end(*child);
    stopped = note(*child, Kind::Stopped, "removed", LogLevel::Info, handle);
    erase_child(child->key);  // its incarnation stays known until its end
    ++wakeups_;
    changed_.notify_all();
  }
  Result<void> result;
  if (handle) {
    auto ended = stop_backend(*handle);
    std::vector<Note> notes;
    if (ended) {
      stopped.event.status = *ended;
      std::lock_guard<std::mutex> lock(mutex_);
      if (*ended) end_expected(key, *ended, notes);
    } else {
      result = ended.error();
    }
  }
  emit(stopped);
  return result;
}

Result<ChildStatus> Supervisor::Impl::status(std::string_view id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  Child* child = find_id(id);
  if (!child) return make_error(std::errc::invalid_argument, "no child '" + std::string(id) + "'");
  return snapshot(*child);
}

std::vector<ChildStatus> Supervisor::Impl::list() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<ChildStatus> result;
  result.reserve(children_.size());
  for (const auto& child : children_) result.push_back(snapshot(*child));
  return result;
}

void Supervisor::Impl::wait_for_shutdown() {
  if (!token_.is_cancelled()) return;
  if (tls_emitting_for == this || (thread_ && thread_->is_current())) return;
  backend_->wait_for_shutdown();
  // A backend that does not stop its instances on the token: stop what is
  // still known (for one that does, these find nothing left).
  std::vector<std::pair<std::uint64_t, InstanceHandle>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    begin_shutdown_locked();
    for (auto& [key, live] : incarnations_) {
      if (live.ended || !live.handle) continue;
      live.expected = true;
      left.emplace_back(key, *live.handle);
    }
  }
  for (const auto& [key, handle] : left) {
    auto stopped = stop_backend(handle);
    std::vector<Note> notes;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopped && *stopped) end_expected(key, *stopped, notes);
    }
    emit_all(notes);
  }
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, kShutdownBound, [&] {
    if (stopping_) return true;
    if (!shutdown_applied_ || acting_) return false;
    for (const auto& [key, live] : incarnations_) {
      if (!live.ended) return false;
    }
    return true;
  });
}

// ---------------------------------------------------------------------------
// Supervisor
// ---------------------------------------------------------------------------

Result<std::unique_ptr<Supervisor>> Supervisor::create(std::unique_ptr<ModuleRuntimeBackend> backend,
                                                       CancellationToken token, std::shared_ptr<LogSink> sink,
                                                       SupervisorOptions options) {
  if (!backend) return make_error(std::errc::invalid_argument, "Supervisor: no backend");
  if (!sink) return make_error(std::errc::invalid_argument, "Supervisor: no sink");
  if (!options.time) options.time = steady_time_source();
  auto impl = std::make_shared<Impl>(std::move(backend), token, std::move(sink), std::move(options));
  // No std::random_device (it may throw): the time and the address differ
  // between Supervisors.
  impl->seed(static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) ^
             static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(impl.get())));
  std::weak_ptr<Impl> weak = impl;
  impl->clock_wake_ = std::make_shared<std::function<void()>>([weak] {
    if (auto self = weak.lock()) self->wake();
  });
  impl->options_.time->subscribe(impl->clock_wake_);
  auto thread = platform::start_thread(kThreadStackBytes, [impl] { impl->run(); }, "the supervisor");
  if (!thread) {
    impl->stop_thread();  // never ran: nothing to join
    return std::move(thread).error();
  }
  impl->thread_ = std::move(*thread);
  // May run at once (an already cancelled token): it takes the lock, not held here.
  impl->registration_ = token.on_cancel([weak] {
    if (auto self = weak.lock()) self->begin_shutdown();
  });
  return std::unique_ptr<Supervisor>(new Supervisor(std::move(impl)));
}

Supervisor::Supervisor(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Supervisor::~Supervisor() {
  if (!impl_) return;
  // A call on this thread (on_event from start(), say) may still run on it.
  const std::shared_ptr<Impl> keep = impl_;
  impl_->registration_.reset();  // first: no cancel callback runs after this
  impl_->stop_thread();
  if (impl_->thread_->is_current() || !impl_->wait_for_thread()) {
    // From on_event, or stuck in a host callback: the thread ends by itself
    // once the callback returns (it holds the Impl, and does nothing visible
    // once stopping).
    impl_->thread_->detach();
  } else {
    impl_->thread_->join();
  }
  // Stops every child still running, with the backend's one deadline. Its
  // events during this find the Impl (still ours) and only queue.
  impl_->backend_.reset();
}

// Each call holds the Impl: on_event may destroy the Supervisor meanwhile.
Result<ChildStatus> Supervisor::start(ChildSpec spec) {
  auto keep = impl_;
  return keep->start(std::move(spec));
}
Result<void> Supervisor::stop(std::string_view id) {
  auto keep = impl_;
  return keep->stop(id);
}
Result<ChildStatus> Supervisor::restart(std::string_view id) {
  auto keep = impl_;
  return keep->restart(id);
}
Result<void> Supervisor::remove(std::string_view id) {
  auto keep = impl_;
  return keep->remove(id);
}
Result<ChildStatus> Supervisor::status(std::string_view id) const {
  auto keep = impl_;
  return keep->status(id);
}
std::vector<ChildStatus> Supervisor::list() const {
  auto keep = impl_;
  return keep->list();
}
bool Supervisor::any_gave_up() const {
  auto keep = impl_;
  return keep->any_gave_up();
}
void Supervisor::wait_for_shutdown() {
  auto keep = impl_;
  keep->wait_for_shutdown();
}

}  // namespace modkit
