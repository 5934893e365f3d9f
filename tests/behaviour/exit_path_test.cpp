// The exit path (issue 12): an exit is acted on by the thread that sees it
// (the last reader, or the stop waiting on the process), not handed from the
// exit monitor through the supervisor; readers come from a pool, so a spawn
// in steady state starts no thread.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "behaviour_support.hpp"
#include "core/platform_services.hpp"

namespace modkit::testing::behaviour {
namespace {

using std::chrono::milliseconds;

// The real monitor, told to drop the exits of the processes it is given
// while `deaf` is set: what still works then does not depend on the
// monitor's hand-off.
class DeafMonitor final : public platform::ExitMonitor {
 public:
  DeafMonitor(std::unique_ptr<platform::ExitMonitor> real, std::shared_ptr<std::atomic<bool>> deaf)
      : real_(std::move(real)), deaf_(std::move(deaf)) {}
  Result<void> watch(platform::Process& process, std::function<void()> on_exit, std::function<void()> on_contents,
                     std::function<void(std::string_view, bool)> on_notify) override {
    if (deaf_->load()) on_exit = [] {};
    return real_->watch(process, std::move(on_exit), std::move(on_contents), std::move(on_notify));
  }
  void unwatch(platform::Process& process) override { real_->unwatch(process); }
  void shutdown() override { real_->shutdown(); }

 private:
  std::unique_ptr<platform::ExitMonitor> real_;
  std::shared_ptr<std::atomic<bool>> deaf_;
};

core::PlatformServices deaf_monitor_services(std::shared_ptr<std::atomic<bool>> deaf =
                                                 std::make_shared<std::atomic<bool>>(true)) {
  core::PlatformServices services = core::real_platform_services();
  auto make = services.make_exit_monitor;
  services.make_exit_monitor = [make, deaf](bool prefer_pidfd) -> Result<std::unique_ptr<platform::ExitMonitor>> {
    auto real = make(prefer_pidfd);
    if (!real) return std::move(real).error();
    return std::unique_ptr<platform::ExitMonitor>(std::make_unique<DeafMonitor>(std::move(*real), deaf));
  };
  return services;
}

struct Exits {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::pair<std::string, ExitStatus>> seen;
  std::function<void(const InstanceHandle&, const ExitStatus&)> callback() {
    return [this](const InstanceHandle& handle, const ExitStatus& status) {
      std::lock_guard<std::mutex> lock(mutex);
      seen.emplace_back(handle.instance_id, status);
      changed.notify_all();
    };
  }
  std::optional<ExitStatus> wait_for(const std::string& id, milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex);
    std::optional<ExitStatus> found;
    changed.wait_for(lock, timeout, [&] {
      for (const auto& [seen_id, status] : seen) {
        if (seen_id == id) found = status;
      }
      return found.has_value();
    });
    return found;
  }
};

std::unique_ptr<LocalProcessBackend> make(core::PlatformServices services, std::shared_ptr<LogSink> sink,
                                          LocalProcessOptions options, CancellationToken token = {}) {
  auto backend = core::make_backend(std::move(services), std::move(token), std::move(sink), std::move(options));
  EXPECT_TRUE(backend) << backend.error();
  return backend ? std::move(*backend) : nullptr;
}

TEST(ExitPath, ANaturalExitIsReportedWithoutTheMonitorsHandOff) {
  Exits exits;
  LocalProcessOptions options = Fixture::fast_options();
  options.on_exit = exits.callback();
  auto sink = std::make_shared<CollectingSink>();
  auto backend = make(deaf_monitor_services(), sink, options);
  ASSERT_TRUE(backend);
  for (int round = 0; round < 5; ++round) {
    // The pause: an exit before spawn_instance has watched the process is
    // left to the monitor (which this one would drop).
    auto handle = backend->spawn_instance(child_config("quick", {"sleep", "0.1", "say", "hi", "exit", "3"}));
    ASSERT_TRUE(handle) << handle.error();
    auto status = exits.wait_for(handle->instance_id, milliseconds(3000));
    ASSERT_TRUE(status) << "round " << round << ": the exit was never reported";
    EXPECT_EQ(status->kind, ExitStatus::Kind::Exited);
    EXPECT_EQ(status->code, 3);
    EXPECT_TRUE(backend->list_instances("quick")->empty());
  }
}

TEST(ExitPath, AStopWaitsForTheExitItselfNotForTheMonitor) {
  // Without the stop's own wait, the deaf monitor leaves it until the kill
  // has timed out (5 s) and then fails it. (Under Wine the test child's
  // graceful stop is not delivered, so there it ends by the kill at 200 ms.)
  LocalProcessOptions options = Fixture::fast_options();
  options.stop_grace = milliseconds(200);
  options.kill_timeout = milliseconds(5000);
  auto sink = std::make_shared<CollectingSink>();
  auto backend = make(deaf_monitor_services(), sink, options);
  ASSERT_TRUE(backend);
  auto handle = backend->spawn_instance(child_config("sleeper", {"say", "up", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(sink->wait_for_line(handle->instance_id, "up"));
  const auto start = Clock::now();
  auto stopped = backend->stop_instance(*handle);
  const double took = seconds_since(start);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->reason, ExitStatus::Reason::Stopped);
  EXPECT_LT(took, 2.0) << "the stop waited for an exit only the monitor would have reported";
}

// A sink that holds the supervisor (the only thread that delivers "ready
// after" records) until released.
class HoldingSink final : public LogSink {
 public:
  void write(const LogRecord& record) override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      lines_.push_back({std::string(record.instance_id), std::string(record.line)});
      if (record.stream == LogStream::Library && record.line.rfind("ready after", 0) == 0) {
        holding_ = true;
        changed_.notify_all();
        changed_.wait_for(lock, std::chrono::seconds(20), [&] { return released_; });
        holding_ = false;
      }
    }
    changed_.notify_all();
  }
  bool wait_holding() {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, std::chrono::seconds(10), [&] { return holding_; });
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    changed_.notify_all();
  }
  std::vector<std::string> lines_of(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> lines;
    for (const auto& [line_id, line] : lines_) {
      if (line_id == id) lines.push_back(line);
    }
    return lines;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<std::string, std::string>> lines_;
  bool holding_ = false;
  bool released_ = false;
};

TEST(ExitPath, AnExitIsReportedWhileTheSupervisorIsBusyInASink) {
  Exits exits;
  LocalProcessOptions options = Fixture::fast_options();
  options.on_exit = exits.callback();
  // Deaf, and without a group whose emptying the monitor also reports: the
  // exit can only be acted on by the instance's readers, so the test does
  // not depend on which thread wins (the monitor's hand-off to the
  // supervisor stays the fallback).
  options.containment = Containment::Off;
  auto sink = std::make_shared<HoldingSink>();
  auto deaf = std::make_shared<std::atomic<bool>>(false);
  auto backend = make(deaf_monitor_services(deaf), sink, options);
  ASSERT_TRUE(backend);
  OopModuleConfig slow = child_config("held", {"notify", "READY=1", "sleep", "30"});
  slow.readiness.mode = Readiness::Mode::Notify;
  auto held = backend->start_instance(slow, {});
  ASSERT_TRUE(held) << held.error();
  ASSERT_TRUE(sink->wait_holding());
  deaf->store(true);  // for "quick" only: "held" is still heard

  auto quick = backend->spawn_instance(child_config("quick", {"sleep", "0.1", "say", "hi", "exit", "0"}));
  ASSERT_TRUE(quick) << quick.error();
  auto status = exits.wait_for(quick->instance_id, milliseconds(3000));
  EXPECT_TRUE(status) << "the exit waited for the busy supervisor";
  // Its records came in order without the supervisor too.
  auto lines = sink->lines_of(quick->instance_id);
  ASSERT_GE(lines.size(), 3u);
  EXPECT_EQ(lines[0].rfind("spawned pid ", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1], "hi");
  EXPECT_EQ(lines.back(), "exited with code 0");
  sink->release();
  auto stopped = backend->stop_instance(*held);
  EXPECT_TRUE(stopped) << stopped.error();
}

// Counts the threads the backend starts.
core::PlatformServices counting_services(std::shared_ptr<std::atomic<int>> started) {
  core::PlatformServices services = core::real_platform_services();
  auto start = services.start_thread;
  services.start_thread = [start, started](std::size_t stack, std::function<void()> body, std::string_view what) {
    started->fetch_add(1);
    return start(stack, std::move(body), what);
  };
  return services;
}

// Threads the backend starts over `spawns` sequential spawns, each waited
// for until its on_exit.
int threads_started_by_spawns(std::size_t idle_readers, int spawns) {
  auto started = std::make_shared<std::atomic<int>>(0);
  Exits exits;
  LocalProcessOptions options = Fixture::fast_options();
  options.on_exit = exits.callback();
  options.idle_readers = idle_readers;
  auto backend = make(counting_services(started), std::make_shared<CollectingSink>(), options);
  if (!backend) return -1;
  const int before = started->load();  // the backend's own (supervisor, monitor)
  for (int i = 0; i < spawns; ++i) {
    auto handle = backend->spawn_instance(child_config("churn", {"say", "hi", "exit", "0"}));
    EXPECT_TRUE(handle) << handle.error();
    if (!handle) break;
    EXPECT_TRUE(exits.wait_for(handle->instance_id, milliseconds(5000)));
  }
  return started->load() - before;
}

// The pool grows only while every thread it has is busy. One spawn at a time
// keeps at most four busy: the new instance's two readers, and the two of the
// instance before it, which may still be finishing the report of its exit.
// So at most four threads, however many spawns; each spawn after them starts none.
TEST(ExitPath, ThreadsStartedAreBoundedByOverlapNotByTheNumberOfSpawns) {
  const int started = threads_started_by_spawns(16, 60);
  EXPECT_GE(started, 2);
  EXPECT_LE(started, 4);
}

TEST(ExitPath, WithoutIdleReadersEachSpawnStartsItsTwoReaders) {
  EXPECT_EQ(threads_started_by_spawns(0, 5), 10);
}

}  // namespace
}  // namespace modkit::testing::behaviour
