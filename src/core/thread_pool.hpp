// Threads for the readers, kept when idle and handed to the next job, so a
// spawn in steady state starts no thread (each start is a clone, a stack
// mapping and, on exit, the unmapping: the largest share of a spawn's cost
// after the child's own exec, measured in issue 12).
//
// A job owns its worker while it runs: a reader still reads one stream from
// start to end on one thread, as before. When the job returns, the worker
// drops the job (and whatever it holds) and waits for the next one; at most
// `max_idle` wait, and one idle for `idle_timeout` ends. shutdown() ends the
// idle workers and joins them; a worker still inside a job (a sink that does
// not return) is let go and ends when its job does.
//
// Lock order: the pool's lock is a leaf; no job runs under it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>

#include "core/platform_services.hpp"

namespace modkit::core {

struct ThreadPoolOptions {
  std::size_t stack_bytes = 256 * 1024;
  std::size_t max_idle = 16;
  std::chrono::milliseconds idle_timeout{10000};
};

class ThreadPool {
 public:
  using StartThread = decltype(PlatformServices::start_thread);
  ThreadPool(StartThread start_thread, ThreadPoolOptions options, std::string_view what);
  /// Lets every worker go (shutdown() joins them; this does not).
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  /// Runs `job` on an idle worker, or on a new one when none is idle.
  /// Errors: the thread start's (resource_unavailable_try_again), the job not run.
  Result<void> run(std::function<void()> job);
  /// Idle workers end and are joined, by `deadline`; busy ones are let go and
  /// end after their job. No job may be given after this.
  void shutdown(std::chrono::steady_clock::time_point deadline);

  /// Threads started so far, and workers idle now (tests, benchmarks).
  std::size_t started() const;
  std::size_t idle() const;

 private:
  struct State;
  struct Worker;
  static void work(const std::shared_ptr<State>& state, Worker* self);
  std::shared_ptr<State> state_;  // shared with the workers, so one let go never touches freed memory
};

}  // namespace modkit::core
