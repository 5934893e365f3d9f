// Faults of the child (POSIX): it ignores SIGTERM, dies by a signal, exits
// before spawn returns, closes its stdout early, floods its output, writes one
// endless line or invalid UTF-8, or leaves a grandchild holding its pipes.
#ifndef _WIN32

#include <gtest/gtest.h>
#include <signal.h>

#include <string>
#include <thread>

#include "reliability_support.hpp"
#include "test_support.hpp"

using namespace modkit;
using namespace modkit::testing;

namespace {

struct CountingFixture {
  explicit CountingFixture(LocalProcessOptions options = Fixture::fast_options()) {
    options.on_exit = exits.callback();
    backend = std::make_unique<LocalProcessBackend>(token, sink, std::move(options));
  }
  CancellationToken token;
  std::shared_ptr<CountingSink> sink = std::make_shared<CountingSink>();
  ExitLog exits;
  std::unique_ptr<LocalProcessBackend> backend;
};

// The number after `prefix` in the first stdout line that starts with it.
pid_t pid_from_line(const CollectingSink& sink, const std::string& instance_id, const std::string& prefix) {
  for (const auto& line : sink.lines(instance_id, LogStream::Stdout)) {
    if (line.compare(0, prefix.size(), prefix) == 0) return static_cast<pid_t>(std::atol(line.c_str() + prefix.size()));
  }
  return 0;
}

}  // namespace

TEST(ChildFaults, IgnoresSigtermIsKilledAfterGrace) {
  Fixture f;  // stop_grace 500 ms
  auto handle = f.backend->spawn_instance(child_config("stubborn", {"ignore-term", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "ignoring SIGTERM"));
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double took = seconds_since(start);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ((*stopped)->code, SIGKILL);
  EXPECT_TRUE((*stopped)->forced);
  EXPECT_GE(took, 0.45);
  EXPECT_LT(took, 0.5 + 3.0);
  EXPECT_FALSE(process_alive(static_cast<pid_t>(*handle->pid)));
  EXPECT_EQ(zombie_children(), 0);
}

TEST(ChildFaults, DiesBySignal) {
  CountingFixture f;
  // Not SIGSEGV or SIGBUS: a sanitized test child catches those and exits(1).
  for (int signal_number : {SIGKILL, SIGUSR1, SIGHUP, SIGTERM}) {
    auto handle = f.backend->spawn_instance(child_config("suicidal", {"sleep", "0.05", "raise", std::to_string(signal_number), "sleep", "30"}));
    ASSERT_TRUE(handle) << handle.error();
    auto status = f.exits.wait_for(handle->instance_id);
    ASSERT_TRUE(status) << "no exit reported for signal " << signal_number;
    EXPECT_EQ(status->kind, ExitStatus::Kind::Signaled);
    EXPECT_EQ(status->code, signal_number);
    EXPECT_FALSE(status->forced);
    // Already gone: stop is not an error, and gives nothing or the same status.
    auto stopped = f.backend->stop_instance(*handle);
    ASSERT_TRUE(stopped);
    if (stopped->has_value()) {
      EXPECT_EQ((*stopped)->code, signal_number);
    }
  }
  EXPECT_TRUE(f.sink->has_event_containing("killed by signal"));
  EXPECT_EQ(f.backend->list_instances("suicidal")->size(), 0u);
}

// The child is gone before (or while) spawn_instance returns; its output must
// still be delivered in full, its exit reported exactly once, and a stop right
// after spawn must be harmless. Run many times to hit the races.
TEST(ChildFaults, ExitsBeforeSpawnReturns) {
  CountingFixture f;
  const int kRounds = scaled_rounds(200);
  std::vector<std::string> ids;
  for (int round = 0; round < kRounds; ++round) {
    auto handle = f.backend->spawn_instance(child_config("brief", {"lines", "7", "stderr-lines", "2", "exit", "3"}));
    ASSERT_TRUE(handle) << handle.error();
    ids.push_back(handle->instance_id);
    if (round % 2 == 0) {
      auto stopped = f.backend->stop_instance(*handle);
      ASSERT_TRUE(stopped) << stopped.error();
      if (stopped->has_value() && (*stopped)->kind == ExitStatus::Kind::Exited) {
        EXPECT_EQ((*stopped)->code, 3);
      }
    }
  }
  for (const auto& id : ids) ASSERT_TRUE(f.exits.wait_for(id)) << id;
  f.backend.reset();  // joins everything: all output is in
  EXPECT_EQ(f.exits.count(), static_cast<std::size_t>(kRounds));
  for (const auto& id : ids) EXPECT_EQ(f.exits.count_for(id), 1u);
  // Rounds that were stopped may have been killed before writing; the others
  // exited on their own and every line arrived.
  EXPECT_GE(f.sink->out().lines.load(), 7u * (kRounds / 2));
  EXPECT_GE(f.sink->err().lines.load(), 2u * (kRounds / 2));
  EXPECT_EQ(zombie_children(), 0);
}

TEST(ChildFaults, ExitsBeforeSpawnReturnsOutputComplete) {
  Fixture f;
  const int rounds = scaled_rounds(100);
  for (int round = 0; round < rounds; ++round) {
    auto handle = f.backend->spawn_instance(child_config("brief", {"lines", "20", "exit", "0"}));
    ASSERT_TRUE(handle) << handle.error();
    // Let it exit on its own, then stop: stop returns once drained.
    ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
      return r.instance_id == handle->instance_id && r.stream == LogStream::Library && r.line == "exited with code 0";
    }));
    auto stopped = f.backend->stop_instance(*handle);
    ASSERT_TRUE(stopped);
    auto lines = f.sink->lines(handle->instance_id, LogStream::Stdout);
    ASSERT_EQ(lines.size(), 20u) << "round " << round;
    EXPECT_EQ(lines.back(), "line 20");
  }
}

TEST(ChildFaults, ClosesStdoutEarly) {
  Fixture f;
  auto handle = f.backend->spawn_instance(
      child_config("mute", {"say", "before", "close-stdout", "sleep", "0.3", "stderr-lines", "3", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "err 3"));
  EXPECT_EQ(f.sink->lines(handle->instance_id, LogStream::Stdout), std::vector<std::string>{"before"});
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ((*stopped)->code, SIGTERM);
  EXPECT_LT(seconds_since(start), 0.5);
}

TEST(ChildFaults, ClosesStdoutEarlyAndExits) {
  CountingFixture f;
  auto handle = f.backend->spawn_instance(child_config("mute", {"close-stdout", "stderr-lines", "5", "exit", "0"}));
  ASSERT_TRUE(handle) << handle.error();
  auto status = f.exits.wait_for(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success());
  ASSERT_TRUE(f.backend->stop_instance(*handle));
  EXPECT_EQ(f.sink->err().lines.load(), 5u);
  EXPECT_EQ(f.sink->out().lines.load(), 0u);
}

// 200 MB of 100-byte lines: every line reaches the sink.
TEST(ChildFaults, Floods200MegabytesAllDelivered) {
  CountingFixture f;
  constexpr long kLines = 2 * 1024 * 1024;
  constexpr long kLength = 100;  // newline included
  f.sink->set_check_utf8(false);
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(
      child_config("flood", {"flood", std::to_string(kLines), std::to_string(kLength), "exit", "0"}));
  ASSERT_TRUE(handle) << handle.error();
  auto status = f.exits.wait_for(handle->instance_id, std::chrono::seconds(100));
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success());
  ASSERT_TRUE(f.backend->stop_instance(*handle));  // returns once drained
  double took = seconds_since(start);
  EXPECT_EQ(f.sink->out().lines.load(), static_cast<std::uint64_t>(kLines));
  EXPECT_EQ(f.sink->out().records.load(), static_cast<std::uint64_t>(kLines));
  EXPECT_EQ(f.sink->out().bytes.load(), static_cast<std::uint64_t>(kLines * (kLength - 1)));
  EXPECT_EQ(f.sink->out().longest.load(), static_cast<std::size_t>(kLength - 1));
  std::printf("[ figures  ] 200 MB flood delivered in %.2f s (%.0f MB/s)\n", took, 200.0 / took);
}

// 50 MB without a newline: delivered in max_line_bytes pieces as one line,
// and the host's resident memory does not grow with it.
TEST(ChildFaults, FiftyMegabytesWithoutNewlineMemoryBounded) {
  CountingFixture f;
  f.sink->set_check_utf8(false);
  constexpr long kBytes = 50L * 1024 * 1024;
  bool peak_reset = reset_peak_rss();
  long rss_before = self_status_field("VmRSS");
  long hwm_before = self_status_field("VmHWM");
  auto handle = f.backend->spawn_instance(child_config("endless", {"huge-raw", std::to_string(kBytes), "exit", "0"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.exits.wait_for(handle->instance_id, std::chrono::seconds(60)));
  ASSERT_TRUE(f.backend->stop_instance(*handle));
  long hwm_after = self_status_field("VmHWM");
  long rss_after = self_status_field("VmRSS");
  EXPECT_EQ(f.sink->out().bytes.load(), static_cast<std::uint64_t>(kBytes));
  EXPECT_EQ(f.sink->out().lines.load(), 1u) << "one line, delivered in continuation pieces";
  const std::size_t max_line = Fixture::fast_options().max_line_bytes;
  EXPECT_EQ(f.sink->out().longest.load(), max_line);
  EXPECT_EQ(f.sink->out().records.load(), (kBytes + max_line - 1) / max_line);
  // Generous: buffering the line would grow by 50 MB or more.
  long growth_kb = (peak_reset ? hwm_after - hwm_before : rss_after - rss_before);
  std::printf("[ figures  ] 50 MB line: VmRSS %ld -> %ld kB, VmHWM %ld -> %ld kB (peak reset: %s)\n", rss_before,
              rss_after, hwm_before, hwm_after, peak_reset ? "yes" : "no");
  EXPECT_LT(growth_kb, 24 * 1024) << "host memory grew with the unterminated line";
}

TEST(ChildFaults, InvalidUtf8IsRepaired) {
  Fixture f;
  // Random bytes (no NUL) as an argument, echoed back by the child.
  std::string noise;
  unsigned state = 12345;
  for (int i = 0; i < 4000; ++i) {
    state = state * 1103515245u + 12345u;
    char c = static_cast<char>((state >> 16) & 0xFF);
    if (c == '\0' || c == '\n') c = '\xC3';
    noise.push_back(c);
  }
  auto handle = f.backend->spawn_instance(child_config("garbled", {"invalid-utf8", "say", noise, "exit", "0"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.stream == LogStream::Library && r.line == "exited with code 0";
  }));
  ASSERT_TRUE(f.backend->stop_instance(*handle));
  auto lines = f.sink->lines(handle->instance_id, LogStream::Stdout);
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines[0], "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes \xEF\xBF\xBD( end");
  std::size_t total = 0;
  for (const auto& line : lines) {
    EXPECT_TRUE(is_valid_utf8(line));
    total += line.size();
  }
  EXPECT_GE(total, noise.size() / 2);
}

// A grandchild in the child's process group that ignores SIGTERM and keeps the
// pipes: stop returns within grace + drain, and the grandchild is killed.
TEST(ChildFaults, GrandchildInGroupHoldingPipesIsKilled) {
  Fixture f;
  auto options = Fixture::fast_options();
  auto handle = f.backend->spawn_instance(child_config("parent", {"grandchild", "30", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.line.rfind("grandchild ", 0) == 0;
  }));
  pid_t grandchild = pid_from_line(*f.sink, handle->instance_id, "grandchild ");
  ASSERT_GT(grandchild, 0);
  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double took = seconds_since(start);
  ASSERT_TRUE(stopped);
  double bound = std::chrono::duration<double>(options.stop_grace + options.drain_timeout).count();
  EXPECT_LT(took, bound + 2.0);
  EXPECT_TRUE(wait_gone(grandchild, std::chrono::seconds(2))) << "grandchild " << grandchild << " survived stop";
}

// A daemon grandchild (setsid: its own session and process group) holding the
// pipes. stop must still return within grace + drain, and the escapee, found
// through the pipes it holds (containment off: with it, the cgroup ends it),
// is gone.
TEST(ChildFaults, DaemonGrandchildHoldingPipesStopIsBounded) {
  auto options = Fixture::fast_options();
  options.containment = Containment::Off;
  Fixture f(options);
  auto handle = f.backend->spawn_instance(child_config("daemonizer", {"daemon", "30", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.line.rfind("daemon ", 0) == 0;
  }));
  pid_t daemon = pid_from_line(*f.sink, handle->instance_id, "daemon ");
  ASSERT_GT(daemon, 0);
  ProcInfo info;
  ASSERT_TRUE(read_proc(daemon, info));
  EXPECT_NE(info.pgrp, static_cast<pid_t>(*handle->pid)) << "the daemon should have left the group";

  auto start = Clock::now();
  auto stopped = f.backend->stop_instance(*handle);
  double took = seconds_since(start);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  double bound = std::chrono::duration<double>(options.stop_grace + options.drain_timeout).count();
  EXPECT_LT(took, bound + 2.0) << "stop blocked on pipes held by the daemon";
  EXPECT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.line.find("outside it holding the output") != std::string::npos;
  }, std::chrono::seconds(1)));
  bool gone = wait_gone(daemon, std::chrono::seconds(2));
  std::printf("[ figures  ] setsid daemon: stop took %.2f s (bound %.2f s); daemon %s after stop\n", took, bound,
              gone ? "gone" : "STILL ALIVE");
  EXPECT_TRUE(gone) << "modkit should kill the escapee holding the module's pipes";
  if (!gone) kill(daemon, SIGKILL);
  // The backend's destructor does not wait for the escapee either.
  start = Clock::now();
  f.backend.reset();
  EXPECT_LT(seconds_since(start), 2.0);
}

#endif  // !_WIN32
