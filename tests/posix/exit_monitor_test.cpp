// The pidfd exit monitor against processes the test controls: real children
// (so that waitid sees them), behind a Process of the test's own whose
// address can be watched again for another child.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "platform/exit_monitor.hpp"
#include "platform/process.hpp"

namespace modkit {
namespace {

using namespace std::chrono_literals;

class HandleProcess final : public platform::Process {
 public:
  pid_t pid_value = 0;
  int notify_fd = -1;
  std::int64_t pid() const override { return pid_value; }
  std::unique_ptr<platform::PipeReader> take_stdout() override { return nullptr; }
  std::unique_ptr<platform::PipeReader> take_stderr() override { return nullptr; }
  std::intptr_t exit_handle() const override { return -1; }  // the monitor opens a pidfd of its own
  std::intptr_t notify_handle() const override { return notify_fd; }
  Result<bool> request_stop() override { return false; }
  Result<void> kill_tree() override { return {}; }
  int kill_output_holders() override { return 0; }
  std::intptr_t contents_handle() const override { return -1; }
  bool contents_empty() override { return true; }
  std::optional<std::int64_t> process_count() override { return std::nullopt; }
  std::optional<ExitStatus> peek_exit() override { return std::nullopt; }
  std::optional<ExitStatus> wait_for_exit(std::chrono::milliseconds) override { return std::nullopt; }
  void reap() override {}
};

pid_t fork_child(bool exit_at_once) {
  pid_t pid = fork();
  if (pid == 0) {
    if (!exit_at_once) pause();
    _exit(0);
  }
  return pid;
}

// The monitor keys its watches by the Process's address. An exit it has found
// waitable (without its lock) must not be handed to a later watch at the same
// address: in the backend, the process is unwatched and destroyed once a
// reader has acted on its exit, and the next spawn's Process may get its
// address. Told of the old exit, the new instance's exit claim was consumed
// while its child still ran, and the child's real exit was never acted on
// (Stress.CancellationRacingSpawnStorms, once under ctest -j2: an instance
// still listed after the shutdown, its child a zombie). Here the address is
// reused deterministically, from the on_notify call the monitor makes while
// draining the notifications of the exited child, between its waitid and its
// lookup of the on_exit callback.
TEST(PidfdExitMonitor, ExitOfAnUnwatchedProcessIsNotGivenToTheNextAtItsAddress) {
  auto made = platform::make_exit_monitor(true);
  ASSERT_TRUE(made) << made.error().message;
  std::unique_ptr<platform::ExitMonitor> monitor = std::move(*made);

  const pid_t exited = fork_child(true);
  const pid_t running = fork_child(false);
  ASSERT_GT(exited, 0);
  ASSERT_GT(running, 0);
  siginfo_t info{};
  ASSERT_EQ(waitid(P_PID, static_cast<id_t>(exited), &info, WEXITED | WNOWAIT), 0);  // a zombie now

  // A blocking notification pipe with nothing in it: the monitor reads it only
  // when it drains it before the exit, and waits there until the test writes.
  int notify[2];
  ASSERT_EQ(pipe(notify), 0);

  HandleProcess process;
  process.pid_value = exited;
  process.notify_fd = notify[0];
  std::atomic<int> first_exits{0}, second_exits{0};
  std::atomic<bool> rewatched{false};
  auto rewatch = [&](std::string_view, bool) {
    if (rewatched.exchange(true)) return;
    // On the monitor's thread: the first process goes, another takes its place.
    monitor->unwatch(process);
    process.pid_value = running;
    process.notify_fd = -1;
    auto again = monitor->watch(process, [&] { second_exits.fetch_add(1); });
    EXPECT_TRUE(again) << again.error().message;
  };
  ASSERT_TRUE(monitor->watch(process, [&] { first_exits.fetch_add(1); }, {}, rewatch));

  std::this_thread::sleep_for(200ms);  // the monitor is in its drain, blocked on the pipe
  ASSERT_EQ(write(notify[1], "x", 1), 1);
  for (int i = 0; i < 200 && !rewatched.load(); ++i) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(rewatched.load());
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(first_exits.load(), 0) << "unwatched before its exit was handed over";
  EXPECT_EQ(second_exits.load(), 0) << "the running child's watch was told of the other's exit";

  // The second watch still sees its own child's exit.
  kill(running, SIGKILL);
  for (int i = 0; i < 1000 && second_exits.load() == 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(second_exits.load(), 1);

  monitor->unwatch(process);
  monitor->shutdown();
  close(notify[0]);
  close(notify[1]);
  waitpid(exited, nullptr, 0);
  waitpid(running, nullptr, 0);
}

}  // namespace
}  // namespace modkit
