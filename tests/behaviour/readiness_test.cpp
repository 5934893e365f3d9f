// Readiness (OopModuleConfig::readiness) with real processes: the
// notification descriptor, the stdout line, timeouts and the watchdog.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#ifdef _WIN32
#include <windows.h>
#endif

#include "behaviour_support.hpp"

namespace modkit::testing::behaviour {
namespace {

using std::chrono::milliseconds;

OopModuleConfig notify_config(const std::string& module, std::vector<std::string> script,
                              milliseconds timeout = milliseconds(5000)) {
  OopModuleConfig config = child_config(module, std::move(script));
  config.readiness.mode = Readiness::Mode::Notify;
  config.readiness.timeout = timeout;
  return config;
}

// Collects what on_exit reports, to wait for it with a bound.
struct ExitLog {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::pair<std::string, ExitStatus>> exits;
  std::function<void(const InstanceHandle&, const ExitStatus&)> callback() {
    return [this](const InstanceHandle& handle, const ExitStatus& status) {
      std::lock_guard<std::mutex> lock(mutex);
      exits.emplace_back(handle.instance_id, status);
      changed.notify_all();
    };
  }
  std::optional<ExitStatus> wait(milliseconds timeout = milliseconds(10000)) {
    std::unique_lock<std::mutex> lock(mutex);
    if (!changed.wait_for(lock, timeout, [&] { return !exits.empty(); })) return std::nullopt;
    return exits.front().second;
  }
};

struct ReadinessFixture {
  ReadinessFixture() {
    LocalProcessOptions options = Fixture::fast_options();
    options.on_exit = exits.callback();
    fixture = std::make_unique<Fixture>(std::move(options));
  }
  ExitLog exits;
  std::unique_ptr<Fixture> fixture;
};

TEST(Readiness, NotifyReadyHoldsTheSpawnUntilTheModuleSaysSo) {
  Fixture f;
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(notify_config("late", {"sleep", "0.3", "notify", "READY=1", "sleep", "5"}));
  double took = seconds_since(start);
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_GE(took, 0.3);
  EXPECT_LT(took, 3.0);
  EXPECT_EQ(f.backend->list_instances("late")->size(), 1u);
  EXPECT_TRUE(f.sink->wait_for(
      [&](const StoredRecord& r) { return r.instance_id == handle->instance_id && r.line.rfind("ready after", 0) == 0; },
      milliseconds(5000)));
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped && *stopped);
  EXPECT_EQ((*stopped)->reason, ExitStatus::Reason::Stopped);
}

TEST(Readiness, ABareNewlineCountsAsReady) {
  Fixture f;
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(notify_config("s6", {"sleep", "0.2", "notify-newline", "sleep", "5"}));
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_GE(seconds_since(start), 0.2);
  ASSERT_TRUE(f.backend->stop_instance(*handle));
}

TEST(Readiness, ReadyWrittenJustBeforeExitStillCounts) {
  // The exit is reported only after what the child wrote before it.
  for (int round = 0; round < 20; ++round) {
    Fixture f;
    auto handle = f.backend->spawn_instance(notify_config("quick", {"notify", "READY=1", "exit", "0"}));
    ASSERT_TRUE(handle) << "round " << round << ": " << handle.error();
  }
}

TEST(Readiness, SilenceTimesOutAndLeavesNoProcess) {
  ReadinessFixture r;
  auto start = Clock::now();
  auto handle = r.fixture->backend->spawn_instance(notify_config("silent", {"sleep", "30"}, milliseconds(200)));
  double took = seconds_since(start);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::timed_out)) << handle.error().message;
  EXPECT_NE(handle.error().message.find("not ready within 200 ms"), std::string::npos) << handle.error().message;
  EXPECT_GE(took, 0.2);
  EXPECT_LT(took, 0.2 + 0.5 + 2.0);  // timeout + grace + slack: test_child dies at the graceful step
  EXPECT_TRUE(r.fixture->backend->list_instances("silent")->empty());
  auto status = r.exits.wait();
  ASSERT_TRUE(status);
  EXPECT_EQ(status->reason, ExitStatus::Reason::ReadinessTimeout);
}

TEST(Readiness, ClosingTheDescriptorBeforeReadyIsAnError) {
#ifdef _WIN32
  // Wine starts a conhost.exe for a console-less module, which inherits the
  // module's copy of the pipe: the end of file then comes only at the exit.
  // Win32Notify.EndOfFileWhenTheChildClosesItsEnd covers it there.
  HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
  if (ntdll != nullptr && GetProcAddress(ntdll, "wine_get_version") != nullptr) {
    GTEST_SKIP() << "under Wine the module's conhost holds the descriptor open";
  }
#endif
  ReadinessFixture r;
  auto handle = r.fixture->backend->spawn_instance(notify_config("closer", {"notify-close", "sleep", "30"}));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::broken_pipe)) << handle.error().message;
  EXPECT_TRUE(r.fixture->backend->list_instances("closer")->empty());
  auto status = r.exits.wait();
  ASSERT_TRUE(status);
  EXPECT_EQ(status->reason, ExitStatus::Reason::NotReady);
}

TEST(Readiness, ExitingBeforeReadyIsAnErrorEvenWithCodeZero) {
  ReadinessFixture r;
  auto handle = r.fixture->backend->spawn_instance(notify_config("quitter", {"notify", "STATUS=starting", "exit", "0"}));
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::no_such_process)) << handle.error().message;
  auto status = r.exits.wait();
  ASSERT_TRUE(status);
  EXPECT_EQ(status->reason, ExitStatus::Reason::NotReady);
  EXPECT_EQ(status->code, 0);
}

TEST(Readiness, StatusLinesBecomeRecordsAndEvents) {
  Fixture f;
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::string> seen;
  InstanceEvents events;
  events.on_status = [&](const InstanceHandle&, std::string_view text) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.push_back("status " + std::string(text));
    changed.notify_all();
  };
  events.on_ready = [&](const InstanceHandle&) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.push_back("ready");
    changed.notify_all();
  };
  events.on_exit = [&](const InstanceHandle&, const ExitStatus& status) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.push_back("exit " + std::string(to_string(status.reason)));
    changed.notify_all();
  };
  auto handle = f.backend->start_instance(
      notify_config("chatty", {"notify", "STATUS=warming up", "notify", "READY=1", "notify", "STATUS=serving", "exit", "0"}),
      events);
  ASSERT_TRUE(handle) << handle.error();
  {
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(changed.wait_for(lock, milliseconds(10000), [&] { return seen.size() >= 4; }));
    EXPECT_EQ(seen, (std::vector<std::string>{"status warming up", "ready", "status serving", "exit exited"}));
  }
  EXPECT_TRUE(contains(library_events(*f.sink, handle->instance_id), "status: warming up"));
}

TEST(Readiness, StartInstanceReturnsAtOnceAndReportsTheTimeout) {
  Fixture f;
  std::mutex mutex;
  std::condition_variable changed;
  std::optional<ExitStatus> ended;
  bool ready = false;
  InstanceEvents events;
  events.on_ready = [&](const InstanceHandle&) { ready = true; };
  events.on_exit = [&](const InstanceHandle&, const ExitStatus& status) {
    std::lock_guard<std::mutex> lock(mutex);
    ended = status;
    changed.notify_all();
  };
  auto start = Clock::now();
  auto handle = f.backend->start_instance(notify_config("async", {"sleep", "30"}, milliseconds(200)), events);
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_LT(seconds_since(start), 0.2);
  std::unique_lock<std::mutex> lock(mutex);
  ASSERT_TRUE(changed.wait_for(lock, milliseconds(10000), [&] { return ended.has_value(); }));
  EXPECT_EQ(ended->reason, ExitStatus::Reason::ReadinessTimeout);
  EXPECT_FALSE(ready);
  EXPECT_GE(seconds_since(start), 0.2);
}

TEST(Readiness, AStdoutLineWithThePrefixMakesItReady) {
  Fixture f;
  OopModuleConfig config = child_config("web", {"say", "booting", "sleep", "0.2", "say", "listening on 8080", "sleep", "5"});
  config.readiness.mode = Readiness::Mode::StdoutLine;
  config.readiness.line_prefix = "listening on";
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_GE(seconds_since(start), 0.2);
  // The ready line is still delivered.
  EXPECT_TRUE(f.sink->wait_for_line(handle->instance_id, "listening on 8080"));
  ASSERT_TRUE(f.backend->stop_instance(*handle));
}

TEST(Readiness, StdoutClosedWithoutTheLineIsAnError) {
  Fixture f;
  OopModuleConfig config = child_config("web", {"say", "hello", "exit", "0"});
  config.readiness.mode = Readiness::Mode::StdoutLine;
  config.readiness.line_prefix = "listening";
  auto handle = f.backend->spawn_instance(config);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::no_such_process)) << handle.error().message;
}

TEST(Readiness, TheWatchdogCatchesPingsThatStop) {
  ReadinessFixture r;
  OopModuleConfig config = notify_config("dog", {"notify", "READY=1", "watchdog-pings", "5", "50", "sleep", "30"});
  config.readiness.watchdog = milliseconds(200);
  auto handle = r.fixture->backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  auto ready_at = Clock::now();
  auto status = r.exits.wait();
  ASSERT_TRUE(status);
  double after_ready = seconds_since(ready_at);
  EXPECT_EQ(status->reason, ExitStatus::Reason::WatchdogTimeout);
  // Pings at 0, 50, ..., 200 ms keep it alive; 200 ms after the last one it
  // is stopped (test_child ends at the graceful step).
  EXPECT_GE(after_ready, 0.2 + 0.2 - 0.03);
  // + the stop's grace (Wine never delivers CTRL_BREAK, so there the kill
  // comes after it) + slack.
  EXPECT_LT(after_ready, 0.2 + 0.2 + 0.5 + 0.5);
}

TEST(Readiness, TheModuleLearnsItsDescriptorAndWatchdogFromItsEnvironment) {
  Fixture f;
  OopModuleConfig config = notify_config("env", {"notify-env", "notify", "READY=1", "sleep", "5"});
  config.readiness.watchdog = milliseconds(60000);
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.line.rfind("notify-env ", 0) == 0;
  }));
  auto lines = f.sink->lines(handle->instance_id, LogStream::Stdout);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines[0].find(" watchdog 60000"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[0].find("notify-env unset"), std::string::npos) << lines[0];
  ASSERT_TRUE(f.backend->stop_instance(*handle));
}

TEST(Readiness, CancellingTheTokenEndsTheWait) {
  Fixture f;
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(200));
    f.token.cancel();
  });
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(notify_config("slow", {"sleep", "30"}, milliseconds(60000)));
  canceller.join();
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::operation_canceled)) << handle.error().message;
  EXPECT_LT(seconds_since(start), 5.0);
  EXPECT_TRUE(f.backend->list_instances("slow")->empty());
}

TEST(Readiness, AStopDuringTheWaitIsNotAReadinessFailure) {
  ReadinessFixture r;
  Result<InstanceHandle> handle = make_error(std::errc::io_error, "not returned");
  std::thread spawner([&] {
    handle = r.fixture->backend->spawn_instance(notify_config("stopped", {"sleep", "30"}, milliseconds(60000)));
  });
  std::vector<InstanceHandle> listed;
  auto deadline = Clock::now() + milliseconds(10000);
  while (listed.empty() && Clock::now() < deadline) {
    listed = *r.fixture->backend->list_instances("stopped");
    std::this_thread::sleep_for(milliseconds(5));
  }
  ASSERT_EQ(listed.size(), 1u);
  auto stopped = r.fixture->backend->stop_instance(listed[0]);
  spawner.join();
  ASSERT_TRUE(stopped && *stopped);
  EXPECT_EQ((*stopped)->reason, ExitStatus::Reason::Stopped);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::operation_canceled)) << handle.error().message;
  auto status = r.exits.wait();
  ASSERT_TRUE(status);
  EXPECT_EQ(status->reason, ExitStatus::Reason::Stopped);
  EXPECT_FALSE(contains(library_events(*r.fixture->sink, listed[0].instance_id), "before it was ready: stopping it"));
}

TEST(Readiness, BadReadinessConfigsAreRefused) {
  Fixture f;
  OopModuleConfig no_prefix = child_config("bad", {"sleep", "5"});
  no_prefix.readiness.mode = Readiness::Mode::StdoutLine;
  OopModuleConfig no_timeout = notify_config("bad", {"sleep", "5"}, milliseconds(0));
  OopModuleConfig negative = notify_config("bad", {"sleep", "5"}, milliseconds(-5));
  OopModuleConfig endless = notify_config("bad", {"sleep", "5"}, milliseconds::max());
  OopModuleConfig dog_without_notify = child_config("bad", {"sleep", "5"});
  dog_without_notify.readiness.watchdog = milliseconds(100);
  for (const auto* config : {&no_prefix, &no_timeout, &negative, &endless, &dog_without_notify}) {
    auto handle = f.backend->spawn_instance(*config);
    ASSERT_FALSE(handle);
    EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::invalid_argument)) << handle.error().message;
  }
  EXPECT_TRUE(f.backend->list_instances("bad")->empty());
}

}  // namespace
}  // namespace modkit::testing::behaviour
