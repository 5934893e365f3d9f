// The cgroup pieces of containment, one at a time: finding the host's cgroup
// from /proc text, the per-instance cell (signalling its members, the
// freeze-and-kill fallback for kernels without cgroup.kill), and the parent
// a backend is given (bad ones refused, stale directories of exited hosts
// cleaned, populated ones left alone). Real cgroups are made only under a
// parent of the test's own (tests/support/test_cgroup.hpp).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <functional>
#include <string>
#include <thread>

#include "collecting_sink.hpp"
#include "modkit/modkit.hpp"
#include "posix/cgroup.hpp"
#include "posix/cgroup_containment.hpp"
#include "test_cgroup.hpp"

namespace modkit {
namespace {

using namespace std::chrono_literals;
using testing::TestCgroupParent;

// --- Finding the host's cgroup ----------------------------------------------

constexpr const char* kHybridCgroup =
    "9:name=systemd:/\n4:memory:/process_api/8a03\n1:cpu:/\n0::/apps/host\n";
constexpr const char* kHybridMountinfo =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";

TEST(CgroupDiscovery, HybridHierarchyUsesTheV2Line) {
  EXPECT_EQ(posix::cgroup_directory_from(kHybridCgroup, kHybridMountinfo), "/sys/fs/cgroup/unified/apps/host");
}

TEST(CgroupDiscovery, RootCgroupIsTheMountPointItself) {
  EXPECT_EQ(posix::cgroup_directory_from("0::/\n", kHybridMountinfo), "/sys/fs/cgroup/unified");
}

TEST(CgroupDiscovery, MountOfASubtreeIsResolvedAgainstItsRoot) {
  // A container that sees only /lxc/box of the hierarchy, mounted at /sys/fs/cgroup.
  const char* mountinfo = "50 40 0:40 /lxc/box /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
  EXPECT_EQ(posix::cgroup_directory_from("0::/lxc/box/app\n", mountinfo), "/sys/fs/cgroup/app");
  EXPECT_EQ(posix::cgroup_directory_from("0::/lxc/boxer\n", mountinfo), "") << "/lxc/boxer is not under /lxc/box";
}

TEST(CgroupDiscovery, EscapedMountPointIsDecoded) {
  const char* mountinfo = "50 40 0:40 / /mnt/cgroup\\040two rw - cgroup2 none rw\n";
  EXPECT_EQ(posix::cgroup_directory_from("0::/a\n", mountinfo), "/mnt/cgroup two/a");
}

TEST(CgroupDiscovery, NoV2HierarchyMeansNone) {
  EXPECT_EQ(posix::cgroup_directory_from("4:memory:/x\n1:cpu:/\n", kHybridMountinfo), "") << "v1 only";
  EXPECT_EQ(posix::cgroup_directory_from("0::/x\n",
                                         "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"),
            "")
      << "a v2 line but no v2 mount";
  EXPECT_EQ(posix::cgroup_directory_from("", ""), "");
}

// --- One cell ------------------------------------------------------------------

Result<std::unique_ptr<posix::CgroupCell>> create_cell(const TestCgroupParent& parent, const std::string& name) {
  int directory = open(parent.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  auto cell = posix::CgroupCell::create(directory, parent.path(), name);
  close(directory);
  return cell;
}

// Starts `/bin/sh -c script` inside `cell` (the child joins before exec).
pid_t start_in(posix::CgroupCell& cell, const char* script) {
  int procs = cell.procs_fd();
  pid_t pid = fork();
  if (pid == 0) {
    if (write(procs, "0", 1) != 1) _exit(126);
    execl("/bin/sh", "sh", "-c", script, static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

TEST(CgroupCell, FreezeAndKillFallbackEndsEveryMember) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  auto cell = create_cell(parent, "cell");
  ASSERT_TRUE(cell) << cell.error();
  // 40 sleepers, some of them in sessions of their own.
  pid_t shell = start_in(**cell, "for i in $(seq 20); do sleep 30 & setsid sleep 30 & done; wait");
  ASSERT_GT(shell, 0);
  ASSERT_TRUE(wait_for([&] { return (*cell)->count() >= 41; }, 5s)) << (*cell)->count();
  EXPECT_TRUE((*cell)->populated());
  EXPECT_TRUE((*cell)->kill_by_freezing());
  EXPECT_TRUE(wait_for([&] { return !(*cell)->populated(); }, 3s)) << (*cell)->count() << " left";
  int status = 0;
  ASSERT_EQ(waitpid(shell, &status, 0), shell);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_EQ(testing::read_text_file(parent.path() + "/cell/cgroup.freeze"), "0\n") << "thawed afterwards";
  EXPECT_TRUE((*cell)->remove());
}

TEST(CgroupCell, SignalMembersSkipsTheGivenGroupAndReachesTheRest) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  auto cell = create_cell(parent, "cell");
  ASSERT_TRUE(cell) << cell.error();
  // The shell leads a group of its own; two setsid sleepers are outside it.
  int procs = (*cell)->procs_fd();
  pid_t shell = fork();
  if (shell == 0) {
    setpgid(0, 0);
    if (write(procs, "0", 1) != 1) _exit(126);
    execl("/bin/sh", "sh", "-c", "setsid sleep 30 & setsid sleep 30 & wait; exec sleep 30", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Both sleepers have left the shell's group (setsid runs before their exec).
  auto outside_group = [&] {
    int outside = 0;
    std::string pids = testing::read_text_file(parent.path() + "/cell/cgroup.procs");
    for (std::size_t at = 0; at < pids.size();) {
      std::size_t end = pids.find('\n', at);
      pid_t pid = std::stoi(pids.substr(at, end - at));
      std::string comm = testing::read_text_file("/proc/" + std::to_string(pid) + "/comm");
      if (getpgid(pid) != shell && comm == "sleep\n") ++outside;
      at = end == std::string::npos ? pids.size() : end + 1;
    }
    return outside;
  };
  ASSERT_TRUE(wait_for([&] { return (*cell)->count() == 3 && outside_group() == 2; }, 5s)) << (*cell)->count();
  EXPECT_EQ((*cell)->signal_members({SIGTERM}, shell), 2) << "the two outside the shell's group, not the shell";
  EXPECT_TRUE(wait_for([&] { return (*cell)->count() == 1; }, 3s)) << "the sleepers ended";
  EXPECT_TRUE((*cell)->kill_all());
  int status = 0;
  ASSERT_EQ(waitpid(shell, &status, 0), shell);
  EXPECT_TRUE(wait_for([&] { return !(*cell)->populated(); }, 3s));
}

// The graceful step pins members with pidfds: a few dozen at a time, so a
// module with many processes neither runs the host out of descriptors nor
// goes unsignalled when the host has only a few to spare.
TEST(CgroupCell, SignallingManyMembersNeedsOnlyAFewDescriptors) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  auto cell = create_cell(parent, "cell");
  ASSERT_TRUE(cell) << cell.error();
  pid_t shell = start_in(**cell, "for i in $(seq 150); do setsid sleep 30 & done; wait");
  ASSERT_TRUE(wait_for([&] { return (*cell)->count() >= 151; }, 10s)) << (*cell)->count();
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  int highest = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (fcntl(fd, F_GETFD) != -1) highest = fd;
  }
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(highest) + 48;  // room for a batch of pidfds and a listing, not for 150
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  int signalled = (*cell)->signal_members({SIGTERM}, 0);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(signalled, 151) << "the shell and every sleeper get the signal";
  EXPECT_TRUE(wait_for([&] { return (*cell)->count() == 0; }, 5s)) << (*cell)->count() << " left";
  EXPECT_TRUE((*cell)->kill_all());
  waitpid(shell, nullptr, 0);
}

TEST(CgroupCell, CreatingOneThatExistsNamesIt) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  auto first = create_cell(parent, "twice");
  ASSERT_TRUE(first);
  auto second = create_cell(parent, "twice");
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, std::errc::file_exists);
  EXPECT_NE(second.error().message.find(parent.path() + "/twice"), std::string::npos) << second.error().message;
}

// --- The parent a backend is given --------------------------------------------

// Field 22 of /proc/<pid>/stat, as modkit names its directories.
std::string posix_start_time(pid_t pid) {
  std::string stat = testing::read_text_file("/proc/" + std::to_string(pid) + "/stat");
  std::size_t at = stat.rfind(')');
  if (at == std::string::npos) return "?";
  std::string rest = stat.substr(at + 2);
  for (int field = 3; field < 22; ++field) rest = rest.substr(rest.find(' ') + 1);
  return rest.substr(0, rest.find(' '));
}

Result<std::unique_ptr<LocalProcessBackend>> backend_in(const std::string& parent,
                                                         std::shared_ptr<testing::CollectingSink> sink,
                                                         Containment mode = Containment::Automatic) {
  LocalProcessOptions options;
  options.containment = mode;
  options.cgroup_parent = parent;
  return LocalProcessBackend::create(CancellationToken(), std::move(sink), options);
}

TEST(CgroupParent, NotACgroupDirectoryIsRefusedByName) {
  auto sink = std::make_shared<testing::CollectingSink>();
  for (const char* bad : {"/tmp", "/nonexistent/modkit", "/sys/fs/cgroup/unified/cgroup.procs"}) {
    auto backend = backend_in(bad, sink);
    ASSERT_FALSE(backend) << bad;
    EXPECT_EQ(backend.error().code, std::errc::invalid_argument) << bad;
    EXPECT_NE(backend.error().message.find(bad), std::string::npos) << backend.error().message;
  }
}

TEST(CgroupParent, BackendMakesOneDirectoryAndRemovesIt) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  auto sink = std::make_shared<testing::CollectingSink>();
  {
    auto backend = backend_in(parent.path(), sink, Containment::Required);
    ASSERT_TRUE(backend) << backend.error();
    auto made = testing::subdirectories(parent.path());
    ASSERT_EQ(made.size(), 1u);
    EXPECT_EQ(made[0].rfind("modkit-" + std::to_string(getpid()) + "-", 0), 0u) << made[0];
  }
  EXPECT_TRUE(parent.descendants().empty()) << "left: " << parent.descendants().size();
}

TEST(CgroupParent, StaleDirectoriesOfEndedBackendsAreRemovedAndPopulatedOnesLeftAlone) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  // A backend's directory is in use while its lock is held (the kernel drops
  // it when the host dies); the pid in the name decides nothing, as a host in
  // another pid namespace may have the same. Here a live backend's directory
  // names a pid that does not exist, and ended ones name live pids.
  pid_t gone = fork();
  if (gone == 0) _exit(0);
  ASSERT_EQ(waitpid(gone, nullptr, 0), gone);
  std::string empty_one = parent.path() + "/modkit-1-" + posix_start_time(1) + "-1";
  std::string full_one = parent.path() + "/modkit-" + std::to_string(getpid()) + "-1-2";
  std::string alive_one = parent.path() + "/modkit-" + std::to_string(gone) + "-1-1";
  std::string foreign = parent.path() + "/someone-else";
  std::string look_alike = parent.path() + "/modkit-test-1-2";  // not a name modkit gives
  for (const auto& directory : {empty_one, empty_one + "/cell", empty_one + "/cell/nested", full_one,
                                full_one + "/cell", full_one + "/cell/worker-slot", alive_one, alive_one + "/cell",
                                foreign, look_alike}) {
    ASSERT_EQ(mkdir(directory.c_str(), 0755), 0) << directory;
  }
  int alive_lock = open(alive_one.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_EQ(flock(alive_lock, LOCK_EX | LOCK_NB), 0);
  auto cell_fd = open((full_one + "/cell/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(cell_fd, 0);
  pid_t sleeper = fork();
  if (sleeper == 0) {
    if (write(cell_fd, "0", 1) != 1) _exit(126);
    execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(cell_fd);
  ASSERT_TRUE(wait_for([&] { return testing::read_text_file(full_one + "/cell/cgroup.procs").size() > 1; }, 5s));

  auto sink = std::make_shared<testing::CollectingSink>();
  auto backend = backend_in(parent.path(), sink);
  ASSERT_TRUE(backend) << backend.error();
  EXPECT_NE(access(empty_one.c_str(), F_OK), 0) << "an empty directory of an exited host is removed";
  EXPECT_EQ(access((full_one + "/cell").c_str(), F_OK), 0) << "a populated one is not ours to empty";
  EXPECT_EQ(access((full_one + "/cell/worker-slot").c_str(), F_OK), 0) << "nor anything inside it";
  EXPECT_EQ(access((alive_one + "/cell").c_str(), F_OK), 0) << "a live backend's directory is left alone";
  EXPECT_EQ(access(foreign.c_str(), F_OK), 0) << "what modkit did not make is left alone";
  EXPECT_EQ(access(look_alike.c_str(), F_OK), 0) << "a name that only starts like modkit's is left alone";
  EXPECT_EQ(kill(sleeper, 0), 0) << "and its process was not signalled";
  bool reported = false;
  for (const auto& record : sink->records()) {
    if (record.line.find(full_one + "/cell") != std::string::npos && record.line.find("1 process") != std::string::npos) {
      reported = true;
    }
  }
  EXPECT_TRUE(reported) << "the populated stale cgroup is named in a record";
  (*backend).reset();
  kill(sleeper, SIGKILL);
  waitpid(sleeper, nullptr, 0);
  close(alive_lock);
}

// Backends made and destroyed at once on one parent: each one's clean-up
// of ended backends must never take the directory another has just made.
TEST(CgroupParent, BackendsMadeConcurrentlyAreAllContained) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  std::atomic<int> failures{0};
  std::string first_failure;
  std::mutex mutex;
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 40; ++round) {
        auto backend = backend_in(parent.path(), std::make_shared<testing::CollectingSink>(), Containment::Required);
        if (!backend) {
          std::lock_guard<std::mutex> lock(mutex);
          if (failures++ == 0) first_failure = backend.error().message;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0) << first_failure;
  EXPECT_TRUE(parent.descendants().empty());
}

TEST(CgroupParent, ThreadedCgroupIsRefusedAsAParent) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  std::string threaded = parent.path() + "/threaded";
  ASSERT_EQ(mkdir(threaded.c_str(), 0755), 0);
  ASSERT_TRUE(testing::write_text_file(threaded + "/cgroup.type", "threaded"));  // the parent becomes "domain threaded"
  auto sink = std::make_shared<testing::CollectingSink>();
  for (const auto& bad : {threaded, parent.path()}) {
    auto backend = backend_in(bad, sink);
    ASSERT_FALSE(backend) << bad << " was accepted: every spawn under it would fail";
    EXPECT_EQ(backend.error().code, std::errc::invalid_argument);
    EXPECT_NE(backend.error().message.find("threaded"), std::string::npos) << backend.error().message;
  }
}

TEST(CgroupParent, RelativeParentIsResolvedOnceAtCreate) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  char* saved = getcwd(nullptr, 0);
  ASSERT_EQ(chdir(testing::cgroup2_mount().c_str()), 0);
  std::string relative = parent.path().substr(testing::cgroup2_mount().size() + 1);
  auto sink = std::make_shared<testing::CollectingSink>();
  auto backend = backend_in(relative, sink, Containment::Required);
  ASSERT_EQ(chdir("/"), 0);  // the host moves on
  ASSERT_TRUE(backend) << backend.error();
  OopModuleConfig config("relative", BackendKind::LocalProcess);
  config.binary = "/bin/sleep";
  config.args = {"30"};
  auto handle = (*backend)->spawn_instance(config);
  EXPECT_TRUE(handle) << handle.error();
  if (handle) {
    auto listed = (*backend)->list_instances("relative");
    EXPECT_TRUE(listed && listed->size() == 1 && listed->front().processes == std::optional<std::int64_t>(1));
    EXPECT_TRUE((*backend)->stop_instance(*handle));
  }
  (*backend).reset();
  EXPECT_TRUE(parent.descendants().empty()) << parent.descendants().size() << " left";
  ASSERT_EQ(chdir(saved), 0);
  std::free(saved);
}

}  // namespace
}  // namespace modkit
