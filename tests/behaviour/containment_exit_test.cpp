// A contained instance ends when nothing it started is left (Linux). What
// the module leaves running after a natural exit gets drain_timeout to end by
// itself, then is killed; what ends by itself is noticed at once through
// cgroup.events, with either exit monitor (pidfd epoll, or waiter threads).
#ifndef _WIN32

#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>

#include <functional>
#include <string>
#include <thread>

#include "behaviour_support.hpp"
#include "../posix/process_probe.hpp"
#include "test_cgroup.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::behaviour;
using namespace modkit::testing::probe;
using namespace std::chrono_literals;

namespace {

std::string read_comm(pid_t pid) {
  std::string comm = read_text_file("/proc/" + std::to_string(pid) + "/comm");
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
}

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

class ContainedExit : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!parent_) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  }
  LocalProcessOptions options() {
    LocalProcessOptions result = options_with(exits_, GetParam());
    result.cgroup_parent = parent_.path();
    result.containment = Containment::Required;
    result.drain_timeout = 1000ms;
    return result;
  }
  static OopModuleConfig shell(const std::string& name, const std::string& script) {
    OopModuleConfig config(name, BackendKind::LocalProcess);
    config.binary = "/bin/sh";
    config.args = {"-c", script};
    return config;
  }

  TestCgroupParent parent_;
  ExitLog exits_;
};

TEST_P(ContainedExit, DaemonLeftAfterANaturalExitIsKilledAfterTheDrainTimeout) {
  Fixture f(options());
  // The module starts a daemon in a session of its own with no output pipes,
  // says its pid and exits 0 at once.
  auto handle = f.backend->spawn_instance(
      shell("leaver", "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $!; exit 0"));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.stream == LogStream::Stdout;
  }));
  auto said = Clock::now();
  pid_t daemon = std::stoi(f.sink->lines(handle->instance_id, LogStream::Stdout).at(0));
  ASSERT_TRUE(wait_until([&] { return read_comm(daemon) == "sleep"; }, 2000ms)) << "the daemon never started";
  // Once the module itself has gone, the daemon alone is left, and the
  // instance is not over while it runs.
  EXPECT_TRUE(wait_until(
      [&] {
        auto listed = f.backend->list_instances("leaver");
        return listed && listed->size() == 1 && listed->front().processes == std::optional<std::int64_t>(1);
      },
      500ms));

  auto status = exits_.wait_for(handle->instance_id, 5s);
  double waited = seconds_since(said);
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success()) << "the module's own exit code is reported";
  EXPECT_GE(waited, 0.8) << "the daemon was not given drain_timeout to end by itself";
  EXPECT_LT(waited, 1.0 * 3) << "not ended within the bound";
  EXPECT_TRUE(wait_not_running(daemon, 2000ms)) << "daemon " << daemon << " outlived the instance";
  EXPECT_TRUE(contains(library_events(*f.sink, handle->instance_id), "processes of the instance still running"))
      << ::testing::PrintToString(library_events(*f.sink, handle->instance_id));
  EXPECT_TRUE(zombie_children().empty());
}

TEST_P(ContainedExit, DescendantThatEndsByItselfIsNoticedAtOnce) {
  Fixture f(options());
  // A background job of the module that ends 0.2 s after the module exited:
  // the cgroup empties then, and that must end the instance (not the drain
  // timeout, 1 s, and nothing is killed).
  auto handle = f.backend->spawn_instance(shell("short", "sleep 0.2 </dev/null >/dev/null 2>&1 & exit 0"));
  ASSERT_TRUE(handle) << handle.error();
  auto spawned = Clock::now();
  auto status = exits_.wait_for(handle->instance_id, 5s);
  double waited = seconds_since(spawned);
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success());
  EXPECT_GE(waited, 0.15) << "the instance ended while its descendant still ran";
  EXPECT_LT(waited, 0.8) << "the empty cgroup went unnoticed until the drain timeout";
  EXPECT_FALSE(contains(library_events(*f.sink, handle->instance_id), "still running"))
      << ::testing::PrintToString(library_events(*f.sink, handle->instance_id));
}

// A module allowed to write cgroupfs (root here) makes cgroups inside its
// own and moves a SIGTERM-ignoring daemon there: still counted, still ended
// by the stop, and every directory removed.
TEST_P(ContainedExit, CgroupsTheModuleMadeInsideItsOwnAreCountedEndedAndRemoved) {
  Fixture f(options());
  auto config = shell("nester",
                      "cg=$CGMOUNT$(sed -n 's/^0:://p' /proc/self/cgroup); mkdir -p \"$cg/inner/deeper\" || exit 9; "
                      "setsid sh -c 'echo 0 > \"$1/cgroup.procs\"; trap \"\" TERM; exec sleep 30' sh "
                      "\"$cg/inner/deeper\" </dev/null >/dev/null 2>&1 & echo $!; exec sleep 30");
  config.env["CGMOUNT"] = cgroup2_mount();
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.stream == LogStream::Stdout;
  }));
  pid_t daemon = std::stoi(f.sink->lines(handle->instance_id, LogStream::Stdout).at(0));
  ASSERT_TRUE(wait_until([&] { return read_comm(daemon) == "sleep"; }, 2000ms));
  ASSERT_TRUE(wait_until(
      [&] {
        auto listed = f.backend->list_instances("nester");
        return listed && listed->size() == 1 && listed->front().processes == std::optional<std::int64_t>(2);
      },
      2000ms))
      << "the module and the daemon in the cgroup it made are both the instance's";
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped) << stopped.error();
  EXPECT_LT(seconds_since(start), 3.0);
  EXPECT_TRUE(wait_not_running(daemon, 2000ms)) << "the daemon in the nested cgroup outlived the stop";
  f.backend.reset();
  EXPECT_TRUE(parent_.descendants().empty()) << parent_.descendants().size() << " director(ies) left";
}

// A module nesting cgroups deeper than modkit walks is stopped at the limit
// by the kernel (the backend's cgroup.max.depth), and everything it made is
// removed with the instance.
TEST_P(ContainedExit, NestingIsBoundedAndEveryLevelIsRemoved) {
  Fixture f(options());
  std::string deep;
  for (int level = 0; level < 24; ++level) deep += "/d";
  auto config = shell("deep", "cg=$CGMOUNT$(sed -n 's/^0:://p' /proc/self/cgroup); mkdir -p \"$cg" + deep +
                                  "\" 2>/dev/null; echo mkdir $?; exit 0");
  config.env["CGMOUNT"] = cgroup2_mount();
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  auto status = exits_.wait_for(handle->instance_id, 5s);
  ASSERT_TRUE(status);
  auto said = f.sink->lines(handle->instance_id, LogStream::Stdout);
  ASSERT_EQ(said.size(), 1u);
  EXPECT_NE(said[0], "mkdir 0") << "24 levels were allowed";
  f.backend.reset();
  EXPECT_TRUE(parent_.descendants().empty()) << parent_.descendants().size() << " director(ies) left";
}

// At the descriptor limit a stop still ends every process of the instance:
// what the kill needs was opened when the instance was made.
TEST_P(ContainedExit, StopAtTheDescriptorLimitStillEndsTheWholeCgroup) {
  Fixture f(options());
  // One whole instance first: warms UBSan's vptr cache for every call the
  // stop makes, as its check of a new type needs a pipe (none at the limit).
  auto warm = f.backend->spawn_instance(shell("warm-up", "exit 0"));
  ASSERT_TRUE(warm) << warm.error();
  ASSERT_TRUE(exits_.wait_for(warm->instance_id, 5s));
  auto handle = f.backend->spawn_instance(
      shell("limited", "setsid sh -c 'trap \"\" TERM; exec sleep 30' </dev/null >/dev/null 2>&1 & echo $!; exec sleep 30"));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.stream == LogStream::Stdout;
  }));
  pid_t daemon = std::stoi(f.sink->lines(handle->instance_id, LogStream::Stdout).at(0));
  ASSERT_TRUE(wait_until([&] { return read_comm(daemon) == "sleep"; }, 2000ms));
  std::vector<int> hoard;
  for (;;) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    hoard.push_back(fd);
    if (hoard.size() > 1000000) break;
  }
  auto stopped = f.backend->stop_instance(*handle);
  for (int fd : hoard) close(fd);
  ASSERT_TRUE(stopped) << stopped.error();
  EXPECT_TRUE(wait_not_running(daemon, 2000ms)) << "the daemon outlived a stop made at the descriptor limit";
  f.backend.reset();
  EXPECT_TRUE(parent_.descendants().empty());
}

INSTANTIATE_TEST_SUITE_P(Monitors, ContainedExit, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& param_info) {
                           return param_info.param ? std::string("Pidfd") : std::string("WaiterThread");
                         });

}  // namespace

#endif  // !_WIN32
