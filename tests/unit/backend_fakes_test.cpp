// The backend's logic on injected platform services: fake processes whose
// exit, output and signal permissions the test decides, a fake exit monitor
// the test fires, and thread creation that fails when the test says so.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/platform_services.hpp"
#include "test_support.hpp"

namespace modkit::core {
namespace {

using namespace std::chrono_literals;
using modkit::testing::CollectingSink;
using modkit::testing::StoredRecord;

// Both output streams of one fake child: data the test pushes, EOF when it closes them.
struct FakeOutput {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::string> chunks[2];
  bool closed[2] = {false, false};
  bool interrupted = false;
};

class FakeReader final : public platform::PipeReader {
 public:
  FakeReader(std::shared_ptr<FakeOutput> output, int index) : output_(std::move(output)), index_(index) {}
  std::ptrdiff_t read(char* buffer, std::size_t size) override {
    std::unique_lock<std::mutex> lock(output_->mutex);
    output_->changed.wait(lock, [&] {
      return output_->interrupted || output_->closed[index_] || !output_->chunks[index_].empty();
    });
    if (output_->interrupted || output_->chunks[index_].empty()) return 0;
    std::string chunk = std::move(output_->chunks[index_].front());
    output_->chunks[index_].pop_front();
    std::size_t count = std::min(size, chunk.size());
    std::copy(chunk.data(), chunk.data() + count, buffer);
    return static_cast<std::ptrdiff_t>(count);
  }
  void interrupt() override {
    std::lock_guard<std::mutex> lock(output_->mutex);
    output_->interrupted = true;
    output_->changed.notify_all();
  }

 private:
  std::shared_ptr<FakeOutput> output_;
  int index_;
};

// What the test controls and observes of one fake child.
struct FakeChild {
  std::mutex mutex;
  std::vector<std::string> calls;
  std::optional<ExitStatus> exit;
  bool refuse_signals = false;
  bool exits_on_kill = true;
  bool reaped = false;
  std::shared_ptr<FakeOutput> output = std::make_shared<FakeOutput>();

  bool is_reaped() {
    std::lock_guard<std::mutex> lock(mutex);
    return reaped;
  }
  void record(const std::string& call) {
    std::lock_guard<std::mutex> lock(mutex);
    calls.push_back(reaped ? call + "-after-reap" : call);
  }
  bool signalled_after_reap() {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& call : calls) {
      if (call.find("after-reap") != std::string::npos) return true;
    }
    return false;
  }
  void close_output() {
    std::lock_guard<std::mutex> lock(output->mutex);
    output->closed[0] = output->closed[1] = true;
    output->changed.notify_all();
  }
  void write(int stream, std::string text) {
    std::lock_guard<std::mutex> lock(output->mutex);
    output->chunks[stream].push_back(std::move(text));
    output->changed.notify_all();
  }
};

class FakeProcess final : public platform::Process {
 public:
  FakeProcess(std::shared_ptr<FakeChild> child, std::int64_t pid) : child_(std::move(child)), pid_(pid) {}
  std::int64_t pid() const override { return pid_; }
  std::unique_ptr<platform::PipeReader> take_stdout() override {
    return std::make_unique<FakeReader>(child_->output, 0);
  }
  std::unique_ptr<platform::PipeReader> take_stderr() override {
    return std::make_unique<FakeReader>(child_->output, 1);
  }
  std::intptr_t exit_handle() const override { return -1; }
  Result<bool> request_stop() override {
    child_->record("graceful");
    if (child_->refuse_signals) return denied();
    return true;
  }
  Result<void> kill_tree() override {
    child_->record("kill");
    if (child_->refuse_signals) return denied();
    std::lock_guard<std::mutex> lock(child_->mutex);
    if (child_->exits_on_kill && !child_->exit) child_->exit = ExitStatus{ExitStatus::Kind::Signaled, 9, false};
    return {};
  }
  int kill_output_holders() override { return 0; }
  std::intptr_t contents_handle() const override { return -1; }
  bool contents_empty() override { return true; }
  std::optional<std::int64_t> process_count() override { return std::nullopt; }
  std::optional<ExitStatus> peek_exit() override {
    std::lock_guard<std::mutex> lock(child_->mutex);
    return child_->exit;
  }
  std::optional<ExitStatus> wait_for_exit(std::chrono::milliseconds) override { return peek_exit(); }
  void reap() override {
    std::lock_guard<std::mutex> lock(child_->mutex);
    child_->calls.push_back("reap");
    child_->reaped = true;
  }
  Error denied() const {
    return make_error(std::errc::operation_not_permitted, "cannot signal pid " + std::to_string(pid_));
  }

 private:
  std::shared_ptr<FakeChild> child_;
  std::int64_t pid_;
};

// Fires a child's exit callback when the test says the child has exited.
class FakeMonitor final : public platform::ExitMonitor {
 public:
  Result<void> watch(platform::Process& process, std::function<void()> on_exit, std::function<void()>,
                     std::function<void(std::string_view, bool)>) override {
    if (exit_during_watch) {
      // A child that exits at once: its exit is seen (and its report
      // delivered) before watch() has even returned to spawn_instance.
      std::this_thread::sleep_for(50ms);  // its readers reach the end of its output
      on_exit();
      std::this_thread::sleep_for(50ms);  // the supervisor reports it
      return {};
    }
    std::lock_guard<std::mutex> lock(mutex_);
    callbacks_[process.pid()] = std::move(on_exit);
    return {};
  }
  std::atomic<bool> exit_during_watch{false};
  void unwatch(platform::Process& process) override {
    std::lock_guard<std::mutex> lock(mutex_);
    callbacks_.erase(process.pid());
  }
  void shutdown() override {
    std::lock_guard<std::mutex> lock(mutex_);
    callbacks_.clear();
  }
  void fire(std::int64_t pid) {
    std::function<void()> callback;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = callbacks_.find(pid);
      if (it == callbacks_.end()) return;
      callback = std::move(it->second);
      callbacks_.erase(it);
    }
    callback();
  }

 private:
  std::mutex mutex_;
  std::map<std::int64_t, std::function<void()>> callbacks_;
};

struct World {
  std::vector<std::shared_ptr<FakeChild>> children;
  FakeMonitor* monitor = nullptr;
  std::atomic<int> threads_started{0};
  std::atomic<int> fail_thread_number{-1};  // the Nth start_thread call fails (0-based)
  std::int64_t next_pid = 1000;
  std::shared_ptr<FakeChild> next_child = std::make_shared<FakeChild>();

  PlatformServices services() {
    PlatformServices services;
    services.spawn = [this](const platform::SpawnRequest&) -> Result<std::unique_ptr<platform::Process>> {
      auto child = next_child;
      next_child = std::make_shared<FakeChild>();
      children.push_back(child);
      return std::unique_ptr<platform::Process>(std::make_unique<FakeProcess>(child, next_pid++));
    };
    services.make_exit_monitor = [this](bool) -> Result<std::unique_ptr<platform::ExitMonitor>> {
      auto monitor_owned = std::make_unique<FakeMonitor>();
      monitor = monitor_owned.get();
      return std::unique_ptr<platform::ExitMonitor>(std::move(monitor_owned));
    };
    services.start_thread = [this](std::size_t stack, std::function<void()> body, std::string_view what) {
      int number = threads_started++;
      if (number == fail_thread_number.load()) {
        return Result<std::unique_ptr<platform::Thread>>(
            make_error(std::errc::resource_unavailable_try_again, "cannot start " + std::string(what) + " thread"));
      }
      return platform::start_thread(stack, std::move(body), what);
    };
    return services;
  }
  // Makes child `index` exit with `status` and tells the monitor.
  void exit(std::size_t index, ExitStatus status, bool close_output = true) {
    {
      std::lock_guard<std::mutex> lock(children[index]->mutex);
      children[index]->exit = status;
    }
    if (close_output) children[index]->close_output();
    monitor->fire(1000 + static_cast<std::int64_t>(index));
  }
};

OopModuleConfig config(const std::string& name) {
  OopModuleConfig config(name, BackendKind::LocalProcess);
  config.binary = "/fake/" + name;
  return config;
}

LocalProcessOptions fast_options() {
  LocalProcessOptions options;
  options.stop_grace = 200ms;
  options.shutdown_grace = 200ms;
  options.drain_timeout = 100ms;
  options.kill_timeout = 200ms;
  return options;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(BackendOnFakes, CreateReportsAThreadThatCannotStartInsteadOfThrowing) {
  World world;
  world.fail_thread_number = 0;  // the supervisor is the first thread
  auto backend = make_backend(world.services(), CancellationToken(), std::make_shared<CollectingSink>(), {});
  ASSERT_FALSE(backend);
  EXPECT_EQ(backend.error().code, std::make_error_code(std::errc::resource_unavailable_try_again));
  EXPECT_NE(backend.error().message.find("supervisor"), std::string::npos) << backend.error().message;
}

TEST(BackendOnFakes, ReaderThatCannotStartLeavesNoGhost) {
  World world;
  std::atomic<int> exits{0};
  LocalProcessOptions options = fast_options();
  options.on_exit = [&](const InstanceHandle&, const ExitStatus&) { ++exits; };
  auto backend = make_backend(world.services(), CancellationToken(), std::make_shared<CollectingSink>(), options);
  ASSERT_TRUE(backend) << backend.error().message;
  world.fail_thread_number = world.threads_started + 1;  // the second reader
  auto handle = (*backend)->spawn_instance(config("ghost"));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::resource_unavailable_try_again));
  EXPECT_NE(handle.error().message.find("ghost"), std::string::npos) << handle.error().message;
  EXPECT_TRUE((*backend)->list_instances("ghost")->empty());
  ASSERT_EQ(world.children.size(), 1u);
  EXPECT_TRUE(world.children[0]->is_reaped()) << "killed and reaped before spawn returned";
  backend->reset();
  EXPECT_EQ(exits.load(), 0) << "on_exit for an id the caller never received";
}

TEST(BackendOnFakes, ChildThatMayNotBeSignalledIsAnErrorAndTheDestructorReturns) {
  World world;
  world.next_child->refuse_signals = true;
  auto sink = std::make_shared<CollectingSink>();
  auto backend = make_backend(world.services(), CancellationToken(), sink, fast_options());
  ASSERT_TRUE(backend);
  auto handle = (*backend)->spawn_instance(config("setuid"));
  ASSERT_TRUE(handle);
  auto start = std::chrono::steady_clock::now();
  auto stopped = (*backend)->stop_instance(*handle);
  ASSERT_FALSE(stopped);
  EXPECT_EQ(stopped.error().code, std::make_error_code(std::errc::operation_not_permitted));
  EXPECT_NE(stopped.error().message.find("1000"), std::string::npos) << "names the pid: " << stopped.error().message;
  EXPECT_LT(seconds_since(start), 0.1) << "no grace to sit out when nothing can be signalled";
  EXPECT_EQ((*backend)->list_instances("setuid")->size(), 1u) << "still running, still listed";
  start = std::chrono::steady_clock::now();
  backend->reset();
  EXPECT_LT(seconds_since(start), 0.2 + 0.2 + 2 * 0.1 + 0.5);
  EXPECT_FALSE(world.children[0]->is_reaped());
  EXPECT_TRUE(sink->wait_for([](const StoredRecord& r) { return r.line.find("abandoned pid 1000") == 0; }, 1s));
  world.children[0]->close_output();  // lets the fake readers end
}

TEST(BackendOnFakes, KilledChildThatNeverExitsTimesOutAfterTheKillBound) {
  World world;
  world.next_child->exits_on_kill = false;
  auto backend = make_backend(world.services(), CancellationToken(), std::make_shared<CollectingSink>(),
                              fast_options());
  ASSERT_TRUE(backend);
  auto handle = (*backend)->spawn_instance(config("stuck"));
  ASSERT_TRUE(handle);
  auto start = std::chrono::steady_clock::now();
  auto stopped = (*backend)->stop_instance(*handle);
  double elapsed = seconds_since(start);
  ASSERT_FALSE(stopped);
  EXPECT_EQ(stopped.error().code, std::make_error_code(std::errc::timed_out));
  EXPECT_GE(elapsed, 0.2 + 0.2 - 0.02) << "grace, then the kill bound";
  EXPECT_LT(elapsed, 0.2 + 0.2 + 0.3);
  start = std::chrono::steady_clock::now();
  backend->reset();
  EXPECT_LT(seconds_since(start), 1.5);
  world.children[0]->close_output();
}

TEST(BackendOnFakes, NoSignalAfterTheReapAndASecondStopIsEmpty) {
  World world;
  auto backend = make_backend(world.services(), CancellationToken(), std::make_shared<CollectingSink>(),
                              fast_options());
  ASSERT_TRUE(backend);
  auto handle = (*backend)->spawn_instance(config("quick"));
  ASSERT_TRUE(handle);
  world.exit(0, ExitStatus{ExitStatus::Kind::Exited, 4, false});
  for (int i = 0; i < 200 && !world.children[0]->is_reaped(); ++i) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(world.children[0]->is_reaped());
  auto first = (*backend)->stop_instance(*handle);
  ASSERT_TRUE(first);
  EXPECT_FALSE(first->has_value()) << "finished before the stop";
  backend->reset();
  EXPECT_FALSE(world.children[0]->signalled_after_reap());
}

TEST(BackendOnFakes, SlowSinkIsNamedAndDoesNotStretchTheStop) {
  World world;
  struct BlockingSink final : public LogSink {
    std::mutex mutex;
    std::condition_variable released_changed;
    bool released = false;
    std::vector<std::string> library;
    void write(const LogRecord& record) override {
      std::unique_lock<std::mutex> lock(mutex);
      if (record.stream == LogStream::Library) {
        library.emplace_back(record.line);
        return;
      }
      released_changed.wait(lock, [&] { return released; });  // blocks every child line
    }
  };
  auto sink = std::make_shared<BlockingSink>();
  auto backend = make_backend(world.services(), CancellationToken(), sink, fast_options());
  ASSERT_TRUE(backend);
  auto handle = (*backend)->spawn_instance(config("chatty"));
  ASSERT_TRUE(handle);
  world.children[0]->write(0, "a line the sink will sit on\n");
  std::this_thread::sleep_for(20ms);
  auto start = std::chrono::steady_clock::now();
  world.exit(0, ExitStatus{ExitStatus::Kind::Exited, 0, false}, false);
  world.children[0]->close_output();
  auto stopped = (*backend)->stop_instance(*handle);
  EXPECT_LT(seconds_since(start), 0.2 + 0.2 + 2 * 0.1 + 0.5);
  ASSERT_TRUE(stopped) << stopped.error().message;
  {
    std::lock_guard<std::mutex> lock(sink->mutex);
    bool named = false, blamed_process = false;
    for (const auto& line : sink->library) {
      named = named || line.find("sink") != std::string::npos;
      blamed_process = blamed_process || line.find("cannot kill") != std::string::npos;
    }
    EXPECT_TRUE(named);
    EXPECT_FALSE(blamed_process);
  }
  start = std::chrono::steady_clock::now();
  backend->reset();  // a reader is still inside the sink: abandoned, not waited for
  EXPECT_LT(seconds_since(start), 1.0);
  {
    std::lock_guard<std::mutex> lock(sink->mutex);
    sink->released = true;
    sink->released_changed.notify_all();
  }
  std::this_thread::sleep_for(50ms);  // the abandoned reader ends by itself
}

}  // namespace
}  // namespace modkit::core

namespace modkit::core {
namespace {

// A failed spawn used to join the reader that had started, which may be
// inside the sink with the child's first line: with a sink that waits for a
// lock the host holds around spawn_instance, that never returned.
TEST(BackendOnFakes, FailedSpawnDoesNotWaitForAReaderInsideTheSink) {
  World world;
  std::mutex host_lock;
  std::atomic<bool> in_sink{false};
  struct LockingSink final : public LogSink {
    LockingSink(std::mutex& lock, std::atomic<bool>& inside) : lock_(lock), inside_(inside) {}
    void write(const LogRecord& record) override {
      if (record.stream == LogStream::Library) return;
      inside_ = true;
      std::lock_guard<std::mutex> guard(lock_);  // the host's lock
    }
    std::mutex& lock_;
    std::atomic<bool>& inside_;
  };
  auto backend = make_backend(world.services(), CancellationToken(),
                              std::make_shared<LockingSink>(host_lock, in_sink), fast_options());
  ASSERT_TRUE(backend);
  world.next_child->write(0, "first line\n");  // there before the reader starts
  // The second reader's thread fails, once the first is inside the sink.
  int first_reader = world.threads_started;
  std::atomic<bool> done{false};
  std::optional<Result<InstanceHandle>> spawned;
  std::thread host([&] {
    std::lock_guard<std::mutex> guard(host_lock);  // the host spawns under its lock
    world.fail_thread_number = first_reader + 1;
    spawned.emplace((*backend)->spawn_instance(config("locked")));
    done = true;
  });
  for (int i = 0; i < 300 && !done; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(done.load()) << "spawn_instance waited for a reader stuck in the sink";
  if (!done) {
    host.detach();  // deadlocked for good: the test has failed already
    return;
  }
  host.join();
  ASSERT_TRUE(spawned.has_value());
  EXPECT_FALSE(*spawned);
  world.children[0]->close_output();
  backend->reset();
}

TEST(BackendOnFakes, SpawnedRecordComesBeforeTheExitOfAChildThatExitsAtOnce) {
  World world;
  auto sink = std::make_shared<CollectingSink>();
  auto backend = make_backend(world.services(), CancellationToken(), sink, fast_options());
  ASSERT_TRUE(backend) << backend.error().message;
  world.next_child->exit = ExitStatus{ExitStatus::Kind::Exited, 0, false};
  world.next_child->close_output();
  world.monitor->exit_during_watch = true;
  auto handle = (*backend)->spawn_instance(config("instant"));
  ASSERT_TRUE(handle) << handle.error().message;
  ASSERT_TRUE(sink->wait_for([&](const StoredRecord& r) { return r.line.rfind("exited with code", 0) == 0; }, 5s));
  ASSERT_TRUE(sink->wait_for([&](const StoredRecord& r) { return r.line.rfind("spawned pid", 0) == 0; }, 5s));
  std::vector<std::string> library;
  for (const auto& record : sink->records()) {
    if (record.stream == LogStream::Library && record.instance_id == handle->instance_id) library.push_back(record.line);
  }
  ASSERT_GE(library.size(), 2u);
  EXPECT_EQ(library.front().rfind("spawned pid", 0), 0u) << ::testing::PrintToString(library);
}

}  // namespace
}  // namespace modkit::core
