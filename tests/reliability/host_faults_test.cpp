// Faults of the host (POSIX): out of descriptors, a huge descriptor limit,
// odd signal dispositions and masks, and signals arriving while it spawns and
// stops.
#ifndef _WIN32

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <thread>

#include "reliability_support.hpp"
#include "test_support.hpp"

using namespace modkit;
using namespace modkit::testing;

namespace {

// Restores RLIMIT_NOFILE when the test ends, however it ends.
class NofileGuard {
 public:
  NofileGuard() { getrlimit(RLIMIT_NOFILE, &saved_); }
  ~NofileGuard() { setrlimit(RLIMIT_NOFILE, &saved_); }
  const rlimit& saved() const { return saved_; }

 private:
  rlimit saved_{};
};

bool descriptor_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

// The RLIMIT_NOFILE soft limit that leaves exactly `free_slots` descriptor
// numbers free (the kernel hands out the lowest free number below the limit;
// descriptors already open above it stay usable).
rlim_t limit_with_free_slots(int free_slots) {
  int seen = 0;
  for (int fd = 0;; ++fd) {
    if (descriptor_open(fd)) continue;
    if (seen == free_slots) return static_cast<rlim_t>(fd);
    ++seen;
  }
}

// The mean time of one spawn_instance (the child exits at once) over `count`.
double mean_spawn_ms(LocalProcessBackend& backend, int count) {
  double total = 0;
  for (int i = 0; i < count; ++i) {
    auto start = Clock::now();
    auto handle = backend.spawn_instance(child_config("timed", {"exit", "0"}));
    total += seconds_since(start);
    if (!handle) {
      ADD_FAILURE() << handle.error();
      return -1;
    }
    EXPECT_TRUE(backend.stop_instance(*handle));
  }
  return total * 1000.0 / count;
}

}  // namespace

// With the soft limit set just above what is open, some step of spawn runs
// out of descriptors. Each headroom is tried, so every step fails once:
// creating the pipes, /dev/null, the eventfd, the pidfd of the exit monitor.
TEST(HostFaults, DescriptorLimitGivesClearErrorAndLeaksNothing) {
  // Threads are counted exactly while the backend lives: no reader is kept
  // idle (how many the pool keeps depends on how the spawns overlapped).
  LocalProcessOptions options = Fixture::fast_options();
  options.idle_readers = 0;
  Fixture f(options);
  // Warm up (lazy allocations, the monitor's thread) before taking the baseline.
  {
    auto handle = f.backend->spawn_instance(child_config("warm", {"exit", "0"}));
    ASSERT_TRUE(handle) << handle.error();
    ASSERT_TRUE(f.backend->stop_instance(*handle));
  }
  HostSnapshot baseline = quiescent_snapshot();
  int failures = 0, successes = 0;
  {
    NofileGuard guard;
    for (int headroom = 0; headroom <= 16; ++headroom) {
      rlimit lowered = guard.saved();
      lowered.rlim_cur = limit_with_free_slots(headroom);
      ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
      auto handle = f.backend->spawn_instance(child_config("starved", {"say", "hello", "sleep", "0.1", "exit", "0"}));
      if (handle) {
        ++successes;
        setrlimit(RLIMIT_NOFILE, &guard.saved());
        auto stopped = f.backend->stop_instance(*handle);
        EXPECT_TRUE(stopped);
        continue;
      }
      ++failures;
      setrlimit(RLIMIT_NOFILE, &guard.saved());
      EXPECT_TRUE(handle.error().code == std::errc::too_many_files_open ||
                  handle.error().code == std::errc::too_many_files_open_in_system)
          << "headroom " << headroom << ": " << handle.error();
      EXPECT_FALSE(handle.error().message.empty());
      std::printf("[ figures  ] headroom %2d: %s\n", headroom, handle.error().message.c_str());
      HostSnapshot now = settle_to(baseline);
      EXPECT_EQ(now.descriptors, baseline.descriptors) << "descriptor leaked at headroom " << headroom;
      EXPECT_EQ(now.threads, baseline.threads) << "thread leaked at headroom " << headroom;
      EXPECT_EQ(zombie_children(), 0);
      EXPECT_TRUE(children_of_self().empty()) << "a child outlived the failed spawn";
    }
  }
  EXPECT_GT(failures, 0);
  EXPECT_GT(successes, 0);
  // The limit is back: spawning works, and nothing is left over.
  auto handle = f.backend->spawn_instance(child_config("after", {"say", "fine", "sleep", "30"}));
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_TRUE(f.sink->wait_for_line(handle->instance_id, "fine"));
  ASSERT_TRUE(f.backend->stop_instance(*handle));
  HostSnapshot now = settle_to(baseline);
  EXPECT_EQ(now.descriptors, baseline.descriptors);
  EXPECT_EQ(now.threads, baseline.threads);
}

// The backend itself created while descriptors are (nearly) exhausted: once
// the limit is back it spawns normally (its exit monitor may have fallen back
// to waiter threads), and nothing leaks. Only the construction runs at the
// limit, after the same construction was done once without the limit: on a
// type it has not seen yet, UBSan's vptr check probes memory through a pipe
// and reports a false "invalid vptr" when it cannot create one.
TEST(HostFaults, BackendCreatedAtDescriptorLimit) {
  HostSnapshot baseline = quiescent_snapshot();
  for (int free_slots = 0; free_slots <= 3; ++free_slots) {
    CancellationToken token;
    auto sink = std::make_shared<CollectingSink>();
    auto options = Fixture::fast_options();
    // Same construction once before the limit, with a record through the
    // sink (at the limit the backend says it could not look for a cgroup):
    // warms UBSan's vptr cache for every type it touches, so no check needs a
    // pipe at the limit.
    {
      auto warm = std::make_unique<LocalProcessBackend>(token, sink, options);
      auto probe = warm->spawn_instance(child_config("warm-up", {"exit", "0"}));
      ASSERT_TRUE(probe) << probe.error();
      EXPECT_TRUE(warm->stop_instance(*probe));
    }
    std::unique_ptr<LocalProcessBackend> backend;
    {
      NofileGuard guard;
      rlimit lowered = guard.saved();
      lowered.rlim_cur = limit_with_free_slots(free_slots);
      ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
      backend = std::make_unique<LocalProcessBackend>(token, sink, options);
    }
    auto handle = backend->spawn_instance(child_config("recovered", {"say", "ok", "exit", "0"}));
    ASSERT_TRUE(handle) << free_slots << " free: " << handle.error();
    EXPECT_TRUE(sink->wait_for_line(handle->instance_id, "ok"));
    EXPECT_TRUE(backend->stop_instance(*handle));
    backend.reset();
    HostSnapshot now = settle_to(baseline);
    EXPECT_EQ(now.descriptors, baseline.descriptors) << free_slots << " free";
    EXPECT_EQ(now.threads, baseline.threads) << free_slots << " free";
  }
}

// Spawn costs the same with RLIMIT_NOFILE at 1,048,576 as at 1024 (no loop
// over the descriptor range). Without CAP_SYS_RESOURCE the hard limit cannot
// be raised: then the highest allowed limit is used. A sanity bound only:
// bench/ has the real numbers.
TEST(HostFaults, HugeDescriptorLimitSpawnNotSlower) {
  NofileGuard guard;
  rlim_t high = 1048576;
  rlimit huge{high, high};
  if (setrlimit(RLIMIT_NOFILE, &huge) != 0) {
    high = guard.saved().rlim_max == RLIM_INFINITY ? 1048576 : std::min<rlim_t>(guard.saved().rlim_max, 1048576);
    huge = rlimit{high, guard.saved().rlim_max};
    if (high < 8192 || setrlimit(RLIMIT_NOFILE, &huge) != 0) GTEST_SKIP() << "cannot raise RLIMIT_NOFILE";
    std::printf("[ figures  ] cannot raise the hard limit to 1048576 (no CAP_SYS_RESOURCE): using %lu\n",
                static_cast<unsigned long>(high));
  }
  Fixture f;
  constexpr int kCount = 100;
  rlimit small{1024, huge.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &small), 0);
  mean_spawn_ms(*f.backend, 10);  // warm up
  double at_1024 = mean_spawn_ms(*f.backend, kCount);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &huge), 0);
  double at_huge = mean_spawn_ms(*f.backend, kCount);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &small), 0);
  double at_1024_again = mean_spawn_ms(*f.backend, kCount);
  std::printf("[ figures  ] mean spawn_instance: %.3f ms at 1024, %.3f ms at %lu, %.3f ms at 1024 again\n", at_1024,
              at_huge, static_cast<unsigned long>(high), at_1024_again);
  double reference = std::min(at_1024, at_1024_again);
  EXPECT_LT(at_huge, reference * 3.0 + 2.0) << "spawn slows down with the descriptor limit";
}

// A host thread that blocks SIGTERM (and others), in a process that ignores
// SIGINT, SIGPIPE and a real-time signal: the child starts with an empty mask
// and no ignored signal.
TEST(HostFaults, ChildGetsDefaultDispositionsAndEmptyMask) {
  Fixture f;
  struct sigaction old_int {}, old_pipe {}, old_rt {}, ignore {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGINT, &ignore, &old_int);
  sigaction(SIGPIPE, &ignore, &old_pipe);
  sigaction(SIGRTMIN + 3, &ignore, &old_rt);  // a real-time signal survives exec ignored too
  std::vector<std::string> lines;
  std::string instance_id;
  std::thread spawner([&] {
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGUSR2);
    sigaddset(&blocked, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
    auto handle = f.backend->spawn_instance(child_config("sigstate", {"sigstate", "exit", "0"}));
    ASSERT_TRUE(handle) << handle.error();
    instance_id = handle->instance_id;
    ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
      return r.instance_id == handle->instance_id && r.line == "exited with code 0";
    }));
    ASSERT_TRUE(f.backend->stop_instance(*handle));
    // The host thread's own mask is untouched by spawning.
    sigset_t now;
    pthread_sigmask(SIG_BLOCK, nullptr, &now);
    EXPECT_TRUE(sigismember(&now, SIGTERM));
  });
  spawner.join();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGPIPE, &old_pipe, nullptr);
  sigaction(SIGRTMIN + 3, &old_rt, nullptr);
  lines = f.sink->lines(instance_id, LogStream::Stdout);
  ASSERT_EQ(lines.size(), 2u);
  for (const auto& line : lines) {
    auto tab = line.find_first_of(" \t");
    ASSERT_NE(tab, std::string::npos) << line;
    std::string value = line.substr(tab);
    value.erase(0, value.find_first_not_of(" \t"));
    EXPECT_EQ(value, "0000000000000000") << line;
  }
}

namespace {
std::atomic<long> g_signals_handled{0};
void count_signal(int) { g_signals_handled.fetch_add(1, std::memory_order_relaxed); }

// Sends `signal_number` to every thread of this process.
void signal_every_thread(int signal_number) {
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    syscall(SYS_tgkill, getpid(), std::atoi(entry->d_name), signal_number);
  }
  closedir(dir);
}
}  // namespace

// A storm of SIGUSR1 (handler without SA_RESTART, so blocking calls fail with
// EINTR) at every thread while instances are spawned, read and stopped.
TEST(HostFaults, SignalsDuringSpawnAndStop) {
  struct sigaction handler {}, previous {};
  handler.sa_handler = count_signal;
  sigemptyset(&handler.sa_mask);
  handler.sa_flags = 0;  // no SA_RESTART
  ASSERT_EQ(sigaction(SIGUSR1, &handler, &previous), 0);
  g_signals_handled = 0;
  {
    Fixture f;
    std::atomic<bool> done{false};
    std::thread storm([&] {
      while (!done.load()) {
        signal_every_thread(SIGUSR1);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
    const int rounds = scaled_rounds(300);
    for (int round = 0; round < rounds; ++round) {
      bool let_exit = round % 3 == 0;
      auto handle = f.backend->spawn_instance(
          child_config("interrupted", let_exit ? std::vector<std::string>{"lines", "30", "exit", "0"}
                                               : std::vector<std::string>{"lines", "30", "sleep", "30"}));
      ASSERT_TRUE(handle) << "round " << round << ": " << handle.error();
      ASSERT_TRUE(f.sink->wait_for_line(handle->instance_id, "line 30")) << "round " << round;
      auto stopped = f.backend->stop_instance(*handle);
      ASSERT_TRUE(stopped) << stopped.error();
      if (!let_exit) {
        ASSERT_TRUE(stopped->has_value());
        EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
        EXPECT_EQ((*stopped)->code, SIGTERM);
        EXPECT_FALSE((*stopped)->forced);
      }
      EXPECT_EQ(f.sink->lines(handle->instance_id, LogStream::Stdout).size(), 30u);
    }
    done = true;
    storm.join();
  }
  sigaction(SIGUSR1, &previous, nullptr);
  std::printf("[ figures  ] %ld SIGUSR1 handled during spawn/stop\n", g_signals_handled.load());
  EXPECT_GT(g_signals_handled.load(), 100);
  EXPECT_EQ(zombie_children(), 0);
}

#endif  // !_WIN32
