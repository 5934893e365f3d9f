// The Win32 platform layer against the platform contract (src/platform/
// process.hpp, exit_monitor.hpp): statuses without reaping, no signal after
// reap, bounded waits, a destructor that never blocks, and an exit monitor
// whose unwatch() and shutdown() leave no callback behind.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "platform/exit_monitor.hpp"
#include "platform/process.hpp"
#include "win32_test_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<platform::Process> spawn_child(std::vector<std::string> args,
                                               GracefulStop graceful_stop = GracefulStop::None) {
  platform::SpawnRequest request;
  request.module = "platform";
  request.binary = test_child_path();
  request.args = std::move(args);
  request.graceful_stop = graceful_stop;
  auto process = platform::spawn(request);
  EXPECT_TRUE(process) << process.error();
  return process ? std::move(*process) : nullptr;
}

// A SYNCHRONIZE handle of our own on the child, to see it end independently
// of the Process object.
struct Watcher {
  explicit Watcher(std::int64_t pid) : handle(OpenProcess(SYNCHRONIZE, FALSE, static_cast<DWORD>(pid))) {}
  ~Watcher() {
    if (handle) CloseHandle(handle);
  }
  bool ended_within(DWORD ms) const { return handle == nullptr || WaitForSingleObject(handle, ms) == WAIT_OBJECT_0; }
  HANDLE handle;
};

// Counts callbacks and lets a test wait for one.
struct Calls {
  std::mutex mutex;
  std::condition_variable changed;
  int count = 0;
  void add() {
    std::lock_guard<std::mutex> lock(mutex);
    ++count;
    changed.notify_all();
  }
  bool wait_for(int n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, timeout, [&] { return count >= n; });
  }
  int get() {
    std::lock_guard<std::mutex> lock(mutex);
    return count;
  }
};

}  // namespace

// --- Process ------------------------------------------------------------------

TEST(Win32Process, ExitHandleIsTheProcessHandle) {
  auto process = spawn_child({"sleep", "30"});
  ASSERT_TRUE(process);
  auto handle = reinterpret_cast<HANDLE>(process->exit_handle());
  ASSERT_NE(process->exit_handle(), -1);
  EXPECT_EQ(GetProcessId(handle), static_cast<DWORD>(process->pid()));
  EXPECT_EQ(WaitForSingleObject(handle, 0), static_cast<DWORD>(WAIT_TIMEOUT));
  EXPECT_FALSE(process->peek_exit().has_value());
  ASSERT_TRUE(process->kill_tree());
  EXPECT_EQ(WaitForSingleObject(handle, 10000), static_cast<DWORD>(WAIT_OBJECT_0));
  auto status = process->peek_exit();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(status->code, 9);
  EXPECT_FALSE(status->forced) << "the core sets forced, not the platform layer";
  process->reap();
}

// peek_exit() leaves the child as it is: the same answer every time, before
// and after reap(); a kill after the exit does not change the status, and
// after reap() kill_tree and request_stop do nothing.
TEST(Win32Process, PeekExitDoesNotReapAndKeepsItsAnswer) {
  auto process = spawn_child({"exit", "137"}, GracefulStop::CloseStdin);
  ASSERT_TRUE(process);
  auto status = process->wait_for_exit(20s);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->kind, ExitStatus::Kind::Exited) << *status;
  EXPECT_EQ(status->code, 137) << "exited by itself with 137: not a kill";
  auto again = process->peek_exit();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->kind, status->kind);
  EXPECT_EQ(again->code, status->code);
  ASSERT_TRUE(process->kill_tree());  // exited, not reaped: the (empty) job is still ours
  again = process->peek_exit();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->kind, ExitStatus::Kind::Exited) << *again;
  EXPECT_EQ(again->code, 137);
  process->reap();
  again = process->peek_exit();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->code, 137);
  EXPECT_TRUE(process->kill_tree());
  auto stop = process->request_stop();
  ASSERT_TRUE(stop);
  EXPECT_FALSE(*stop) << "nothing to ask of a reaped child";
}

TEST(Win32Process, WaitForExitIsBounded) {
  auto process = spawn_child({"sleep", "30"});
  ASSERT_TRUE(process);
  auto start = Clock::now();
  EXPECT_FALSE(process->wait_for_exit(200ms).has_value());
  double elapsed = seconds_since(start);
  EXPECT_GE(elapsed, 0.15);
  EXPECT_LT(elapsed, 3.0);
  start = Clock::now();
  EXPECT_FALSE(process->wait_for_exit(0ms).has_value());
  EXPECT_FALSE(process->wait_for_exit(-5ms).has_value());
  EXPECT_LT(seconds_since(start), 1.0);
  ASSERT_TRUE(process->kill_tree());
  EXPECT_TRUE(process->wait_for_exit(20s).has_value());
  process->reap();
}

// The destructor neither blocks nor waits; closing the Job object
// (KILL_ON_JOB_CLOSE) still ends the running child and its descendants.
TEST(Win32Process, DestructorDoesNotBlockAndTheJobEndsTheTree) {
  auto process = spawn_child({"grandchild", "30", "sleep", "30"});
  ASSERT_TRUE(process);
  Watcher child(process->pid());
  ASSERT_NE(child.handle, nullptr);
  auto start = Clock::now();
  process.reset();
  EXPECT_LT(seconds_since(start), 1.0);
  EXPECT_TRUE(child.ended_within(10000)) << "the child outlived its Job object";
}

TEST(Win32Process, RequestStopSteps) {
  {
    auto process = spawn_child({"sleep", "30"}, GracefulStop::None);
    ASSERT_TRUE(process);
    auto stop = process->request_stop();
    ASSERT_TRUE(stop) << stop.error();
    EXPECT_FALSE(*stop) << "None has no graceful step";
    ASSERT_TRUE(process->kill_tree());
    ASSERT_TRUE(process->wait_for_exit(20s).has_value());
    process->reap();
  }
  {
    auto process = spawn_child({"read-stdin", "exit", "7"}, GracefulStop::CloseStdin);
    ASSERT_TRUE(process);
    auto stop = process->request_stop();
    ASSERT_TRUE(stop) << stop.error();
    EXPECT_TRUE(*stop);
    auto status = process->wait_for_exit(20s);
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->kind, ExitStatus::Kind::Exited) << *status;
    EXPECT_EQ(status->code, 7);
    process->reap();
  }
  {
    // CTRL_BREAK goes to the child's process group only while the child
    // runs: once it has exited its pid may name no group, and an id that
    // names none can reach every process of the console, the host included.
    auto process = spawn_child({"exit", "0"}, GracefulStop::Signal);
    ASSERT_TRUE(process);
    ASSERT_TRUE(process->wait_for_exit(20s).has_value());
    auto stop = process->request_stop();
    ASSERT_TRUE(stop) << stop.error();
    EXPECT_FALSE(*stop);
    process->reap();
  }
}

TEST(Win32Process, KillOutputHoldersFindsNoneOutsideTheJob) {
  auto process = spawn_child({"sleep", "30"});
  ASSERT_TRUE(process);
  EXPECT_EQ(process->kill_output_holders(), 0);
  ASSERT_TRUE(process->kill_tree());
  ASSERT_TRUE(process->wait_for_exit(20s).has_value());
  process->reap();
}

// --- ExitMonitor ------------------------------------------------------------------

TEST(Win32ExitMonitor, CallbackRunsOnceWhenTheChildExits) {
  auto monitor = platform::make_exit_monitor(false);
  ASSERT_TRUE(monitor) << monitor.error();
  auto process = spawn_child({"sleep", "30"});
  ASSERT_TRUE(process);
  Calls calls;
  ASSERT_TRUE((*monitor)->watch(*process, [&] { calls.add(); }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(calls.get(), 0);
  ASSERT_TRUE(process->kill_tree());
  EXPECT_TRUE(calls.wait_for(1, 20s));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(calls.get(), 1);
  EXPECT_TRUE(process->peek_exit().has_value()) << "exited when the callback ran";
  (*monitor)->unwatch(*process);  // after the callback: harmless
  process->reap();
  (*monitor)->shutdown();
}

TEST(Win32ExitMonitor, UnwatchedProcessGetsNoCallback) {
  auto monitor = platform::make_exit_monitor(false);
  ASSERT_TRUE(monitor) << monitor.error();
  auto process = spawn_child({"sleep", "30"});
  ASSERT_TRUE(process);
  Calls calls;
  ASSERT_TRUE((*monitor)->watch(*process, [&] { calls.add(); }));
  (*monitor)->unwatch(*process);
  ASSERT_TRUE(process->kill_tree());
  ASSERT_TRUE(process->wait_for_exit(20s).has_value());
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(calls.get(), 0);
  process->reap();
  process.reset();  // the monitor holds nothing of it any more
  (*monitor)->shutdown();
}

// unwatch() while the callback runs returns only after it has returned.
TEST(Win32ExitMonitor, UnwatchWaitsForACallbackUnderWay) {
  auto monitor = platform::make_exit_monitor(false);
  ASSERT_TRUE(monitor) << monitor.error();
  auto process = spawn_child({"exit", "0"});
  ASSERT_TRUE(process);
  std::atomic<bool> started{false}, finished{false};
  ASSERT_TRUE((*monitor)->watch(*process, [&] {
    started = true;
    std::this_thread::sleep_for(400ms);
    finished = true;
  }));
  auto deadline = Clock::now() + 20s;
  while (!started && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(started.load());
  (*monitor)->unwatch(*process);
  EXPECT_TRUE(finished.load()) << "unwatch returned while the callback was still running";
  process->reap();
  (*monitor)->shutdown();
}

// Not something the core does, but it must not deadlock the thread pool.
TEST(Win32ExitMonitor, UnwatchFromItsOwnCallbackReturns) {
  auto monitor = platform::make_exit_monitor(false);
  ASSERT_TRUE(monitor) << monitor.error();
  auto process = spawn_child({"exit", "0"});
  ASSERT_TRUE(process);
  Calls calls;
  platform::ExitMonitor& m = **monitor;
  platform::Process& p = *process;
  ASSERT_TRUE(m.watch(p, [&] {
    m.unwatch(p);
    calls.add();
  }));
  EXPECT_TRUE(calls.wait_for(1, 20s));
  // A later watch frees the entry once its callback has returned.
  auto other = spawn_child({"exit", "0"});
  ASSERT_TRUE(other);
  Calls other_calls;
  ASSERT_TRUE(m.watch(*other, [&] { other_calls.add(); }));
  EXPECT_TRUE(other_calls.wait_for(1, 20s));
  process->reap();
  other->reap();
  m.shutdown();
}

TEST(Win32ExitMonitor, ShutdownDropsWatchesAndRefusesNewOnes) {
  auto monitor = platform::make_exit_monitor(false);
  ASSERT_TRUE(monitor) << monitor.error();
  auto process = spawn_child({"sleep", "30"});
  ASSERT_TRUE(process);
  Calls calls;
  ASSERT_TRUE((*monitor)->watch(*process, [&] { calls.add(); }));
  (*monitor)->shutdown();
  ASSERT_TRUE(process->kill_tree());
  ASSERT_TRUE(process->wait_for_exit(20s).has_value());
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(calls.get(), 0);
  auto again = (*monitor)->watch(*process, [&] { calls.add(); });
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, std::errc::operation_canceled);
  (*monitor)->unwatch(*process);  // nothing to forget: harmless
  process->reap();
}

// Many children watched at once (more than one wait thread's 63 handles):
// each callback exactly once.
TEST(Win32ExitMonitor, ManyWatchesEachCalledOnce) {
  auto monitor = platform::make_exit_monitor(false);
  ASSERT_TRUE(monitor) << monitor.error();
  constexpr int kChildren = 70;
  std::vector<std::unique_ptr<platform::Process>> children;
  std::vector<std::atomic<int>> calls(kChildren);
  Calls total;
  for (int i = 0; i < kChildren; ++i) {
    children.push_back(spawn_child({"sleep", "30"}));
    ASSERT_TRUE(children.back());
    ASSERT_TRUE((*monitor)->watch(*children.back(), [&, i] {
      ++calls[static_cast<std::size_t>(i)];
      total.add();
    }));
  }
  for (auto& child : children) ASSERT_TRUE(child->kill_tree());
  EXPECT_TRUE(total.wait_for(kChildren, 60s)) << total.get() << " of " << kChildren;
  std::this_thread::sleep_for(200ms);
  for (int i = 0; i < kChildren; ++i) EXPECT_EQ(calls[static_cast<std::size_t>(i)].load(), 1) << i;
  for (auto& child : children) child->reap();
  (*monitor)->shutdown();
}
