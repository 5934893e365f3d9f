// Shutdown when the token is cancelled, and by the destructor.
#include <gtest/gtest.h>

#include <csignal>
#include <string>
#include <thread>

#include "behaviour_support.hpp"
#ifndef _WIN32
#include "../posix/process_probe.hpp"
#endif

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::behaviour;
#ifndef _WIN32
using namespace modkit::testing::probe;
#endif
using namespace std::chrono_literals;

namespace {

#ifndef _WIN32
class Shutdown : public ::testing::TestWithParam<bool> {};

TEST_P(Shutdown, StubbornChildrenShareOneDeadline) {
  constexpr int kChildren = 8;
  ExitLog exits;
  LocalProcessOptions options = options_with(exits, GetParam());
  options.shutdown_grace = 1000ms;
  Fixture f(options);
  std::vector<InstanceHandle> handles;
  for (int i = 0; i < kChildren; ++i) {
    auto handle = f.backend->spawn_instance(child_config("stubborn", {"ignore-term", "sleep", "30"}));
    ASSERT_TRUE(handle) << handle.error();
    handles.push_back(*handle);
  }
  for (const auto& handle : handles) ASSERT_TRUE(f.sink->wait_for_line(handle.instance_id, "ignoring SIGTERM"));
  auto start = Clock::now();
  f.token.cancel();
  f.backend->wait_for_shutdown();
  double elapsed = seconds_since(start);
  EXPECT_GE(elapsed, 0.9) << "killed before the shutdown grace ran out";
  EXPECT_LT(elapsed, 3 * 1.0) << kChildren << " stubborn children must take about one grace, not " << kChildren;
  for (const auto& handle : handles) {
    auto status = exits.wait_for(handle.instance_id);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, SIGKILL);
    EXPECT_TRUE(status->forced);
    EXPECT_FALSE(running(static_cast<pid_t>(*handle.pid)));
  }
  EXPECT_TRUE(f.backend->list_instances("stubborn")->empty());
  EXPECT_TRUE(zombie_children().empty());
}

TEST_P(Shutdown, CooperativeChildrenStopAtOnce) {
  ExitLog exits;
  LocalProcessOptions options = options_with(exits, GetParam());
  options.shutdown_grace = 2000ms;
  Fixture f(options);
  std::vector<InstanceHandle> handles;
  for (int i = 0; i < 4; ++i) {
    auto handle = f.backend->spawn_instance(child_config("polite", {"say", "up", "sleep", "30"}));
    ASSERT_TRUE(handle) << handle.error();
    handles.push_back(*handle);
  }
  for (const auto& handle : handles) ASSERT_TRUE(f.sink->wait_for_line(handle.instance_id, "up"));
  auto start = Clock::now();
  f.token.cancel();
  f.backend->wait_for_shutdown();
  EXPECT_LT(seconds_since(start), 2.0);
  for (const auto& handle : handles) {
    auto status = exits.wait_for(handle.instance_id);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, SIGTERM);
    EXPECT_FALSE(status->forced);
  }
  EXPECT_TRUE(zombie_children().empty());
}

INSTANTIATE_TEST_SUITE_P(Monitors, Shutdown, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? std::string("Pidfd") : std::string("WaiterThread");
                         });

// A sink that holds back every stdout record until opened, so that a child's
// output is still in the pipe when it is stopped.
class GatedSink final : public LogSink {
 public:
  explicit GatedSink(std::shared_ptr<CollectingSink> inner) : inner_(std::move(inner)) {}
  void write(const LogRecord& record) override {
    if (record.stream == LogStream::Stdout) {
      std::unique_lock<std::mutex> lock(mutex_);
      opened_.wait(lock, [&] { return open_; });
    }
    inner_->write(record);
  }
  void open() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
    opened_.notify_all();
  }

 private:
  std::shared_ptr<CollectingSink> inner_;
  std::mutex mutex_;
  std::condition_variable opened_;
  bool open_ = false;
};

TEST(ShutdownDrain, NoLineWrittenBeforeExitIsLost) {
  constexpr int kLines = 3000;  // ~30 KB: fits in the pipe while the sink holds back
  auto collected = std::make_shared<CollectingSink>();
  auto gate = std::make_shared<GatedSink>(collected);
  CancellationToken token;
  ExitLog exits;
  LocalProcessOptions options = options_with(exits);
  options.shutdown_grace = 2000ms;
  LocalProcessBackend backend(token, gate, options);
  auto handle = backend.spawn_instance(
      child_config("chatty", {"lines", std::to_string(kLines), "stderr-lines", "1", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  // stderr is not held back: "err 1" means every stdout line is written.
  ASSERT_TRUE(collected->wait_for_line(handle->instance_id, "err 1"));
  struct OpenOnExit {
    GatedSink& gate;
    ~OpenOnExit() { gate.open(); }  // never leave the backend blocked, even on failure
  } open_on_exit{*gate};
  token.cancel();
  // Dead by SIGTERM with its output still unread in the pipe. (on_exit is only
  // called once the whole shutdown has finished, so watch the pid instead.)
  EXPECT_TRUE(wait_not_running(static_cast<pid_t>(*handle->pid), 5000ms));
  gate->open();
  backend.wait_for_shutdown();
  auto status = exits.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->code, SIGTERM);
  auto lines = collected->lines(handle->instance_id, LogStream::Stdout);
  ASSERT_EQ(lines.size(), static_cast<std::size_t>(kLines));
  for (int i = 0; i < kLines; ++i) ASSERT_EQ(lines[i], "line " + std::to_string(i + 1));
}

TEST(ShutdownDrain, DestructorStopsEverythingAndReapsIt) {
  ExitLog exits;
  std::vector<pid_t> pids;
  pid_t grandchild = 0;
  auto sink = std::make_shared<CollectingSink>();
  double elapsed;
  {
    LocalProcessOptions options = options_with(exits);
    options.shutdown_grace = 500ms;
    CancellationToken token;
    auto backend = std::make_unique<LocalProcessBackend>(token, sink, options);
    std::vector<InstanceHandle> handles;
    for (auto script : std::vector<std::vector<std::string>>{{"say", "up", "sleep", "30"},
                                                             {"ignore-term", "sleep", "30"},
                                                             {"grandchild", "30", "sleep", "30"}}) {
      auto handle = backend->spawn_instance(child_config("mixed", script));
      ASSERT_TRUE(handle) << handle.error();
      handles.push_back(*handle);
      pids.push_back(static_cast<pid_t>(*handle->pid));
      ASSERT_TRUE(sink->wait_for([&](const StoredRecord& r) {
        return r.instance_id == handle->instance_id && r.stream == LogStream::Stdout;
      }));
    }
    grandchild = std::stoi(sink->lines(handles[2].instance_id, LogStream::Stdout).at(0).substr(11));
    auto start = Clock::now();
    backend.reset();  // the destructor stops everything
    elapsed = seconds_since(start);
  }
  EXPECT_LT(elapsed, 3 * 0.5);
  EXPECT_EQ(exits.size(), 3u);
  for (pid_t pid : pids) EXPECT_FALSE(running(pid)) << pid;
  EXPECT_TRUE(wait_not_running(grandchild, 2000ms));
  EXPECT_TRUE(zombie_children().empty());
  EXPECT_TRUE(children_of_self().empty());
}
#endif

TEST(ShutdownDrain, WaitForShutdownReturnsAtOnceWithoutCancel) {
  Fixture f;
  auto start = Clock::now();
  f.backend->wait_for_shutdown();
  EXPECT_LT(seconds_since(start), 0.5);
}

TEST(ShutdownDrain, CancelWithNothingRunning) {
  Fixture f;
  f.token.cancel();
  f.backend->wait_for_shutdown();
  EXPECT_FALSE(f.backend->spawn_instance(child_config("late", {"exit", "0"})));
}

}  // namespace
