// Readiness::Mode::Notify through LocalProcessBackend on Windows: the spawn
// waits for READY=1 on the module's notification pipe, a silent module times
// out, and a module sees its own pipe's handle value, never the host's
// variables. (tests/behaviour/readiness_test.cpp covers the protocol on every
// platform.)
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <optional>

#include "win32_test_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace std::chrono_literals;

namespace {

OopModuleConfig notify_config(const std::string& module, std::vector<std::string> script,
                              std::chrono::milliseconds timeout = 5000ms) {
  OopModuleConfig config = child_config(module, std::move(script));
  config.readiness.mode = Readiness::Mode::Notify;
  config.readiness.timeout = timeout;
  return config;
}

// The first exit the backend reports (a failed spawn has no handle to wait on).
struct FirstExit {
  std::mutex mutex;
  std::condition_variable changed;
  std::optional<ExitStatus> status;
  std::optional<ExitStatus> wait(std::chrono::milliseconds timeout = 10000ms) {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait_for(lock, timeout, [&] { return status.has_value(); });
    return status;
  }
};

std::string first_line_starting(const CollectingSink& sink, const std::string& id, const std::string& prefix) {
  sink.wait_for([&](const StoredRecord& r) { return r.instance_id == id && r.line.rfind(prefix, 0) == 0; });
  for (const auto& line : sink.lines(id, LogStream::Stdout)) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return {};
}

}  // namespace

TEST(Win32Readiness, SpawnWaitsForReadyOnTheNotificationPipe) {
  Fixture f;
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(notify_config("late", {"sleep", "0.3", "notify", "READY=1", "sleep", "5"}));
  double took = seconds_since(start);
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_GE(took, 0.3) << "returned before the module was ready";
  EXPECT_LT(took, 3.0);
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->reason, ExitStatus::Reason::Stopped);
}

TEST(Win32Readiness, SilentModuleTimesOut) {
  auto first = std::make_shared<FirstExit>();
  LocalProcessOptions options = Fixture::fast_options();
  options.on_exit = [first](const InstanceHandle&, const ExitStatus& status) {
    std::lock_guard<std::mutex> lock(first->mutex);
    if (!first->status) first->status = status;
    first->changed.notify_all();
  };
  Fixture f(std::move(options));
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(notify_config("silent", {"sleep", "30"}, 200ms));
  double took = seconds_since(start);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::timed_out)) << handle.error().message;
  EXPECT_GE(took, 0.2);
  EXPECT_LT(took, 0.2 + 0.5 + 2.0);  // timeout + stop grace + slack
  EXPECT_TRUE(f.backend->list_instances("silent")->empty());
  auto status = first->wait();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->reason, ExitStatus::Reason::ReadinessTimeout) << *status;
}

// A host that is itself a module has MODKIT_NOTIFY_FD and MODKIT_WATCHDOG_MS:
// its modules never see them. A Notify module sees its own pipe's handle
// value and the watchdog it was configured with.
TEST(Win32Readiness, ModulesSeeTheirOwnPipeNeverTheHostsVariables) {
  SetEnvironmentVariableW(L"MODKIT_NOTIFY_FD", L"4242");
  SetEnvironmentVariableW(L"MODKIT_WATCHDOG_MS", L"1");
  Fixture f;
  OopModuleConfig notified = notify_config("notified", {"notify-env", "notify", "READY=1", "sleep", "5"});
  notified.readiness.watchdog = 60000ms;
  auto with = f.backend->spawn_instance(notified);
  auto without = f.backend->spawn_instance(child_config("plain", {"notify-env", "sleep", "5"}));
  SetEnvironmentVariableW(L"MODKIT_NOTIFY_FD", nullptr);
  SetEnvironmentVariableW(L"MODKIT_WATCHDOG_MS", nullptr);
  ASSERT_TRUE(with) << with.error();
  ASSERT_TRUE(without) << without.error();

  std::string line = first_line_starting(*f.sink, with->instance_id, "notify-env ");
  ASSERT_EQ(line.rfind("notify-env ", 0), 0u) << line;
  std::string value = line.substr(11, line.find(' ', 11) - 11);
  EXPECT_FALSE(value.empty());
  EXPECT_EQ(value.find_first_not_of("0123456789"), std::string::npos) << line;
  EXPECT_NE(value, "4242");
  EXPECT_EQ(line, "notify-env " + value + " watchdog 60000");
  EXPECT_EQ(first_line_starting(*f.sink, without->instance_id, "notify-env "), "notify-env unset watchdog unset");

  EXPECT_TRUE(f.backend->stop_instance(*with));
  EXPECT_TRUE(f.backend->stop_instance(*without));
}
