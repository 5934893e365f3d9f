// modkit-run driven as a user drives it: started with arguments, read from
// its output, stopped with SIGTERM or SIGINT, judged by its exit code.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "test_support.hpp"

#ifdef MODKIT_RUN_PATH  // built with the tools (MODKIT_BUILD_TOOLS)

extern char** environ;

namespace modkit::testing {
namespace {

using std::chrono::milliseconds;

// One modkit-run process and everything it wrote to stdout and stderr.
class RunProcess {
 public:
  explicit RunProcess(std::vector<std::string> args) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    args.insert(args.begin(), MODKIT_RUN_PATH);
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    read_fd_ = fds[0];
  }
  ~RunProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (read_fd_ >= 0) close(read_fd_);
  }
  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  /// Reads until `text` appears in the output or `timeout` passes.
  bool wait_for(const std::string& text, milliseconds timeout = milliseconds(15000)) {
    auto deadline = Clock::now() + timeout;
    while (output_.find(text) == std::string::npos) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0 || !read_some(static_cast<int>(left))) return output_.find(text) != std::string::npos;
    }
    return true;
  }
  /// Waits (bounded) for the exit; its code, or -1.
  int wait_exit(milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      int status = 0;
      pid_t got = waitpid(pid_, &status, WNOHANG);
      if (got == pid_) {
        reaped_ = true;
        while (read_some(0)) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      read_some(20);
    }
    return -1;
  }
  const std::string& output() const { return output_; }
  int count(const std::string& text) const {
    int found = 0;
    for (std::size_t at = output_.find(text); at != std::string::npos; at = output_.find(text, at + 1)) ++found;
    return found;
  }

 private:
  bool read_some(int timeout_ms) {
    pollfd readable{read_fd_, POLLIN, 0};
    if (poll(&readable, 1, timeout_ms) <= 0) return timeout_ms == 0 ? false : true;
    char buffer[4096];
    ssize_t got = read(read_fd_, buffer, sizeof buffer);
    if (got <= 0) return false;
    output_.append(buffer, static_cast<std::size_t>(got));
    return true;
  }
  pid_t pid_ = -1;
  int read_fd_ = -1;
  bool reaped_ = false;
  std::string output_;
};

TEST(ModkitRun, TheExampleBacksOffGivesUpAndShutsDownOnSigterm) {
  RunProcess run({"--grace", "2000", "--example"});
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(run.wait_for("api listening")) << run.output();
  ASSERT_TRUE(run.wait_for("gave up")) << run.output();
  EXPECT_EQ(run.count("cannot open /nonexistent/config"), 5) << run.output();  // 1 start + 4 restarts
  auto signalled = Clock::now();
  ASSERT_EQ(kill(run.pid(), SIGTERM), 0);
  int code = run.wait_exit(milliseconds(10000));
  EXPECT_LT(seconds_since(signalled), 2.0 + 2.0);  // within the grace (+ slack)
  EXPECT_EQ(code, 3) << run.output();               // a module gave up
  EXPECT_NE(run.output().find("api stopped cleanly"), std::string::npos) << run.output();
  EXPECT_NE(run.output().find("drained queue, bye"), std::string::npos) << run.output();
}

TEST(ModkitRun, ModulesFromAFileRunAndSigintEndsThemCleanly) {
  char path[] = "/tmp/modkit-run-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string child = test_child_path();
  std::string text = "# two modules\n"
                     "--restart=always --ready=notify --ready-timeout=5000 a=" + child +
                     " say \"a is up\" notify READY=1 sleep 30\n"
                     "\n"
                     "--ready=line:listening b=" + child + " say listening sleep 30  # trailing comment\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  RunProcess run({"--grace", "1000", "--file", path});
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(run.wait_for("a is up")) << run.output();
  // The Supervisor's event, not the backend's "ready after": start() has returned.
  ASSERT_TRUE(run.wait_for("child 'b' generation 1: ready")) << run.output();
  ASSERT_EQ(kill(run.pid(), SIGINT), 0);
  EXPECT_EQ(run.wait_exit(milliseconds(10000)), 0) << run.output();
  unlink(path);
}

TEST(ModkitRun, ASignalDuringTheStartsIsACleanShutdown) {
  // The second module is still waiting for its readiness when SIGTERM comes:
  // that start was interrupted, not refused.
  std::string child = test_child_path();
  RunProcess run({"--grace", "1000", "--ready=notify", "a=" + child, "notify", "READY=1", "sleep", "30", "---",
                  "--ready=notify", "--ready-timeout=20000", "b=" + child, "say", "b waits", "sleep", "30"});
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(run.wait_for("b waits")) << run.output();
  ASSERT_EQ(kill(run.pid(), SIGTERM), 0);
  EXPECT_EQ(run.wait_exit(milliseconds(10000)), 0) << run.output();
}

TEST(ModkitRun, BadArgumentsAreAUsageError) {
  for (std::vector<std::string> args : {std::vector<std::string>{},
                                        {"--restart=sometimes", "x=/bin/true"},
                                        {"--backoff=1,2", "x=/bin/true"},
                                        {"noequals"},
                                        {"--file", "/nonexistent/modules.txt"}}) {
    RunProcess run(args);
    ASSERT_TRUE(run.started());
    EXPECT_EQ(run.wait_exit(milliseconds(10000)), 2) << run.output();
  }
}

TEST(ModkitRun, AModuleThatCannotStartIsExitCodeOne) {
  RunProcess run({"--seconds", "0.2", "x=/nonexistent/program"});
  ASSERT_TRUE(run.started());
  EXPECT_EQ(run.wait_exit(milliseconds(10000)), 1) << run.output();
}

}  // namespace
}  // namespace modkit::testing
#endif
