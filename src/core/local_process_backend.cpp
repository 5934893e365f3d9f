// LocalProcessBackend: the platform-free supervision logic.
//
// Threads: per instance, one reader per output stream; per backend, the exit
// monitor (platform/exit_monitor.hpp) and one supervisor that reports exits,
// joins finished readers and runs the shutdown when the token is cancelled.
//
// Locks, never nested with a sink call: instances_mutex_ (the live map),
// lifecycle_mutex_ (everything not yet joined, the supervisor's queue), and
// each Instance's own mutex (its exit status and reader count).
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "core/config_validation.hpp"
#include "core/line_splitter.hpp"
#include "modkit/modkit.hpp"
#include "platform/exit_monitor.hpp"
#include "platform/process.hpp"
#include "platform/thread.hpp"

namespace modkit {
namespace {

using Clock = std::chrono::steady_clock;

// Once killed, a child is gone within milliseconds unless the kernel is stuck
// (uninterruptible sleep); this bounds how long we wait for that.
constexpr std::chrono::seconds kReapAfterKillBound{10};
// One pipe's default capacity (64 KiB): a busy child's output is taken in as
// few read() calls as possible (each costs as much as splitting ~100 lines).
// The buffer's pages are only touched once that much output arrives.
constexpr std::size_t kReadChunkBytes = 64 * 1024;

struct Instance {
  InstanceHandle handle;
  std::unique_ptr<platform::Process> process;
  std::unique_ptr<platform::PipeReader> pipes[2];  // stdout, stderr
  std::unique_ptr<platform::Thread> readers[2];

  std::mutex mutex;
  std::condition_variable changed;
  std::optional<ExitStatus> status;  // set once reaped
  int readers_running = 0;
  bool stop_started = false;
  bool killed = false;
  Clock::time_point stop_deadline{};

  bool drained() const { return readers_running == 0; }
};

using InstancePtr = std::shared_ptr<Instance>;

}  // namespace

class LocalProcessBackend::Impl {
 public:
  Impl(CancellationToken token, std::shared_ptr<LogSink> sink, LocalProcessOptions options)
      : token_(std::move(token)), sink_(std::move(sink)), options_(std::move(options)) {}

  void start() {
    auto monitor = platform::make_exit_monitor(options_.use_pidfd);
    if (!monitor) {
      // Without a monitor no exit could be observed; this only happens when
      // the host is out of threads or descriptors at construction.
      log_event(nullptr, LogLevel::Error, "cannot start the exit monitor: " + monitor.error().message);
    } else {
      monitor_ = std::move(*monitor);
    }
    supervisor_ = std::thread([this] { supervise(); });
    registration_ = token_.on_cancel([this] {
      std::lock_guard<std::mutex> lock(lifecycle_mutex_);
      cancel_seen_ = true;
      wake_supervisor();
    });
  }

  ~Impl() {
    registration_.reset();
    {
      std::lock_guard<std::mutex> lock(lifecycle_mutex_);
      destroying_ = true;
      wake_supervisor();
    }
    supervisor_.join();
    if (monitor_) monitor_->shutdown();
  }

  Result<InstanceHandle> spawn(const OopModuleConfig& config);
  Result<std::optional<ExitStatus>> stop(const InstanceHandle& handle);
  std::vector<InstanceHandle> list(std::string_view module);
  void wait_for_shutdown() {
    std::unique_lock<std::mutex> lock(lifecycle_mutex_);
    if (!cancel_seen_) return;
    shutdown_finished_.wait(lock, [&] { return shutdown_done_; });
  }

 private:
  Error cancelled_error(const std::string& module) const {
    return make_error(std::errc::operation_canceled,
                      "module '" + module + "': cannot spawn, the backend is shutting down (token cancelled)");
  }

  void log_event(const Instance* instance, LogLevel level, std::string_view text) {
    LogRecord record;
    record.module = instance ? std::string_view(instance->handle.module) : std::string_view("modkit");
    record.instance_id = instance ? std::string_view(instance->handle.instance_id) : std::string_view();
    record.stream = LogStream::Library;
    record.level = level;
    record.line = text;
    record.timestamp = std::chrono::system_clock::now();
    sink_->write(record);
  }

  Result<void> start_readers(const InstancePtr& instance);
  void read_stream(Instance& instance, int index);
  void on_exit_signalled(const InstancePtr& instance);
  void abandon(const InstancePtr& instance);

  // Stopping, in phases so that a group of instances shares one deadline.
  bool begin_stop(Instance& instance, Clock::time_point deadline);
  void stop_all(const std::vector<InstancePtr>& group, Clock::time_point deadline);

  void supervise();
  void wake_supervisor() {  // with lifecycle_mutex_ held
    ++wake_generation_;
    supervisor_wake_.notify_all();
  }
  void join_finished(std::unique_lock<std::mutex>& lock);
  std::optional<Clock::time_point> report_exits(std::unique_lock<std::mutex>& lock);
  void shutdown_everything();

  CancellationToken token_;
  std::shared_ptr<LogSink> sink_;
  LocalProcessOptions options_;
  std::unique_ptr<platform::ExitMonitor> monitor_;
  CancellationToken::Registration registration_;

  std::shared_mutex instances_mutex_;
  std::unordered_map<std::string, InstancePtr> instances_;  // live (not yet reaped)
  bool closed_ = false;                                     // no more spawns

  std::mutex lifecycle_mutex_;
  std::condition_variable supervisor_wake_;
  // Bumped by every wake-up, so the supervisor notices one that came while it
  // was working with the lock released (a plain wait() would miss it).
  std::uint64_t wake_generation_ = 0;
  std::condition_variable shutdown_finished_;
  std::vector<InstancePtr> unjoined_;    // every instance whose readers are not joined yet
  // Reaped, exit not yet reported. A report waits for the output to drain
  // (so the child's last lines come first), at most drain_timeout.
  struct PendingReport {
    InstancePtr instance;
    Clock::time_point due;
  };
  std::deque<PendingReport> exit_reports_;
  bool cancel_seen_ = false;
  bool destroying_ = false;
  bool shutdown_done_ = false;
  std::thread supervisor_;
};

// ---------------------------------------------------------------------------
// Spawning and reading
// ---------------------------------------------------------------------------

Result<InstanceHandle> LocalProcessBackend::Impl::spawn(const OopModuleConfig& config) {
  if (token_.is_cancelled()) return cancelled_error(config.name);
  auto request = validate_config(config);
  if (!request) return std::move(request).error();
  if (!monitor_) return make_error(std::errc::resource_unavailable_try_again, "the exit monitor is not running");

  auto process = platform::spawn(*request);
  if (!process) return std::move(process).error();

  auto instance = std::make_shared<Instance>();
  instance->process = std::move(*process);
  instance->pipes[0] = instance->process->take_stdout();
  instance->pipes[1] = instance->process->take_stderr();
  instance->handle.module = config.name;
  instance->handle.instance_id = new_uuid_v7();
  instance->handle.backend = BackendKind::LocalProcess;
  instance->handle.pid = instance->process->pid();
  instance->handle.created_at = Clock::now();
  // Counted before anyone can see the instance, so the supervisor never
  // takes it for drained (and joins it) before its readers have started.
  instance->readers_running = 2;

  // Register before watching: the exit may be reported at once. Both lists
  // change under the map's lock, so a shutdown that has closed the map sees
  // every instance registered before it.
  bool closed;
  {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    closed = closed_;
    if (!closed) {
      instances_.emplace(instance->handle.instance_id, instance);
      std::lock_guard<std::mutex> lifecycle(lifecycle_mutex_);
      unjoined_.push_back(instance);
    }
  }
  if (closed) {
    abandon(instance);
    return cancelled_error(config.name);
  }
  std::weak_ptr<Instance> weak = instance;
  auto watched = monitor_->watch(*instance->process, [this, weak] {
    if (auto alive = weak.lock()) on_exit_signalled(alive);
  });
  if (!watched) {
    {
      std::unique_lock<std::shared_mutex> lock(instances_mutex_);
      instances_.erase(instance->handle.instance_id);
    }
    {
      // No reader will run: a shutdown that already took this instance into
      // its group must not wait for it to drain.
      std::lock_guard<std::mutex> lock(instance->mutex);
      instance->readers_running = 0;
      instance->changed.notify_all();
    }
    abandon(instance);
    return std::move(watched).error();
  }
  auto readers = start_readers(instance);
  if (!readers) {
    // The monitor reaps it; the supervisor joins whichever reader started.
    instance->process->kill_tree();
    for (auto& pipe : instance->pipes) {
      if (pipe) pipe->interrupt();
    }
    return std::move(readers).error();
  }

  std::ostringstream text;
  text << "spawned pid " << instance->process->pid() << ": " << request->binary;
  for (const auto& arg : request->args) text << ' ' << arg;
  log_event(instance.get(), LogLevel::Info, text.str());
  return instance->handle;
}

// For a child that could not be registered or watched: kill it, reap it here,
// and let the supervisor join nothing (no reader was started).
void LocalProcessBackend::Impl::abandon(const InstancePtr& instance) {
  instance->process->kill_tree();
  auto status = instance->process->reap_blocking();
  {
    // A shutdown that took it into its group waits for a status.
    std::lock_guard<std::mutex> lock(instance->mutex);
    instance->status = status ? *status : ExitStatus{ExitStatus::Kind::Signaled, 9, true};
    instance->changed.notify_all();
  }
  std::lock_guard<std::mutex> lock(lifecycle_mutex_);
  unjoined_.erase(std::remove(unjoined_.begin(), unjoined_.end(), instance), unjoined_.end());
}

Result<void> LocalProcessBackend::Impl::start_readers(const InstancePtr& instance) {
  // Under the instance's lock: a reader cannot count itself finished (and so
  // be joined by the supervisor) before its handle is stored.
  std::lock_guard<std::mutex> lock(instance->mutex);
  for (int index = 0; index < 2; ++index) {
    Instance* raw = instance.get();
    auto thread = platform::start_thread(options_.reader_stack_bytes, [this, raw, index] { read_stream(*raw, index); }, "a reader");
    if (!thread) {
      instance->readers_running -= 2 - index;  // this reader and any after it never ran
      instance->changed.notify_all();
      return std::move(thread).error();
    }
    instance->readers[index] = std::move(*thread);
  }
  return {};
}

void LocalProcessBackend::Impl::read_stream(Instance& instance, int index) {
  // Hands each line to the sink. A continuation keeps the level found at the
  // start of its line: a cut-off middle says nothing about severity.
  class Forwarder final : public LineSplitter::Sink {
   public:
    Forwarder(LogSink& sink, const Instance& instance, LogStream stream)
        : sink_(sink), instance_(instance), stream_(stream) {}
    void line(std::string_view text, bool continuation) override {
      if (!continuation) level_ = detect_level(text);
      LogRecord record;
      record.module = instance_.handle.module;
      record.instance_id = instance_.handle.instance_id;
      record.stream = stream_;
      record.level = level_;
      record.line = text;
      record.continuation = continuation;
      record.timestamp = received;
      sink_.write(record);
    }
    // When the chunk being split was read: one clock read per read() rather
    // than per line (per line it cost more than the rest of the forwarding).
    std::chrono::system_clock::time_point received{};

   private:
    LogSink& sink_;
    const Instance& instance_;
    LogStream stream_;
    LogLevel level_ = LogLevel::Info;
  };

  Forwarder forwarder(*sink_, instance, index == 0 ? LogStream::Stdout : LogStream::Stderr);
  LineSplitter splitter(options_.max_line_bytes, forwarder);
  std::unique_ptr<char[]> buffer(new char[kReadChunkBytes]);
  platform::PipeReader& pipe = *instance.pipes[index];
  for (;;) {
    std::ptrdiff_t count = pipe.read(buffer.get(), kReadChunkBytes);
    if (count <= 0) break;
    forwarder.received = std::chrono::system_clock::now();
    splitter.feed(std::string_view(buffer.get(), static_cast<std::size_t>(count)));
  }
  forwarder.received = std::chrono::system_clock::now();
  splitter.finish();

  bool finished;
  {
    std::lock_guard<std::mutex> lock(instance.mutex);
    --instance.readers_running;
    instance.changed.notify_all();
    finished = instance.readers_running == 0 && instance.status;
  }
  if (finished) {
    std::lock_guard<std::mutex> lifecycle(lifecycle_mutex_);
    wake_supervisor();
  }
}

// Runs on the exit monitor's thread.
void LocalProcessBackend::Impl::on_exit_signalled(const InstancePtr& instance) {
  auto status = instance->process->try_reap();
  if (!status) return;
  // Out of the live map before the status is published: whoever waits for the
  // status (stop_instance, the shutdown) must not list it afterwards.
  {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    instances_.erase(instance->handle.instance_id);
  }
  // Status and report are published under the supervisor's lock in one step:
  // otherwise a destroying supervisor could see the status (so join it and
  // find nothing left) before the report is queued, and exit without ever
  // reporting this exit. Lock order: lifecycle_mutex_, then instance->mutex.
  std::lock_guard<std::mutex> lifecycle(lifecycle_mutex_);
  {
    std::lock_guard<std::mutex> lock(instance->mutex);
    status->forced = instance->killed;
    instance->status = status;
    instance->changed.notify_all();
  }
  exit_reports_.push_back({instance, Clock::now() + options_.drain_timeout});
  wake_supervisor();
}

// ---------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------

// Sends the graceful step (once per instance). Returns false when there is no
// step to wait for, so the caller kills at once instead of sitting out the grace.
bool LocalProcessBackend::Impl::begin_stop(Instance& instance, Clock::time_point deadline) {
  bool graceful;
  {
    std::lock_guard<std::mutex> lock(instance.mutex);
    if (instance.status) return true;
    if (instance.stop_started) return instance.stop_deadline > Clock::now();
    instance.stop_started = true;
    instance.stop_deadline = deadline;
    graceful = instance.process->request_stop();
  }
  log_event(&instance, LogLevel::Info, graceful ? "stopping: graceful stop requested" : "stopping: no graceful step, killing");
  return graceful;
}

void LocalProcessBackend::Impl::stop_all(const std::vector<InstancePtr>& group, Clock::time_point deadline) {
  // 1. Every graceful step at once.
  std::vector<bool> graceful;
  for (const auto& instance : group) graceful.push_back(begin_stop(*instance, deadline));

  // 2. One shared deadline; an instance with no graceful step is killed now.
  for (std::size_t i = 0; i < group.size(); ++i) {
    Instance& instance = *group[i];
    std::unique_lock<std::mutex> lock(instance.mutex);
    Clock::time_point until = std::min(deadline, instance.stop_deadline);
    if (graceful[i]) instance.changed.wait_until(lock, until, [&] { return instance.status.has_value(); });
    if (!instance.status && !instance.killed) {
      // Decide and kill under the one lock: several threads stopping the same
      // instance at once must escalate (and report it) only once.
      instance.killed = true;
      instance.process->kill_tree();
      lock.unlock();
      log_event(&instance, LogLevel::Warn,
                graceful[i] ? "grace period expired: escalated to SIGKILL" : "killed (no graceful step)");
    }
  }
  for (const auto& instance : group) {
    std::unique_lock<std::mutex> lock(instance->mutex);
    if (!instance->changed.wait_for(lock, kReapAfterKillBound, [&] { return instance->status.has_value(); })) {
      lock.unlock();
      log_event(instance.get(), LogLevel::Error, "still not reaped after being killed");
    }
  }

  // 3. Drain: a descendant (still in the tree) may hold the pipes after the
  // child exited. Let it finish until the deadline, then kill the tree.
  std::vector<InstancePtr> lingering;
  for (const auto& instance : group) {
    std::unique_lock<std::mutex> lock(instance->mutex);
    if (!instance->changed.wait_until(lock, deadline, [&] { return instance->drained(); })) {
      lingering.push_back(instance);
    }
  }
  // A descendant that left the tree (setsid) but kept the pipes is still the
  // module's: whoever holds them is killed too.
  for (const auto& instance : lingering) {
    {
      std::lock_guard<std::mutex> lock(instance->mutex);
      instance->killed = true;
      instance->process->kill_tree();
    }
    log_event(instance.get(), LogLevel::Warn, "output still open after exit: killed the process tree");
    if (int escaped = instance->process->kill_pipe_holders(); escaped > 0) {
      log_event(instance.get(), LogLevel::Warn,
                "killed " + std::to_string(escaped) + " process(es) outside the tree holding the output open");
    }
  }
  Clock::time_point drain_deadline = Clock::now() + options_.drain_timeout;
  for (const auto& instance : lingering) {
    std::unique_lock<std::mutex> lock(instance->mutex);
    if (!instance->changed.wait_until(lock, drain_deadline, [&] { return instance->drained(); })) {
      // Held by something we may not kill (another user's process, handed
      // the pipe): stop reading rather than block forever.
      for (auto& pipe : instance->pipes) pipe->interrupt();
      instance->changed.wait(lock, [&] { return instance->drained(); });
      lock.unlock();
      log_event(instance.get(), LogLevel::Warn, "output pipes held open by a process modkit cannot kill: stopped reading");
    }
  }
}

Result<std::optional<ExitStatus>> LocalProcessBackend::Impl::stop(const InstanceHandle& handle) {
  InstancePtr instance;
  {
    std::shared_lock<std::shared_mutex> lock(instances_mutex_);
    auto it = instances_.find(handle.instance_id);
    if (it != instances_.end()) instance = it->second;
  }
  if (!instance) {
    // Exited already, but a descendant may still hold its output open.
    std::lock_guard<std::mutex> lock(lifecycle_mutex_);
    for (const auto& candidate : unjoined_) {
      if (candidate->handle.instance_id == handle.instance_id) instance = candidate;
    }
  }
  if (!instance) return std::optional<ExitStatus>();
  stop_all({instance}, Clock::now() + options_.stop_grace);
  std::lock_guard<std::mutex> lock(instance->mutex);
  return instance->status;
}

std::vector<InstanceHandle> LocalProcessBackend::Impl::list(std::string_view module) {
  std::vector<InstanceHandle> result;
  std::shared_lock<std::shared_mutex> lock(instances_mutex_);
  for (const auto& entry : instances_) {
    if (entry.second->handle.module == module) result.push_back(entry.second->handle);
  }
  std::sort(result.begin(), result.end(),
            [](const InstanceHandle& a, const InstanceHandle& b) { return a.instance_id < b.instance_id; });
  return result;
}

// ---------------------------------------------------------------------------
// The supervisor thread
// ---------------------------------------------------------------------------

void LocalProcessBackend::Impl::supervise() {
  std::unique_lock<std::mutex> lock(lifecycle_mutex_);
  for (;;) {
    std::uint64_t seen = wake_generation_;
    std::optional<Clock::time_point> next_report = report_exits(lock);
    join_finished(lock);
    if ((cancel_seen_ || destroying_) && !shutdown_done_) {
      lock.unlock();
      shutdown_everything();
      lock.lock();
      shutdown_done_ = true;
      shutdown_finished_.notify_all();
      continue;
    }
    if (destroying_ && unjoined_.empty() && exit_reports_.empty()) return;
    auto woken = [&] { return wake_generation_ != seen; };
    if (next_report) {
      supervisor_wake_.wait_until(lock, *next_report, woken);
    } else {
      supervisor_wake_.wait(lock, woken);
    }
  }
}

// Reports the exits whose output has drained (or whose drain is overdue);
// returns when the next one falls due.
std::optional<Clock::time_point> LocalProcessBackend::Impl::report_exits(std::unique_lock<std::mutex>& lock) {
  for (;;) {
    std::optional<Clock::time_point> next_due;
    auto ready = exit_reports_.end();
    Clock::time_point now = Clock::now();
    for (auto it = exit_reports_.begin(); it != exit_reports_.end(); ++it) {
      bool drained;
      {
        std::lock_guard<std::mutex> guard(it->instance->mutex);
        drained = it->instance->drained();
      }
      if (drained || now >= it->due) {
        ready = it;
        break;
      }
      if (!next_due || it->due < *next_due) next_due = it->due;
    }
    if (ready == exit_reports_.end()) return next_due;
    InstancePtr instance = std::move(ready->instance);
    exit_reports_.erase(ready);
    lock.unlock();
    ExitStatus status;
    bool stopping;
    {
      std::lock_guard<std::mutex> guard(instance->mutex);
      status = *instance->status;
      stopping = instance->stop_started;
    }
    std::ostringstream text;
    text << status;
    LogLevel level = LogLevel::Info;
    if (!status.success() && !stopping) level = status.kind == ExitStatus::Kind::Signaled ? LogLevel::Error : LogLevel::Warn;
    log_event(instance.get(), level, text.str());
    if (options_.on_exit) options_.on_exit(instance->handle, status);
    lock.lock();
  }
}

void LocalProcessBackend::Impl::join_finished(std::unique_lock<std::mutex>& lock) {
  std::vector<InstancePtr> finished;
  for (auto it = unjoined_.begin(); it != unjoined_.end();) {
    bool done;
    {
      std::lock_guard<std::mutex> guard((*it)->mutex);
      done = (*it)->status.has_value() && (*it)->drained();
    }
    if (done) {
      finished.push_back(std::move(*it));
      it = unjoined_.erase(it);
    } else {
      ++it;
    }
  }
  if (finished.empty()) return;
  lock.unlock();
  for (auto& instance : finished) {
    for (auto& reader : instance->readers) {
      if (reader) reader->join();
    }
  }
  finished.clear();
  lock.lock();
}

void LocalProcessBackend::Impl::shutdown_everything() {
  {
    std::unique_lock<std::shared_mutex> lock(instances_mutex_);
    closed_ = true;
  }
  std::vector<InstancePtr> group;
  {
    std::lock_guard<std::mutex> lock(lifecycle_mutex_);
    group = unjoined_;
  }
  if (!group.empty()) {
    std::ostringstream text;
    text << "shutting down: stopping " << group.size() << " instance(s)";
    log_event(nullptr, LogLevel::Info, text.str());
  }
  stop_all(group, Clock::now() + options_.shutdown_grace);
  if (!group.empty()) log_event(nullptr, LogLevel::Info, "shutdown complete: every instance stopped");
}

// ---------------------------------------------------------------------------
// Public face
// ---------------------------------------------------------------------------

LocalProcessBackend::LocalProcessBackend(CancellationToken token, std::shared_ptr<LogSink> sink,
                                         LocalProcessOptions options)
    : impl_(std::make_unique<Impl>(std::move(token), sink ? std::move(sink) : std::make_shared<TextLogSink>(),
                                   std::move(options))) {
  impl_->start();
}

LocalProcessBackend::~LocalProcessBackend() = default;

Result<InstanceHandle> LocalProcessBackend::spawn_instance(const OopModuleConfig& config) {
  return impl_->spawn(config);
}

Result<std::optional<ExitStatus>> LocalProcessBackend::stop_instance(const InstanceHandle& handle) {
  return impl_->stop(handle);
}

Result<std::vector<InstanceHandle>> LocalProcessBackend::list_instances(std::string_view module) {
  return impl_->list(module);
}

void LocalProcessBackend::wait_for_shutdown() { impl_->wait_for_shutdown(); }

}  // namespace modkit
