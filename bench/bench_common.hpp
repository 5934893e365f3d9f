// Shared by the benchmark programs: the helper child, a counting sink, the raw
// posix_spawn baseline, /proc/self/status readers and the benchmark main.
#pragma once

#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "modkit/modkit.hpp"

#ifndef MODKIT_BENCH_CHILD
#error "MODKIT_BENCH_CHILD (path of the helper child) must be defined by the build"
#endif

namespace modkit_bench {

/// Path of bench/bench_child.cpp's executable.
inline const char* child_path() { return MODKIT_BENCH_CHILD; }

/// A config that runs the helper child with `args` (its mode first).
modkit::OopModuleConfig child_config(std::string module, std::vector<std::string> args);

/// A mutex + condition variable pair to wait for counters that other threads
/// (the sink, on_exit) advance.
class Signal {
 public:
  void notify() {
    std::lock_guard<std::mutex> lock(mutex_);
    cv_.notify_all();
  }
  /// Waits until `done()` or the timeout (returns done()).
  bool wait(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, done);
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
};

/// Counts the children's stdout lines and bytes (line + terminator), the
/// lines that read exactly "ready", and wakes a waiter when `target_lines`
/// is reached. Library events and stderr are ignored. Takes batches.
///
/// As cheap per line as the raw baseline's counting: the line and byte
/// counters are written by one thread at a time (one instance's stdout reader
/// in BM_LogThroughput), so they are plain relaxed loads and stores, no
/// read-modify-write. Only the "ready" count, which many instances' readers
/// may bump at once, is a real atomic increment.
class CountingSink final : public modkit::LogSink {
 public:
  explicit CountingSink(Signal& signal) : signal_(signal) {}
  void write(const modkit::LogRecord& record) override {
    if (record.stream != modkit::LogStream::Stdout) return;
    std::uint64_t count = lines_.load(std::memory_order_relaxed) + 1;
    lines_.store(count, std::memory_order_relaxed);
    bytes_.store(bytes_.load(std::memory_order_relaxed) + record.line.size() + 1, std::memory_order_relaxed);
    if (count == target_lines_.load(std::memory_order_relaxed)) {
      signal_.notify();
    } else if (record.line.size() == 5 && record.line == "ready") {
      ready_.fetch_add(1, std::memory_order_relaxed);
      signal_.notify();
    }
  }
  // A batch is one instance's stream: count its stdout lines in one go.
  void write_batch(const modkit::LogRecord* records, std::size_t count) override {
    if (count == 0 || records[0].stream != modkit::LogStream::Stdout) {
      for (std::size_t i = 0; i < count; ++i) write(records[i]);
      return;
    }
    std::uint64_t bytes = 0;
    bool ready = false;
    for (std::size_t i = 0; i < count; ++i) {
      bytes += records[i].line.size() + 1;
      ready |= records[i].line.size() == 5 && records[i].line == "ready";
    }
    const std::uint64_t before = lines_.load(std::memory_order_relaxed);
    lines_.store(before + count, std::memory_order_relaxed);
    bytes_.store(bytes_.load(std::memory_order_relaxed) + bytes, std::memory_order_relaxed);
    const std::uint64_t target = target_lines_.load(std::memory_order_relaxed);
    if (before < target && before + count >= target) {
      signal_.notify();
    } else if (ready) {
      for (std::size_t i = 0; i < count; ++i) {
        if (records[i].line.size() == 5 && records[i].line == "ready") ready_.fetch_add(1, std::memory_order_relaxed);
      }
      signal_.notify();
    }
  }
  void reset(std::uint64_t target_lines) {
    lines_ = 0;
    bytes_ = 0;
    target_lines_ = target_lines;
  }
  // Read by the waiting thread after signal_.notify() (whose mutex orders them).
  std::uint64_t lines() const { return lines_.load(std::memory_order_relaxed); }
  std::uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  std::uint64_t ready() const { return ready_.load(std::memory_order_relaxed); }

 private:
  Signal& signal_;
  std::atomic<std::uint64_t> lines_{0}, bytes_{0}, ready_{0}, target_lines_{0};
};

/// A child started with raw posix_spawn: stdin /dev/null, stdout and stderr
/// pipes (read ends returned, close-on-exec), own process group, default
/// signal dispositions and an empty mask, as modkit does.
struct RawChild {
  int pid = -1;
  int out = -1;
  int err = -1;
};
RawChild raw_spawn(const std::vector<std::string>& args);
/// Reads both pipes to EOF (discarding), closes them, reaps. Returns the wait status.
int raw_drain_and_reap(RawChild& child);
/// Reads one line from `fd` (blocking); true if it was "ready".
bool raw_read_ready(int fd);

/// Threads the modkit library has started in this process: bench programs
/// link with -Wl,--wrap=pthread_create, which reroutes the static library's
/// calls (not the shared Google Benchmark's or libstdc++'s) through a counter.
std::uint64_t library_threads_started();

/// Fields of /proc/self/status.
long proc_status_kib(const char* field);  // e.g. "VmRSS:"
long proc_thread_count();

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (each instance uses
/// about 4 descriptors). Returns the new soft limit.
long raise_fd_limit();

/// Parses the benchmark flags and runs every registered benchmark with
/// stable names: the "/iterations:N", "/repeats:N", "/real_time" and
/// "/min_time:" suffixes Google Benchmark appends are dropped, so results
/// keep the names of issue 4 (BM_Spawn/modkit, BM_ShutdownStubborn/100, ...)
/// however a benchmark is configured. --benchmark_out is always JSON.
/// --benchmark_format (or BENCHMARK_FORMAT) picks stdout's format as in
/// Google Benchmark: console (modkit's tabular reporter), json or csv.
int run_benchmarks(int argc, char** argv);

}  // namespace modkit_bench

#define MODKIT_BENCH_MAIN() \
  int main(int argc, char** argv) { return modkit_bench::run_benchmarks(argc, argv); }
