// Spawning on POSIX: exec failures reported synchronously with nothing left
// behind, PATH lookup, the child's descriptors, signal state, process group,
// environment and working directory.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "../behaviour/behaviour_support.hpp"
#include "process_probe.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::behaviour;
using namespace modkit::testing::probe;

namespace {

std::string errno_text(int error) { return std::generic_category().message(error); }

std::string directory_of(const std::string& path) { return path.substr(0, path.rfind('/')); }

// A temporary directory, removed (when empty) at the end of the test.
struct TempDir {
  TempDir() {
    char pattern[] = "/tmp/modkit-test-XXXXXX";
    path = mkdtemp(pattern);
  }
  ~TempDir() {
    for (const auto& file : files) unlink(file.c_str());
    rmdir(path.c_str());
  }
  std::string file(const std::string& name, mode_t mode) {
    std::string full = path + "/" + name;
    int fd = open(full.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd >= 0) {
      static const char kScript[] = "#!/bin/sh\necho hi\n";
      (void)!write(fd, kScript, sizeof kScript - 1);
      close(fd);
    }
    chmod(full.c_str(), mode);
    files.push_back(full);
    return full;
  }
  std::string path;
  std::vector<std::string> files;
};

// Checks that a failed spawn left nothing behind: no child (zombie or not),
// no descriptor, nothing listed.
class SpawnFailure : public ::testing::Test {
 protected:
  void SetUp() override {
    fds_before_ = open_fds();
    ASSERT_TRUE(children_of_self().empty());
  }
  void expect_failure(const OopModuleConfig& config, std::errc code, const std::vector<std::string>& fragments) {
    auto result = f_.backend->spawn_instance(config);
    ASSERT_FALSE(result) << "spawned " << *result;
    EXPECT_EQ(result.error().code, std::make_error_code(code)) << result.error();
    for (const auto& fragment : fragments) {
      EXPECT_NE(result.error().message.find(fragment), std::string::npos)
          << "'" << fragment << "' missing from: " << result.error().message;
    }
    EXPECT_TRUE(children_of_self().empty()) << "a child (or zombie) was left behind";
    EXPECT_TRUE(new_fds_since(fds_before_).empty()) << "descriptor leak: " << describe_fds();
    EXPECT_TRUE(f_.backend->list_instances(config.name)->empty());
  }
  Fixture f_;
  std::vector<int> fds_before_;
};

TEST_F(SpawnFailure, MissingBinaryNamesPathAndErrno) {
  OopModuleConfig config("ghost", BackendKind::LocalProcess);
  config.binary = "/nonexistent/modkit/no-such-binary";
  expect_failure(config, std::errc::no_such_file_or_directory,
                 {"ghost", "/nonexistent/modkit/no-such-binary", errno_text(ENOENT)});
}

TEST_F(SpawnFailure, NonExecutableFileNamesPathAndErrno) {
  TempDir dir;
  std::string path = dir.file("not-executable", 0644);
  OopModuleConfig config("noexec", BackendKind::LocalProcess);
  config.binary = path;
  expect_failure(config, std::errc::permission_denied, {path, errno_text(EACCES)});
}

TEST_F(SpawnFailure, DirectoryNamesPathAndErrno) {
  TempDir dir;
  OopModuleConfig config("dir", BackendKind::LocalProcess);
  config.binary = dir.path;
  expect_failure(config, std::errc::permission_denied, {dir.path, errno_text(EACCES), "directory"});
}

TEST_F(SpawnFailure, BareNameNotOnPath) {
  OopModuleConfig config("nameless", BackendKind::LocalProcess);
  config.binary = "modkit-no-such-program-on-path";
  expect_failure(config, std::errc::no_such_file_or_directory, {"modkit-no-such-program-on-path", "PATH"});
}

TEST_F(SpawnFailure, MissingWorkingDirectoryStartsNothing) {
  OopModuleConfig config = child_config("cwd", {"say", "started"});
  config.working_directory = "/nonexistent/modkit/workdir";
  expect_failure(config, std::errc::no_such_file_or_directory, {"/nonexistent/modkit/workdir", errno_text(ENOENT)});
}

TEST_F(SpawnFailure, WorkingDirectoryThatIsAFileStartsNothing) {
  TempDir dir;
  std::string path = dir.file("plain-file", 0644);
  OopModuleConfig config = child_config("cwd", {"say", "started"});
  config.working_directory = path;
  expect_failure(config, std::errc::not_a_directory, {path, "not a directory"});
}

TEST_F(SpawnFailure, ManyFailuresLeakNothing) {
  OopModuleConfig config("ghost", BackendKind::LocalProcess);
  config.binary = "/nonexistent/modkit/no-such-binary";
  for (int i = 0; i < 50; ++i) ASSERT_FALSE(f_.backend->spawn_instance(config));
  expect_failure(config, std::errc::no_such_file_or_directory, {});
}

TEST(Spawn, BareNameIsLookedUpOnTheChildsPath) {
  Fixture f;
  std::string child = test_child_path();
  OopModuleConfig config = child_config("onpath", {"say", "found on PATH"});
  config.binary = child.substr(child.rfind('/') + 1);
  config.env["PATH"] = "/nonexistent/modkit:" + directory_of(child) + ":/usr/bin:/bin";
  ChildRun run = run_to_end(f, config);
  EXPECT_EQ(run.out, (std::vector<std::string>{"found on PATH"}));
}

TEST(Spawn, BareNameIsLookedUpOnTheHostsPath) {
  Fixture f;
  OopModuleConfig config("true", BackendKind::LocalProcess);
  config.binary = "true";  // /bin/true or /usr/bin/true on the host's PATH
  auto handle = f.backend->spawn_instance(config);
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(wait_for_exit_event(*f.sink, handle->instance_id));
  EXPECT_TRUE(contains(library_events(*f.sink, handle->instance_id), "exited with code 0"));
}

TEST(Spawn, ChildGetsOnlyStdioWithStdinOnDevNull) {
  // Descriptors the host opened without O_CLOEXEC, low and high, must not leak.
  int leaky = open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  ASSERT_EQ(dup2(leaky, 100), 100);
  ASSERT_EQ(dup2(leaky, 1000), 1000);
  Fixture f;
  ChildRun run = run_to_end(f, child_config("fds", {"fds", "fd-target", "0", "fd-target", "1", "fd-target", "2",
                                               "read-stdin"}));
  close(leaky);
  close(100);
  close(1000);
  ASSERT_EQ(run.out.size(), 5u);
  EXPECT_EQ(run.out[0], "fds 0 1 2");
  EXPECT_EQ(run.out[1], "fd 0 -> /dev/null");
  EXPECT_EQ(run.out[2].rfind("fd 1 -> pipe:", 0), 0u) << run.out[2];
  EXPECT_EQ(run.out[3].rfind("fd 2 -> pipe:", 0), 0u) << run.out[3];
  EXPECT_NE(run.out[2], run.out[3]);  // two separate pipes
  EXPECT_EQ(run.out[4], "stdin eof after 0 bytes");
}

TEST(Spawn, ChildGetsOnlyStdioWhenTheHostClosedItsOwnStdio) {
  // With the host's 0..2 closed, the pipes land on 0..2 in the host; the
  // child must still get the right ones.
  int saved[3];
  for (int fd = 0; fd < 3; ++fd) saved[fd] = fcntl(fd, F_DUPFD_CLOEXEC, 10);
  for (int fd = 0; fd < 3; ++fd) close(fd);
  ChildRun run;
  {
    Fixture f;
    run = run_to_end(f, child_config("nostdio", {"fds", "fd-target", "0", "stderr-lines", "1"}));
  }
  for (int fd = 0; fd < 3; ++fd) {
    if (saved[fd] >= 0) {
      dup2(saved[fd], fd);
      close(saved[fd]);
    }
  }
  EXPECT_EQ(run.out, (std::vector<std::string>{"fds 0 1 2", "fd 0 -> /dev/null"}));
  EXPECT_EQ(run.err, (std::vector<std::string>{"err 1"}));
}

TEST(Spawn, HugeDescriptorLimitIsFine) {
  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  struct rlimit raised = saved;
  raised.rlim_cur = saved.rlim_max;
  setrlimit(RLIMIT_NOFILE, &raised);
  int high = static_cast<int>(raised.rlim_cur > 100000 ? 100000 : raised.rlim_cur) - 1;
  int leaky = open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  bool placed = dup2(leaky, high) == high;
  Fixture f;
  auto start = Clock::now();
  ChildRun run = run_to_end(f, child_config("limits", {"fds"}));
  double elapsed = seconds_since(start);
  close(leaky);
  if (placed) close(high);
  setrlimit(RLIMIT_NOFILE, &saved);
  EXPECT_EQ(run.out, (std::vector<std::string>{"fds 0 1 2"}));
  EXPECT_LT(elapsed, 5.0);
}

TEST(Spawn, ChildHasDefaultSignalsAndAnEmptyMask) {
  // The host thread blocks some signals and the process ignores others: the
  // child must start clean anyway.
  sigset_t block, previous_mask;
  sigemptyset(&block);
  for (int s : {SIGUSR1, SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGALRM}) sigaddset(&block, s);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &block, &previous_mask), 0);
  struct sigaction ignore {}, old_usr2{}, old_pipe{}, old_quit{};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGUSR2, &ignore, &old_usr2);
  sigaction(SIGPIPE, &ignore, &old_pipe);
  sigaction(SIGQUIT, &ignore, &old_quit);

  Fixture f;
  ChildRun run = run_to_end(f, child_config("signals", {"sigstate"}));

  sigset_t after;
  pthread_sigmask(SIG_SETMASK, nullptr, &after);
  sigaction(SIGUSR2, &old_usr2, nullptr);
  sigaction(SIGPIPE, &old_pipe, nullptr);
  sigaction(SIGQUIT, &old_quit, nullptr);
  pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);

  EXPECT_EQ(run.out, (std::vector<std::string>{"SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"}));
  // spawn restored the host thread's own mask
  for (int s : {SIGUSR1, SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGALRM}) EXPECT_EQ(sigismember(&after, s), 1) << s;
  EXPECT_EQ(sigismember(&after, SIGUSR2), 0);
}

TEST(Spawn, ChildLeadsItsOwnProcessGroup) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("group", {"pgid"}));
  ASSERT_EQ(run.out.size(), 1u);
  ASSERT_TRUE(run.handle.pid.has_value());
  std::string pid = std::to_string(*run.handle.pid);
  EXPECT_EQ(run.out[0], "pgid " + pid + " pid " + pid);
  EXPECT_NE(getpgrp(), static_cast<pid_t>(*run.handle.pid));
}

TEST(Spawn, EnvironmentIsInheritedPlusOverrides) {
  setenv("MODKIT_TEST_INHERITED", "from host", 1);
  setenv("MODKIT_TEST_OVERRIDDEN", "from host", 1);
  Fixture f;
  OopModuleConfig config = child_config("env", {"env", "MODKIT_TEST_INHERITED", "env", "MODKIT_TEST_OVERRIDDEN",
                                                "env", "MODKIT_TEST_ADDED", "env", "MODKIT_TEST_EMPTY"});
  config.env["MODKIT_TEST_OVERRIDDEN"] = "from config";
  config.env["MODKIT_TEST_ADDED"] = "a=b c";
  config.env["MODKIT_TEST_EMPTY"] = "";
  ChildRun run = run_to_end(f, config);
  unsetenv("MODKIT_TEST_INHERITED");
  unsetenv("MODKIT_TEST_OVERRIDDEN");
  EXPECT_EQ(run.out, (std::vector<std::string>{"env MODKIT_TEST_INHERITED=from host",
                                               "env MODKIT_TEST_OVERRIDDEN=from config",
                                               "env MODKIT_TEST_ADDED=a=b c", "env MODKIT_TEST_EMPTY="}));
}

TEST(Spawn, ClearEnvironmentPassesOnlyTheConfigsEntries) {
  setenv("MODKIT_TEST_INHERITED", "from host", 1);
  Fixture f;
  OopModuleConfig config =
      child_config("env", {"env-count", "env", "MODKIT_TEST_INHERITED", "env", "PATH", "env", "ONLY"});
  config.clear_environment = true;
  config.env["ONLY"] = "me";
  ChildRun run = run_to_end(f, config);
  unsetenv("MODKIT_TEST_INHERITED");
  EXPECT_EQ(run.out, (std::vector<std::string>{"env-count 1", "env MODKIT_TEST_INHERITED unset", "env PATH unset",
                                               "env ONLY=me"}));
}

TEST(Spawn, WorkingDirectoryIsUsed) {
  TempDir dir;
  char resolved[PATH_MAX];
  ASSERT_NE(realpath(dir.path.c_str(), resolved), nullptr);
  Fixture f;
  OopModuleConfig config = child_config("cwd", {"cwd"});
  config.working_directory = dir.path;
  ChildRun run = run_to_end(f, config);
  EXPECT_EQ(run.out, (std::vector<std::string>{std::string("cwd ") + resolved}));
}

// A program path with a directory but not absolute is relative to the
// working directory the child gets (the Windows backend does the same).
TEST(Spawn, RelativeProgramPathIsResolvedInTheWorkingDirectory) {
  TempDir dir;
  std::string sub = dir.path + "/sub";
  ASSERT_EQ(mkdir(sub.c_str(), 0755), 0);
  std::string link = sub + "/tool";
  ASSERT_EQ(symlink(test_child_path().c_str(), link.c_str()), 0);
  Fixture f;
  OopModuleConfig config = child_config("relative", {"say", "from the working directory"});
  config.binary = "sub/tool";
  config.working_directory = dir.path;
  ChildRun run = run_to_end(f, config);
  unlink(link.c_str());
  rmdir(sub.c_str());
  EXPECT_EQ(run.out, (std::vector<std::string>{"from the working directory"}));
}

TEST(Spawn, WithoutWorkingDirectoryTheHostsIsUsed) {
  char here[PATH_MAX];
  ASSERT_NE(getcwd(here, sizeof here), nullptr);
  Fixture f;
  ChildRun run = run_to_end(f, child_config("cwd", {"cwd"}));
  EXPECT_EQ(run.out, (std::vector<std::string>{std::string("cwd ") + here}));
}

TEST(Spawn, ArgumentsArePassedVerbatim) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("argv", {"argv", "", "two words", "quote\"s", "$HOME", "caf\xC3\xA9"}));
  EXPECT_EQ(run.out, (std::vector<std::string>{"arg ", "arg 74776f20776f726473", "arg 71756f74652273",
                                               "arg 24484f4d45", "arg 636166c3a9"}));
}

}  // namespace
