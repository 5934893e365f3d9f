// Load (POSIX): N spawn/stop cycles from 8 threads with concurrent listing, and
// cancellation racing with spawn storms. Afterwards the host has the same
// descriptors and threads, no zombie, and no child left.
//
// N is MODKIT_STRESS_CYCLES (default 2000; make soak uses 20000, the sanitizer
// builds in CI fewer).
#ifndef _WIN32

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <unordered_map>

#include "reliability_support.hpp"
#include "test_support.hpp"

using namespace modkit;
using namespace modkit::testing;

namespace {

// Counts stdout lines per instance.
class PerInstanceSink final : public LogSink {
 public:
  void write(const LogRecord& record) override {
    if (record.stream != LogStream::Stdout) return;
    std::lock_guard<std::mutex> lock(mutex_);
    ++lines_[std::string(record.instance_id)];
  }
  int lines(const std::string& instance_id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = lines_.find(instance_id);
    return it == lines_.end() ? 0 : it->second;
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::string, int> lines_;
};

// Samples the host's descriptors and threads until stopped; keeps the peaks.
class PeakSampler {
 public:
  PeakSampler() {
    thread_ = std::thread([this] {
      while (!done_.load()) {
        peak_fds_ = std::max(peak_fds_.load(), open_descriptor_count());
        peak_threads_ = std::max(peak_threads_.load(), thread_count());
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  ~PeakSampler() { stop(); }
  void stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int peak_fds() const { return peak_fds_; }
  int peak_threads() const { return peak_threads_; }

 private:
  std::atomic<bool> done_{false};
  std::atomic<int> peak_fds_{0}, peak_threads_{0};
  std::thread thread_;
};

}  // namespace

TEST(Stress, SpawnStopCyclesFromEightThreadsLeakNothing) {
  const long cycles = stress_cycles(2000);
  constexpr int kThreads = 8;
  HostSnapshot baseline = quiescent_snapshot();
  auto sink = std::make_shared<PerInstanceSink>();
  ExitLog exits;
  std::atomic<long> next{0}, spawned{0}, listed{0}, exited_clean{0};
  std::mutex ids_mutex;
  std::vector<std::string> clean_ids;  // stop saw them exit on their own
  auto start = Clock::now();
  int peak_fds = 0, peak_threads = 0;
  {
    PeakSampler sampler;  // its own thread counts in the peak (+1), and is joined before the final check
    LocalProcessOptions options = Fixture::fast_options();
    options.stop_grace = std::chrono::milliseconds(200);
    options.on_exit = exits.callback();
    LocalProcessBackend backend(CancellationToken(), sink, options);
    std::atomic<bool> done{false};
    std::thread lister([&] {
      while (!done.load()) {
        for (const char* module : {"stress-a", "stress-b", "stress-c"}) {
          auto list = backend.list_instances(module);
          ASSERT_TRUE(list);
          for (const auto& handle : *list) {
            EXPECT_EQ(handle.module, module);
            EXPECT_TRUE(handle.pid.has_value());
          }
          listed.fetch_add(1);
        }
        // A short pause: a reader spinning without one starves the writers of
        // glibc's reader-preferring rwlock under valgrind's one-at-a-time scheduler.
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    });
    std::vector<std::thread> workers;
    for (int t = 0; t < kThreads; ++t) {
      workers.emplace_back([&] {
        for (long cycle = next.fetch_add(1); cycle < cycles; cycle = next.fetch_add(1)) {
          // a: runs until stopped; b: races its own exit with the stop;
          // c: ignores SIGTERM now and then, so the kill path runs too.
          std::vector<std::string> script;
          const char* module;
          if (cycle % 3 == 0) {
            module = "stress-a";
            script = {"lines", "2", "sleep", "30"};
          } else if (cycle % 3 == 1 || cycle % 97 != 2) {
            module = "stress-b";
            script = {"lines", "5", "exit", "0"};
          } else {
            module = "stress-c";
            script = {"ignore-term", "sleep", "30"};
          }
          auto handle = backend.spawn_instance(child_config(module, script));
          ASSERT_TRUE(handle) << "cycle " << cycle << ": " << handle.error();
          spawned.fetch_add(1);
          auto stopped = backend.stop_instance(*handle);
          ASSERT_TRUE(stopped) << stopped.error();
          if (std::string(module) == "stress-b" && stopped->has_value() && (*stopped)->success()) {
            std::lock_guard<std::mutex> lock(ids_mutex);
            clean_ids.push_back(handle->instance_id);
          }
        }
      });
    }
    for (auto& worker : workers) worker.join();
    done = true;
    lister.join();
    for (const char* module : {"stress-a", "stress-b", "stress-c"}) {
      auto left = *backend.list_instances(module);
      EXPECT_TRUE(left.empty()) << module;
      for (const auto& handle : left) {
        ProcInfo info;
        bool exists = read_proc(static_cast<pid_t>(*handle.pid), info);
        ADD_FAILURE() << "still listed after stop returned: " << handle << " state " << (exists ? info.state : '-');
      }
    }
    sampler.stop();
    peak_fds = sampler.peak_fds();
    peak_threads = sampler.peak_threads();
  }
  double took = seconds_since(start);
  EXPECT_EQ(spawned.load(), cycles);
  EXPECT_EQ(exits.count(), static_cast<std::size_t>(cycles)) << "every instance's exit is reported once";
  // A child that exited on its own before stop returned has all its output delivered.
  for (const auto& id : clean_ids) EXPECT_EQ(sink->lines(id), 5) << id;
  exited_clean = static_cast<long>(clean_ids.size());

  HostSnapshot now = settle_to(baseline);
  EXPECT_EQ(now.descriptors, baseline.descriptors);
  EXPECT_EQ(now.threads, baseline.threads);
  EXPECT_EQ(zombie_children(), 0);
  EXPECT_TRUE(children_of_self().empty());
  std::printf(
      "[ figures  ] %ld cycles from %d threads in %.1f s (%.0f cycles/s), %ld list calls, %ld clean exits; "
      "descriptors %d -> peak %d -> %d, threads %d -> peak %d -> %d\n",
      cycles, kThreads, took, cycles / took, listed.load(), exited_clean.load(), baseline.descriptors, peak_fds,
      now.descriptors, baseline.threads, peak_threads, now.threads);
}

// Several threads spawn as fast as they can while the token is cancelled:
// every spawn either succeeds (and its child is then stopped by the shutdown)
// or fails with operation_canceled; no child outlives the backend.
TEST(Stress, CancellationRacingSpawnStorms) {
  HostSnapshot baseline = quiescent_snapshot();
  const int rounds = std::max(3, scaled_rounds(10));
  long total_spawned = 0, total_refused = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<pid_t> pids;
    std::mutex pids_mutex;
    std::atomic<long> refused{0};
    {
      CancellationToken token;
      auto sink = std::make_shared<CountingSink>();
      LocalProcessBackend backend(token, sink, Fixture::fast_options());
      std::vector<std::thread> spawners;
      for (int t = 0; t < 4; ++t) {
        spawners.emplace_back([&, t] {
          for (int n = 0;; ++n) {
            auto script = (n + t) % 2 ? std::vector<std::string>{"sleep", "30"}
                                      : std::vector<std::string>{"lines", "3", "exit", "0"};
            auto handle = backend.spawn_instance(child_config("storm", script));
            if (!handle) {
              EXPECT_EQ(handle.error().code, std::errc::operation_canceled) << handle.error();
              refused.fetch_add(1);
              return;
            }
            std::lock_guard<std::mutex> lock(pids_mutex);
            pids.push_back(static_cast<pid_t>(*handle->pid));
          }
        });
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + 37 * round % 200));
      token.cancel();
      backend.wait_for_shutdown();
      for (auto& spawner : spawners) spawner.join();
      // After the shutdown finished, no child of ours may be alive (spawns
      // that lost the race were killed by spawn itself).
      for (const auto& child : children_of_self()) {
        EXPECT_EQ(child.state, 'Z') << "child " << child.pid << " alive after shutdown (round " << round << ")";
      }
      auto left = *backend.list_instances("storm");
      EXPECT_TRUE(left.empty()) << "round " << round;
      for (const auto& handle : left) {
        ProcInfo info;
        bool exists = read_proc(static_cast<pid_t>(*handle.pid), info);
        ADD_FAILURE() << "still listed: " << handle << " state " << (exists ? info.state : '-');
      }
    }
    EXPECT_TRUE(children_of_self().empty()) << "round " << round;
    for (pid_t pid : pids) EXPECT_FALSE(process_alive(pid)) << pid;
    total_spawned += static_cast<long>(pids.size());
    total_refused += refused.load();
  }
  HostSnapshot now = settle_to(baseline);
  EXPECT_EQ(now.descriptors, baseline.descriptors);
  EXPECT_EQ(now.threads, baseline.threads);
  EXPECT_EQ(zombie_children(), 0);
  std::printf("[ figures  ] cancellation storms: %d rounds, %ld spawned, %ld refused after cancel\n", rounds,
              total_spawned, total_refused);
}

#endif  // !_WIN32
