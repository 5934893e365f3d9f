// Every exit is observed, with or without a stop, by both exit monitors.
#include <gtest/gtest.h>

#include <atomic>
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

namespace {

class ExitObserved : public ::testing::TestWithParam<bool> {
 protected:
  ExitLog exits_;
  Fixture f_{options_with(exits_, GetParam())};

  StoredRecord exit_event(const std::string& id) {
    for (const auto& record : f_.sink->records()) {
      if (record.instance_id == id && is_exit_event(record)) return record;
    }
    return {};
  }

  void expect_gone(const InstanceHandle& handle) {
    EXPECT_TRUE(f_.backend->list_instances(handle.module)->empty());
#ifndef _WIN32
    EXPECT_TRUE(zombie_children().empty());
    EXPECT_FALSE(running(static_cast<pid_t>(*handle.pid)));
#endif
  }
};

TEST_P(ExitObserved, ExitCodeIsReportedWithoutAnyStop) {
  auto handle = f_.backend->spawn_instance(child_config("quitter", {"say", "bye", "exit", "3"}));
  ASSERT_TRUE(handle) << handle.error();
  auto status = exits_.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->kind, ExitStatus::Kind::Exited);
  EXPECT_EQ(status->code, 3);
  EXPECT_FALSE(status->forced);
  StoredRecord event = exit_event(handle->instance_id);
  EXPECT_EQ(event.line, "exited with code 3");
  EXPECT_EQ(event.level, LogLevel::Warn);
  EXPECT_EQ(event.module, "quitter");
  expect_gone(*handle);
}

TEST_P(ExitObserved, CleanExitIsInfo) {
  auto handle = f_.backend->spawn_instance(child_config("clean", {"exit", "0"}));
  ASSERT_TRUE(handle) << handle.error();
  auto status = exits_.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success());
  EXPECT_EQ(exit_event(handle->instance_id).level, LogLevel::Info);
  expect_gone(*handle);
}

#ifndef _WIN32
TEST_P(ExitObserved, DeathBySignalIsReported) {
  auto handle = f_.backend->spawn_instance(child_config("crasher", {"raise", std::to_string(SIGKILL)}));
  ASSERT_TRUE(handle) << handle.error();
  auto status = exits_.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(status->code, SIGKILL);
  EXPECT_FALSE(status->forced);
  StoredRecord event = exit_event(handle->instance_id);
  EXPECT_EQ(event.line, "killed by signal " + std::to_string(SIGKILL));
  EXPECT_EQ(event.level, LogLevel::Error);
  expect_gone(*handle);
}

TEST_P(ExitObserved, AbortIsReported) {
  // SIGABRT rather than SIGSEGV: a sanitized test child turns SIGSEGV into exit(1).
  auto handle = f_.backend->spawn_instance(child_config("abort", {"raise", std::to_string(SIGABRT)}));
  ASSERT_TRUE(handle) << handle.error();
  auto status = exits_.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(status->code, SIGABRT);
  expect_gone(*handle);
}
#endif

TEST_P(ExitObserved, ManyChildrenEachReportedOnceWithTheirCode) {
  std::vector<InstanceHandle> handles;
  for (int i = 0; i < 12; ++i) {
    auto handle = f_.backend->spawn_instance(child_config("batch", {"sleep", "0.05", "exit", std::to_string(i)}));
    ASSERT_TRUE(handle) << handle.error();
    handles.push_back(*handle);
  }
  for (int i = 0; i < 12; ++i) {
    auto status = exits_.wait_for(handles[i].instance_id);
    ASSERT_TRUE(status) << i;
    EXPECT_EQ(status->code, i);
  }
  EXPECT_TRUE(f_.backend->list_instances("batch")->empty());
  for (const auto& handle : handles) EXPECT_EQ(exits_.count(handle.instance_id), 1u);
#ifndef _WIN32
  EXPECT_TRUE(zombie_children().empty());
#endif
}

TEST_P(ExitObserved, StoppedChildIsReportedOnceToo) {
  auto handle = f_.backend->spawn_instance(child_config("stopped", {"sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  auto stopped = f_.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  auto status = exits_.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ(status->kind, (*stopped)->kind);
  EXPECT_EQ(status->code, (*stopped)->code);
  EXPECT_EQ(exits_.count(handle->instance_id), 1u);
}

INSTANTIATE_TEST_SUITE_P(Monitors, ExitObserved, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? std::string("Pidfd") : std::string("WaiterThread");
                         });

TEST(ExitCallback, MayRespawnFromTheCallback) {
  // on_exit runs with no lock held: spawning from it must work.
  std::atomic<int> respawned{0};
  std::mutex mutex;
  std::vector<std::string> ids;
  LocalProcessBackend* backend = nullptr;
  LocalProcessOptions options = Fixture::fast_options();
  options.on_exit = [&](const InstanceHandle& handle, const ExitStatus&) {
    if (handle.module != "phoenix" || respawned.fetch_add(1) >= 2) return;
    auto again = backend->spawn_instance(child_config("phoenix", {"exit", "1"}));
    EXPECT_TRUE(again) << again.error();
    if (again) {
      std::lock_guard<std::mutex> lock(mutex);
      ids.push_back(again->instance_id);
    }
  };
  Fixture f(options);
  backend = f.backend.get();
  ASSERT_TRUE(f.backend->spawn_instance(child_config("phoenix", {"exit", "1"})));
  auto until = Clock::now() + std::chrono::seconds(10);
  while (respawned.load() < 3 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_GE(respawned.load(), 3);
}

}  // namespace
