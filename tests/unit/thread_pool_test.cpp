// core::ThreadPool: idle threads are reused, bounded, end when idle too long,
// and shutdown() leaves none behind, even when called from inside a job.
#include "core/thread_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "modkit/ostream.hpp"
#include "platform/thread.hpp"

namespace modkit::core {
namespace {

using namespace std::chrono_literals;

struct Counted {
  std::atomic<int> started{0};
  std::atomic<int> fail_from{-1};  // starts from this count on fail
  ThreadPool::StartThread start() {
    return [this](std::size_t stack, std::function<void()> body, std::string_view what)
               -> Result<std::unique_ptr<platform::Thread>> {
      const int n = started.fetch_add(1);
      if (fail_from.load() >= 0 && n >= fail_from.load()) {
        return make_error(std::errc::resource_unavailable_try_again, "no thread for you");
      }
      return platform::start_thread(stack, std::move(body), what);
    };
  }
};

// Runs a job and waits until it ran; returns the id of the thread it ran on.
std::thread::id run_and_wait(ThreadPool& pool) {
  std::mutex mutex;
  std::condition_variable done;
  std::optional<std::thread::id> ran_on;
  auto started = pool.run([&] {
    std::lock_guard<std::mutex> lock(mutex);
    ran_on = std::this_thread::get_id();
    done.notify_all();
  });
  EXPECT_TRUE(started) << started.error();
  std::unique_lock<std::mutex> lock(mutex);
  EXPECT_TRUE(done.wait_for(lock, 5s, [&] { return ran_on.has_value(); }));
  return ran_on.value_or(std::thread::id());
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

TEST(ThreadPool, AnIdleThreadRunsTheNextJobAndNoneIsStarted) {
  Counted counted;
  ThreadPool pool(counted.start(), {}, "a test");
  const std::thread::id first = run_and_wait(pool);
  ASSERT_TRUE(eventually([&] { return pool.idle() == 1; }));
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(run_and_wait(pool), first);
    ASSERT_TRUE(eventually([&] { return pool.idle() == 1; }));
  }
  EXPECT_EQ(counted.started.load(), 1);
  EXPECT_EQ(pool.started(), 1u);
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
}

TEST(ThreadPool, JobsThatOverlapGetThreadsOfTheirOwn) {
  Counted counted;
  ThreadPool pool(counted.start(), {}, "a test");
  std::mutex mutex;
  std::condition_variable changed;
  int inside = 0;
  bool release = false;
  std::set<std::thread::id> threads;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(pool.run([&] {
      std::unique_lock<std::mutex> lock(mutex);
      ++inside;
      threads.insert(std::this_thread::get_id());
      changed.notify_all();
      changed.wait(lock, [&] { return release; });
    }));
  }
  {
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(changed.wait_for(lock, 5s, [&] { return inside == 4; }));
    release = true;
    changed.notify_all();
  }
  EXPECT_EQ(threads.size(), 4u);
  EXPECT_TRUE(eventually([&] { return pool.idle() == 4; }));
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
}

TEST(ThreadPool, AtMostMaxIdleThreadsWait) {
  Counted counted;
  ThreadPoolOptions options;
  options.max_idle = 2;
  ThreadPool pool(counted.start(), options, "a test");
  std::mutex mutex;
  std::condition_variable changed;
  int inside = 0;
  bool release = false;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(pool.run([&] {
      std::unique_lock<std::mutex> lock(mutex);
      ++inside;
      changed.notify_all();
      changed.wait(lock, [&] { return release; });
    }));
  }
  {
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(changed.wait_for(lock, 5s, [&] { return inside == 5; }));
    release = true;
    changed.notify_all();
  }
  ASSERT_TRUE(eventually([&] { return pool.idle() == 2; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(pool.idle(), 2u);
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
}

TEST(ThreadPool, WithNoIdleThreadsEveryJobStartsOne) {
  Counted counted;
  ThreadPoolOptions options;
  options.max_idle = 0;
  ThreadPool pool(counted.start(), options, "a test");
  for (int i = 0; i < 5; ++i) run_and_wait(pool);
  EXPECT_EQ(counted.started.load(), 5);
  EXPECT_TRUE(eventually([&] { return pool.idle() == 0; }));
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
}

TEST(ThreadPool, AThreadIdleForTheTimeoutEnds) {
  Counted counted;
  ThreadPoolOptions options;
  options.idle_timeout = 100ms;
  ThreadPool pool(counted.start(), options, "a test");
  run_and_wait(pool);
  ASSERT_TRUE(eventually([&] { return pool.idle() == 1; }));
  EXPECT_TRUE(eventually([&] { return pool.idle() == 0; }, 3000ms));
  // And the next job starts a new one.
  run_and_wait(pool);
  EXPECT_EQ(counted.started.load(), 2);
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
}

TEST(ThreadPool, AFailedStartIsAnErrorAndTheJobDoesNotRun) {
  Counted counted;
  counted.fail_from = 0;
  ThreadPool pool(counted.start(), {}, "a test");
  bool ran = false;
  auto started = pool.run([&] { ran = true; });
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, std::errc::resource_unavailable_try_again);
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(ran);
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
}

TEST(ThreadPool, NoJobIsTakenAfterShutdown) {
  Counted counted;
  ThreadPool pool(counted.start(), {}, "a test");
  run_and_wait(pool);
  pool.shutdown(std::chrono::steady_clock::now() + 5s);
  auto started = pool.run([] {});
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, std::errc::operation_canceled);
}

// shutdown() from inside a job (a backend destroyed by its own sink) returns
// at once instead of waiting for the job it is called from.
TEST(ThreadPool, ShutdownFromInsideAJobDoesNotWaitForThatJob) {
  Counted counted;
  auto pool = std::make_shared<ThreadPool>(counted.start(), ThreadPoolOptions{}, "a test");
  std::atomic<bool> returned{false};
  std::atomic<long> took_ms{-1};
  ASSERT_TRUE(pool->run([&, pool] {
    const auto start = std::chrono::steady_clock::now();
    pool->shutdown(start + 3s);
    took_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    returned = true;
  }));
  ASSERT_TRUE(eventually([&] { return returned.load(); }));
  EXPECT_LT(took_ms.load(), 1000);
  pool.reset();
}

// A job that does not return (a stuck sink) is let go by shutdown() at its
// deadline; it ends by itself once the job returns.
TEST(ThreadPool, ShutdownLetsAStuckJobGoAtItsDeadline) {
  Counted counted;
  ThreadPool pool(counted.start(), {}, "a test");
  std::atomic<bool> release{false};
  std::atomic<bool> ended{false};
  ASSERT_TRUE(pool.run([&] {
    while (!release.load()) std::this_thread::sleep_for(1ms);
    ended = true;
  }));
  const auto start = std::chrono::steady_clock::now();
  pool.shutdown(start + 200ms);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 2000ms);
  release = true;
  EXPECT_TRUE(eventually([&] { return ended.load(); }));
}

}  // namespace
}  // namespace modkit::core
