// stop_instance: graceful step, grace, escalation, concurrency, odd handles.
// Timed assertions are generous bounds that prove a property, not benchmarks.
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

LocalProcessOptions with_stop_grace(std::chrono::milliseconds grace) {
  LocalProcessOptions options = Fixture::fast_options();
  options.stop_grace = grace;
  return options;
}

#ifndef _WIN32
TEST(Stop, CooperativeChildStopsQuicklyWithItsStatus) {
  Fixture f(with_stop_grace(2000ms));
  auto handle = f.backend->spawn_instance(child_config("polite", {"say", "up", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "up"));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double elapsed = seconds_since(start);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ((*stopped)->code, SIGTERM);
  EXPECT_FALSE((*stopped)->forced);
  EXPECT_LT(elapsed, 2.0) << "a child that obeys SIGTERM must not wait out the grace";
  EXPECT_TRUE(f.backend->list_instances("polite")->empty());
  EXPECT_TRUE(zombie_children().empty());
  EXPECT_FALSE(contains(library_events(*f.sink, handle->instance_id), "SIGKILL"));
}

TEST(Stop, StubbornChildIsKilledAfterTheGrace) {
  Fixture f(with_stop_grace(500ms));
  auto handle = f.backend->spawn_instance(child_config("stubborn", {"ignore-term", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "ignoring SIGTERM"));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double elapsed = seconds_since(start);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ((*stopped)->code, SIGKILL);
  EXPECT_TRUE((*stopped)->forced);
  EXPECT_GE(elapsed, 0.45) << "killed before the grace ran out";
  EXPECT_LT(elapsed, 0.5 * 3) << "escalation took far longer than the grace";
  EXPECT_TRUE(contains(library_events(*f.sink, handle->instance_id), "grace period expired: killed the process group"));
  EXPECT_TRUE(zombie_children().empty());
}

TEST(Stop, ConcurrentStopsOfOneHandleAllSucceedWithinOneGrace) {
  Fixture f(with_stop_grace(500ms));
  auto handle = f.backend->spawn_instance(child_config("stubborn", {"ignore-term", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "ignoring SIGTERM"));
  constexpr int kThreads = 8;
  std::vector<Result<std::optional<ExitStatus>>> results(kThreads, std::optional<ExitStatus>());
  std::vector<std::thread> threads;
  auto start = Clock::now();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { results[t] = f.backend->stop_instance(*handle); });
  }
  for (auto& thread : threads) thread.join();
  double elapsed = seconds_since(start);
  int with_status = 0;
  for (const auto& result : results) {
    ASSERT_TRUE(result) << result.error();
    if (!result->has_value()) continue;  // came after the instance was gone: fine
    ++with_status;
    EXPECT_EQ((*result)->kind, ExitStatus::Kind::Signaled);
    EXPECT_EQ((*result)->code, SIGKILL);
    EXPECT_TRUE((*result)->forced);
  }
  EXPECT_GE(with_status, 1);
  EXPECT_LT(elapsed, 0.5 * 3) << "concurrent stops must share one grace";
  std::size_t escalations = 0;
  for (const auto& line : library_events(*f.sink, handle->instance_id)) {
    escalations += line.find("grace period expired: killed the process group") != std::string::npos ? 1 : 0;
  }
  EXPECT_EQ(escalations, 1u);
  EXPECT_TRUE(zombie_children().empty());
}

TEST(Stop, ConcurrentStopsOfACooperativeChild) {
  Fixture f(with_stop_grace(2000ms));
  auto handle = f.backend->spawn_instance(child_config("polite", {"say", "up", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "up"));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  auto start = Clock::now();
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      auto result = f.backend->stop_instance(*handle);
      if (!result || (result->has_value() && (*result)->code != SIGTERM)) ++failures;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LT(seconds_since(start), 2.0);
}

TEST(Stop, KillsGrandchildrenToo) {
  Fixture f(with_stop_grace(500ms));
  // The child exits on SIGTERM; its grandchild ignores SIGTERM and holds the pipes.
  auto handle = f.backend->spawn_instance(child_config("family", {"grandchild", "30", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.line.rfind("grandchild ", 0) == 0;
  }));
  pid_t grandchild = std::stoi(f.sink->lines(handle->instance_id, LogStream::Stdout).at(0).substr(11));
  ASSERT_TRUE(running(grandchild));
  ProcInfo info;
  ASSERT_TRUE(read_proc(grandchild, info));
  EXPECT_EQ(info.pgid, static_cast<pid_t>(*handle->pid)) << "the grandchild is in the child's group";
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped) << stopped.error();
  EXPECT_LT(seconds_since(start), 0.5 * 3);
  EXPECT_TRUE(wait_not_running(grandchild, 2000ms)) << "grandchild " << grandchild << " survived the stop";
}

// Without containment the escapee is found through the pipes it holds (the
// contained case is in tests/regression/containment_test.cpp).
TEST(Stop, DescendantOutsideTheGroupCannotBlockStopForever) {
  LocalProcessOptions options = with_stop_grace(300ms);
  options.drain_timeout = 300ms;
  options.containment = Containment::Off;
  Fixture f(options);
  // A daemon (own session) keeps the pipes open after the child is gone.
  auto handle = f.backend->spawn_instance(child_config("daemonizer", {"daemon", "20", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.line.rfind("daemon ", 0) == 0;
  }));
  pid_t daemon = std::stoi(f.sink->lines(handle->instance_id, LogStream::Stdout).at(0).substr(7));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double elapsed = seconds_since(start);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->code, SIGTERM);
  EXPECT_LT(elapsed, (0.3 + 0.3) * 3) << "bounded by the grace plus the drain timeout";
  // The escapee held the module's pipes, so it was found and killed.
  EXPECT_TRUE(contains(library_events(*f.sink, handle->instance_id), "outside it holding the output"))
      << ::testing::PrintToString(library_events(*f.sink, handle->instance_id));
  bool gone = wait_not_running(daemon, 2s);
  EXPECT_TRUE(gone) << "the setsid daemon holding the pipes outlived stop";
  if (!gone) kill(daemon, SIGKILL);
}
#endif

TEST(Stop, StoppingAnExitedHandleSucceeds) {
  ExitLog exits;
  Fixture f(options_with(exits));
  auto handle = f.backend->spawn_instance(child_config("gone", {"exit", "5"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(exits.wait_for(handle->instance_id));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped) << stopped.error();
  if (stopped->has_value()) {  // still draining when stopped: then its real status
    EXPECT_EQ((*stopped)->code, 5);
    EXPECT_FALSE((*stopped)->forced);
  }
  auto again = f.backend->stop_instance(*handle);
  ASSERT_TRUE(again) << again.error();
  EXPECT_LT(seconds_since(start), 0.5);
  EXPECT_EQ(exits.count(handle->instance_id), 1u);
}

TEST(Stop, SecondStopOfAStoppedHandleSucceeds) {
  Fixture f;
  auto handle = f.backend->spawn_instance(child_config("twice", {"sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.backend->stop_instance(*handle));
  auto again = f.backend->stop_instance(*handle);
  ASSERT_TRUE(again) << again.error();
}

TEST(Stop, CloseStdinIsTheGracefulStep) {
  Fixture f(with_stop_grace(2000ms));
  OopModuleConfig config = child_config("reader", {"fd-target", "0", "read-stdin", "say", "clean exit"});
  config.graceful_stop = GracefulStop::CloseStdin;
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.stream == LogStream::Stdout;
  }));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double elapsed = seconds_since(start);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_TRUE((*stopped)->success()) << **stopped;
  EXPECT_FALSE((*stopped)->forced);
  EXPECT_LT(elapsed, 2.0);
  auto out = f.sink->lines(handle->instance_id, LogStream::Stdout);
  ASSERT_EQ(out.size(), 3u);
#ifndef _WIN32
  EXPECT_EQ(out[0].rfind("fd 0 -> pipe:", 0), 0u) << out[0];
#endif
  EXPECT_EQ(out[1], "stdin eof after 0 bytes");
  EXPECT_EQ(out[2], "clean exit");
}

TEST(Stop, GracefulNoneKillsAtOnce) {
  Fixture f(with_stop_grace(2000ms));
  OopModuleConfig config = child_config("doomed", {"say", "up", "sleep", "30"});
  config.graceful_stop = GracefulStop::None;
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "up"));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double elapsed = seconds_since(start);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
#ifndef _WIN32
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ((*stopped)->code, SIGKILL);
#endif
  EXPECT_TRUE((*stopped)->forced);
  EXPECT_LT(elapsed, 1.0) << "no graceful step means no grace to wait out";
  EXPECT_TRUE(contains(library_events(*f.sink, handle->instance_id), "no graceful step"));
}

}  // namespace
