// The notification descriptor on POSIX: descriptor 3 of the module that
// asked for it, of no other; the host's own MODKIT_NOTIFY_FD is not passed on.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "../behaviour/behaviour_support.hpp"

namespace modkit::testing::behaviour {
namespace {

TEST(ReadinessDescriptor, OnlyTheModuleThatAskedGetsOne) {
  // As if this host were itself a module with a notification descriptor.
  ASSERT_EQ(setenv("MODKIT_NOTIFY_FD", "3", 1), 0);
  ASSERT_EQ(setenv("MODKIT_WATCHDOG_MS", "1000", 1), 0);
  Fixture f;
  OopModuleConfig with = child_config("with", {"fd-target", "3", "notify", "READY=1", "sleep", "5"});
  with.readiness.mode = Readiness::Mode::Notify;
  auto a = f.backend->spawn_instance(with);
  ASSERT_TRUE(a) << a.error();
  auto b = run_to_end(f, child_config("without", {"fd-target", "3", "notify-env", "notify", "READY=1"}));
  unsetenv("MODKIT_NOTIFY_FD");
  unsetenv("MODKIT_WATCHDOG_MS");
  ASSERT_TRUE(b.ok);
  ASSERT_EQ(b.out.size(), 2u);
  EXPECT_EQ(b.out[0], "fd 3 -> closed");
  EXPECT_EQ(b.out[1], "notify-env unset watchdog unset");
  EXPECT_TRUE(contains(b.err, "notify: cannot write"));
  ASSERT_TRUE(f.sink->wait_for_line(a->instance_id, "fd 3 -> pipe:", std::chrono::milliseconds(0)) ||
              f.sink->wait_for([&](const StoredRecord& r) {
                return r.instance_id == a->instance_id && r.line.rfind("fd 3 -> pipe:[", 0) == 0;
              }));
  ASSERT_TRUE(f.backend->stop_instance(*a));
}

TEST(ReadinessDescriptor, AModuleWithoutAWatchdogGetsNoInterval) {
  ASSERT_EQ(setenv("MODKIT_WATCHDOG_MS", "1000", 1), 0);
  Fixture f;
  OopModuleConfig config = child_config("nodog", {"notify-env", "notify", "READY=1"});
  config.readiness.mode = Readiness::Mode::Notify;
  auto run = run_to_end(f, config);
  unsetenv("MODKIT_WATCHDOG_MS");
  ASSERT_TRUE(run.ok);
  ASSERT_FALSE(run.out.empty());
  EXPECT_EQ(run.out[0], "notify-env 3 watchdog unset");
}

TEST(ReadinessDescriptor, WorksWithTheWaiterThreadMonitorToo) {
  LocalProcessOptions options = Fixture::fast_options();
  options.use_pidfd = false;
  Fixture f(options);
  OopModuleConfig config = child_config("waiter", {"sleep", "0.2", "notify", "READY=1", "sleep", "5"});
  config.readiness.mode = Readiness::Mode::Notify;
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_GE(seconds_since(start), 0.2);
  ASSERT_TRUE(f.backend->stop_instance(*handle));
  OopModuleConfig quick = child_config("waiter", {"notify", "READY=1", "exit", "0"});
  quick.readiness.mode = Readiness::Mode::Notify;
  for (int round = 0; round < 10; ++round) {
    auto ready = f.backend->spawn_instance(quick);
    ASSERT_TRUE(ready) << ready.error();
  }
  OopModuleConfig closer = child_config("waiter", {"notify-close", "sleep", "30"});
  closer.readiness.mode = Readiness::Mode::Notify;
  auto closed = f.backend->spawn_instance(closer);
  ASSERT_FALSE(closed);
  EXPECT_EQ(closed.error().code, std::make_error_code(std::errc::broken_pipe));
}

}  // namespace
}  // namespace modkit::testing::behaviour
