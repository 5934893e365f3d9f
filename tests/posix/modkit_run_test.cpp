// modkit-run driven as a user drives it: started with arguments, read from
// its output, stopped with SIGTERM or SIGINT, judged by its exit code.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
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

// A sanitizer runtime reserves terabytes of address space and has its own
// allocator: the hog cannot run (or fail) as it does in a plain build.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// The lines of `output` that belong to module `name` ("name[instance] ..."), in order.
std::vector<std::string> lines_of(const std::string& output, const std::string& name) {
  std::vector<std::string> lines;
  std::size_t begin = 0;
  while (begin < output.size()) {
    std::size_t end = output.find('\n', begin);
    if (end == std::string::npos) end = output.size();
    std::string line = output.substr(begin, end - begin);
    if (line.find(" " + name + "[") != std::string::npos) lines.push_back(line);
    begin = end + 1;
  }
  return lines;
}

// The index of the first line holding `text`, or -1.
int index_of(const std::vector<std::string>& lines, const std::string& text) {
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find(text) != std::string::npos) return static_cast<int>(i);
  }
  return -1;
}

TEST(ModkitRun, TheExampleHogEndsAtItsAddressSpaceLimit) {
  if (kSanitized) GTEST_SKIP() << "the hog runs under a 256 MiB address-space limit, too small for a sanitizer runtime";
  RunProcess run({"--grace", "2000", "--example"});
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(run.wait_for("child 'hog' generation 1: killed by signal 6")) << run.output();
  ASSERT_TRUE(run.wait_for("gave up")) << run.output();
  ASSERT_EQ(kill(run.pid(), SIGTERM), 0);
  EXPECT_EQ(run.wait_exit(milliseconds(10000)), 3) << run.output();  // still "flaky" giving up
  auto hog = lines_of(run.output(), "hog");
  int spawned = index_of(hog, "(limits: address_space 256.0 MiB");
  int holding = index_of(hog, "stdout: holding 8 MiB");
  int bad_alloc = index_of(hog, "stderr: terminate called after throwing an instance of 'std::bad_alloc'");
  int usage = index_of(hog, "modkit: used ");
  int signalled = index_of(hog, "modkit: killed by signal 6");
  EXPECT_GE(spawned, 0) << run.output();
  EXPECT_GE(holding, 0) << run.output();
  EXPECT_GT(bad_alloc, holding) << run.output();
  EXPECT_GT(usage, bad_alloc) << run.output();
  EXPECT_GT(signalled, usage) << run.output();
  EXPECT_EQ(index_of(hog, "holding 256 MiB"), -1) << run.output();  // the limit held
  EXPECT_EQ(run.count("child 'hog' generation 2"), 0) << run.output();  // restart policy never
}

TEST(ModkitRun, LimitOptionsReachTheModule) {
  // No higher than the host's own hard limit, which the module could not be given.
  rlimit nproc{};
  ASSERT_EQ(getrlimit(RLIMIT_NPROC, &nproc), 0);
  std::string user_processes =
      std::to_string(nproc.rlim_max == RLIM_INFINITY ? rlim_t(100000) : std::min<rlim_t>(nproc.rlim_max, 100000));
  // The per-process limits, checked from inside the module.
  RunProcess run({"--no-new-privileges", "--restart=never", "--address-space=512M", "--data-size=1G",
                  "--cpu-time=30", "--open-files=64", "--file-size=10M", "--core-size=0", "--user-processes=" + user_processes,
                  "--umask=027", "--die-with-host=1", "--limits=best-effort", "--memory-max=64M",
                  "--memory-high=48M", "--cpu-percent=50", "--max-processes=32", "m=/bin/sh", "-c",
                  "echo n=$(ulimit -n) v=$(ulimit -v) d=$(ulimit -d) t=$(ulimit -t) c=$(ulimit -c) umask=$(umask)"
                  " nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)"});
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(run.wait_for("child 'm' generation 1: exited")) << run.output();
  ASSERT_EQ(kill(run.pid(), SIGTERM), 0);
  EXPECT_EQ(run.wait_exit(milliseconds(10000)), 0) << run.output();
  // ulimit -v and -d print KiB.
  EXPECT_NE(run.output().find("stdout: n=64 v=524288 d=1048576 t=30 c=0 umask=0027 nnp=1\n"), std::string::npos)
      << run.output();
  EXPECT_NE(run.output().find("address_space 512.0 MiB, data_size 1.0 GiB, cpu_time 30 s, open_files 64, "
                              "file_size 10.0 MiB, core_size 0 bytes"),
            std::string::npos)
      << run.output();
  // As root, RLIMIT_NPROC binds nothing: best-effort names it as not enforced.
  EXPECT_TRUE(run.output().find("user_processes " + user_processes) != std::string::npos ||
              (geteuid() == 0 && run.output().find("limits.user_processes (the module runs as root") != std::string::npos))
      << run.output();
  EXPECT_NE(run.output().find("runs with no_new_privileges, umask 027, dies with the host"), std::string::npos)
      << run.output();
  // The group limits need a cgroup v2 controller the host may not delegate:
  // best-effort, so each is in the spawn record, or named as not enforced.
  for (auto [record, skipped] : {std::pair{"memory_max 64.0 MiB", "limits.memory_max ("},
                                 std::pair{"memory_high 48.0 MiB", "limits.memory_high ("},
                                 std::pair{"cpu_percent 50%", "limits.cpu_percent ("},
                                 std::pair{"max_processes 32", "limits.max_processes ("}}) {
    EXPECT_TRUE(run.output().find(record) != std::string::npos || run.output().find(skipped) != std::string::npos)
        << record << "\n" << run.output();
  }
}

TEST(ModkitRun, IdentityOptionsReachTheModule) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to change identity";
  RunProcess run({"--restart=never", "--user=65534", "--group=65533", "--groups=65532,65531", "a=/bin/sh", "-c",
                  "echo a: $(id -u) $(id -g) $(id -G)", "---", "--restart=never", "--user=65534", "--group=65533",
                  "--groups=", "b=/bin/sh", "-c", "echo b: $(id -u) $(id -g) $(id -G)"});
  ASSERT_TRUE(run.started());
  // Started in order, but either may end first.
  ASSERT_TRUE(run.wait_for("child 'a' generation 1: exited")) << run.output();
  ASSERT_TRUE(run.wait_for("child 'b' generation 1: exited")) << run.output();
  ASSERT_EQ(kill(run.pid(), SIGTERM), 0);
  EXPECT_EQ(run.wait_exit(milliseconds(10000)), 0) << run.output();
  // getgroups returns the groups sorted.
  EXPECT_NE(run.output().find("stdout: a: 65534 65533 65533 65531 65532\n"), std::string::npos) << run.output();
  EXPECT_NE(run.output().find("stdout: b: 65534 65533 65533\n"), std::string::npos) << run.output();  // none kept
  EXPECT_NE(run.output().find("runs with uid 65534, gid 65533, 2 supplementary group(s)"), std::string::npos)
      << run.output();
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

TEST(ModkitRun, BadLimitValuesAreAUsageErrorNamingTheOption) {
  struct Case {
    std::vector<std::string> options;
    std::string message;
  };
  for (const Case& bad : std::vector<Case>{
           {{"--cpu-percent=0"}, "bad value '0' for --cpu-percent"},
           {{"--cpu-percent=100001"}, "bad value '100001' for --cpu-percent"},
           {{"--address-space=12Q"}, "bad value '12Q' for --address-space"},
           {{"--address-space=1K"}, "bad value '1K' for --address-space"},  // under 1 MiB
           {{"--memory-max=99999999999G"}, "bad value '99999999999G' for --memory-max"},
           {{"--memory-high=M"}, "bad value 'M' for --memory-high"},
           {{"--data-size=-1M"}, "bad value '-1M' for --data-size"},
           {{"--cpu-time=0"}, "bad value '0' for --cpu-time"},
           {{"--open-files=2"}, "bad value '2' for --open-files"},
           {{"--open-files=7"}, "bad value '7' for --open-files"},
           {{"--address-space=8M"}, "bad value '8M' for --address-space"},
           {{"--max-processes=x"}, "bad value 'x' for --max-processes"},
           {{"--file-size=1.5M"}, "bad value '1.5M' for --file-size"},
           {{"--core-size="}, "bad value '' for --core-size"},
           {{"--user-processes=0"}, "bad value '0' for --user-processes"},
           {{"--limits=sometimes"}, "bad value 'sometimes' for --limits"},
           {{"--umask=999"}, "bad value '999' for --umask"},
           {{"--umask=1000"}, "bad value '1000' for --umask"},
           {{"--user=5"}, "--user needs --group too"},
           {{"--user=4294967295", "--group=0"}, "bad value '4294967295' for --user"},
           {{"--group=root"}, "bad value 'root' for --group"},
           {{"--groups=1,,2"}, "bad value '1,,2' for --groups"},
           {{"--no-new-privileges=yes"}, "bad value 'yes' for --no-new-privileges"},
           {{"--die-with-host=2"}, "bad value '2' for --die-with-host"},
       }) {
    std::vector<std::string> args = bad.options;
    args.push_back("x=/bin/true");
    RunProcess run(args);
    ASSERT_TRUE(run.started());
    EXPECT_EQ(run.wait_exit(milliseconds(10000)), 2) << bad.options[0] << "\n" << run.output();
    EXPECT_NE(run.output().find("modkit-run: " + bad.message), std::string::npos) << run.output();
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
