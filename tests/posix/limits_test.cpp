// ResourceLimits and Privileges on Linux, for real: the rlimits, the identity
// change, no_new_privs, the umask, the parent-death signal, the reasons and
// the usage. The cgroup limits are in cgroup_limits_test.cpp (they need
// controllers these machines do not delegate).
#include <gtest/gtest.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <thread>

#include "../behaviour/behaviour_support.hpp"
#include "test_cgroup.hpp"

namespace modkit::testing::behaviour {
namespace {

using namespace std::chrono_literals;

// Ids no account on a test machine uses, so RLIMIT_NPROC counts only ours.
constexpr std::uint32_t kUser = 54321;
constexpr std::uint32_t kGroup = 54322;

int pidfd_of(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Whether the process behind `pidfd` ended within `timeout`.
bool ends_within(int pidfd, std::chrono::milliseconds timeout) {
  pollfd entry{pidfd, POLLIN, 0};
  return poll(&entry, 1, static_cast<int>(timeout.count())) == 1;
}

struct Ended {
  ChildRun run;
  std::optional<ExitStatus> status;
};

Ended run_with_log(const OopModuleConfig& config) {
  ExitLog log;
  Fixture f(options_with(log));
  Ended ended;
  ended.run = run_to_end(f, config);
  if (ended.run.ok) ended.status = log.wait_for(ended.run.handle.instance_id);
  return ended;
}

std::string first_line(const std::vector<std::string>& lines) { return lines.empty() ? "" : lines[0]; }

// A copy of the test child that another user can run: the build directory
// may sit below one only root may enter (CI's clean clone is in a 0700
// mktemp directory). `mode` 04755 makes it setuid (to its owner, root).
class ChildCopy {
 public:
  explicit ChildCopy(mode_t mode = 0755) {
    char directory[] = "/tmp/modkit-copy-XXXXXX";
    if (!mkdtemp(directory)) return;
    directory_ = directory;
    path_ = directory_ + "/test_child";
    std::ifstream in(test_child_path(), std::ios::binary);
    std::ofstream out(path_, std::ios::binary);
    out << in.rdbuf();
    out.close();
    ok_ = in && out && chmod(directory, 0755) == 0 && chown(path_.c_str(), 0, 0) == 0 && chmod(path_.c_str(), mode) == 0;
  }
  ~ChildCopy() {
    if (!path_.empty()) unlink(path_.c_str());
    if (!directory_.empty()) rmdir(directory_.c_str());
  }
  ChildCopy(const ChildCopy&) = delete;
  ChildCopy& operator=(const ChildCopy&) = delete;
  bool ok() const { return ok_; }
  const std::string& path() const { return path_; }

 private:
  std::string directory_, path_;
  bool ok_ = false;
};

// The test child, runnable as kUser.
OopModuleConfig as_other_user(const ChildCopy& copy, const std::string& name, std::vector<std::string> args) {
  OopModuleConfig config = child_config(name, std::move(args));
  config.binary = copy.path();
  config.privileges.user = kUser;
  config.privileges.group = kGroup;
  return config;
}

TEST(Limits, AnAllocationPastTheAddressSpaceFailsAndTheModuleExitsWithItsOwnCode) {
  OopModuleConfig config = child_config("hog", {"alloc-mb", "1024"});
  config.limits.address_space = 256ull << 20;
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(ended.status->kind, ExitStatus::Kind::Exited);
  EXPECT_EQ(ended.status->code, 42);
  EXPECT_EQ(ended.status->reason, ExitStatus::Reason::Exited);
  ASSERT_EQ(ended.run.out.size(), 1u);
  EXPECT_EQ(ended.run.out[0].rfind("allocation failed at ", 0), 0u) << ended.run.out[0];
  EXPECT_LT(std::atoi(ended.run.out[0].c_str() + 21), 256);
  // The host is not bound by it.
  const std::size_t size = 512u << 20;
  void* block = std::malloc(size);
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, size);
  std::free(block);
  // Without the limit the same module gets its memory.
  auto free_run = run_with_log(child_config("hog", {"alloc-mb", "300"}));
  ASSERT_TRUE(free_run.status);
  EXPECT_EQ(free_run.status->code, 0);
  EXPECT_EQ(first_line(free_run.run.out), "allocated 300 MiB");
}

TEST(Limits, ASpinningModuleEndsWithTheCpuLimitReasonWithinTheLimitAndSlack) {
  OopModuleConfig config = child_config("spinner", {"spin", "30"});
  config.limits.cpu_time = std::chrono::seconds(1);
  auto start = Clock::now();
  auto ended = run_with_log(config);
  double took = seconds_since(start);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(ended.status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(ended.status->code, SIGXCPU);
  EXPECT_EQ(ended.status->reason, ExitStatus::Reason::CpuLimit);
  EXPECT_GE(took, 0.9);
  EXPECT_LT(took, 4.0) << "a one-second CPU limit took " << took << " s";
  ASSERT_TRUE(ended.status->usage);
  EXPECT_GE(ended.status->usage->user_cpu + ended.status->usage->system_cpu, 900ms);
}

TEST(Limits, AModuleThatCatchesSigxcpuIsKilledASecondLaterStillForItsCpuLimit) {
  // The module ignores SIGXCPU (ignore-signal is inherited through exec by
  // the shell-less test child only if it sets it itself: "ignore-xcpu").
  OopModuleConfig config = child_config("stubborn-spinner", {"ignore-xcpu", "spin", "30"});
  config.limits.cpu_time = std::chrono::seconds(1);
  auto start = Clock::now();
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(ended.status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(ended.status->code, SIGKILL);
  EXPECT_FALSE(ended.status->forced);
  EXPECT_EQ(ended.status->reason, ExitStatus::Reason::CpuLimit);
  EXPECT_LT(seconds_since(start), 5.0);
}

TEST(Limits, OpenFilesPastTheLimitGiveEmfile) {
  OopModuleConfig config = child_config("opener", {"open-until-fail", "10000"});
  config.limits.open_files = 16;
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  std::string line = first_line(ended.run.out);
  ASSERT_EQ(line.rfind("opened ", 0), 0u) << line;
  EXPECT_NE(line.find("errno EMFILE"), std::string::npos) << line;
  EXPECT_LE(std::atoi(line.c_str() + 7), 13);  // 16 minus stdin, stdout, stderr
}

TEST(Limits, UserProcessesPastTheLimitGiveEagain) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: RLIMIT_NPROC binds no root process, so the module runs as uid " << kUser;
  ChildCopy copy;
  ASSERT_TRUE(copy.ok());
  OopModuleConfig config = as_other_user(copy, "forker", {"fork-until-fail", "64"});
  config.limits.user_processes = 4;
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  std::string line = first_line(ended.run.out);
  ASSERT_EQ(line.rfind("forked ", 0), 0u) << line;
  EXPECT_NE(line.find("errno EAGAIN"), std::string::npos) << line;
  EXPECT_LE(std::atoi(line.c_str() + 7), 3);
}

TEST(Limits, UsageIsReportedWithTheExit) {
  auto ended = run_with_log(child_config("busy", {"alloc-mb", "64", "burn-cpu", "0.3"}));
  ASSERT_TRUE(ended.status);
  ASSERT_TRUE(ended.status->usage);
  const ResourceUsage& usage = *ended.status->usage;
  EXPECT_GE(usage.user_cpu + usage.system_cpu, 200ms);
  // The host here is small (under ThreadSanitizer it is not: its shadow
  // memory is resident), so a 64 MiB module stands above it.
  struct rusage own {};
  getrusage(RUSAGE_SELF, &own);
  if (static_cast<std::uint64_t>(own.ru_maxrss) * 1024 < (48ull << 20)) {
    ASSERT_TRUE(usage.peak_memory);
    EXPECT_GE(*usage.peak_memory, 64ull << 20);
    EXPECT_LT(*usage.peak_memory, 1ull << 30);
  }
}

TEST(Limits, TheHostsOwnPeakIsNeverReportedAsTheModules) {
  // The kernel hands the spawning process's peak resident set to the child
  // at execve (fs/exec.c, exec_mmap): a host of 600 MiB would see every
  // module "peak" at 600 MiB.
  const std::size_t size = 600u << 20;
  char* block = static_cast<char*>(std::malloc(size));
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, size);
  auto ended = run_with_log(child_config("small", {"exit", "0"}));
  std::free(block);
  ASSERT_TRUE(ended.status);
  ASSERT_TRUE(ended.status->usage);
  if (ended.status->usage->peak_memory) {
    EXPECT_LT(*ended.status->usage->peak_memory, 100ull << 20);
  }
}

TEST(Limits, ASigxcpuFromElsewhereBeforeTheLimitIsNotTheCpuLimit) {
  OopModuleConfig config = child_config("signalled", {"raise", "24"});
  config.limits.cpu_time = std::chrono::seconds(30);
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(ended.status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(ended.status->code, SIGXCPU);
  EXPECT_EQ(ended.status->reason, ExitStatus::Reason::Exited);
}

TEST(Limits, ChildrensCpuTimeDoesNotMakeAnOutsideKillTheCpuLimit) {
  // Three children of 0.7 s each, waited for: 2.1 s in the rusage, under a
  // 2 s limit that counts only the module's own time. Then a SIGKILL that
  // modkit did not send.
  OopModuleConfig config = child_config("parent", {"children-burn", "3", "0.7", "raise", "9"});
  config.limits.cpu_time = std::chrono::seconds(2);
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(ended.status->code, SIGKILL);
  ASSERT_TRUE(ended.status->usage);
  EXPECT_GE(ended.status->usage->user_cpu + ended.status->usage->system_cpu, 2000ms);
  EXPECT_EQ(ended.status->reason, ExitStatus::Reason::Exited);
}

TEST(Limits, AModuleEndedByItsCpuLimitBeforeItWasReadyEndsWithTheCpuLimitReason) {
  for (int round = 0; round < 4; ++round) {
    ExitLog log;
    Fixture f(options_with(log));
    OopModuleConfig config = child_config("never-ready", {"spin", "30"});
    config.readiness.mode = Readiness::Mode::Notify;
    config.readiness.timeout = std::chrono::seconds(20);
    config.limits.cpu_time = std::chrono::seconds(1);
    auto handle = f.backend->spawn_instance(config);
    ASSERT_FALSE(handle);
    EXPECT_NE(handle.error().message.find("killed by signal 24"), std::string::npos) << handle.error().message;
    auto status = log.wait_for_any();
    ASSERT_TRUE(status);
    EXPECT_EQ(status->reason, ExitStatus::Reason::CpuLimit) << "round " << round;
  }
}

TEST(Limits, RequiredUserProcessesForAModuleRunningAsRootIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "the module runs as root only when the host does";
  Fixture f;
  OopModuleConfig config = child_config("rootforker", {"exit", "0"});
  config.limits.user_processes = 4;
  auto handle = f.backend->spawn_instance(config);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::not_supported));
  EXPECT_NE(handle.error().message.find("limits.user_processes"), std::string::npos) << handle.error().message;
  EXPECT_NE(handle.error().message.find("root"), std::string::npos) << handle.error().message;
}

TEST(Limits, AFrozenCgroupParentIsAnErrorNotAHang) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "no writable cgroup v2 hierarchy here";
  {
    std::ofstream freeze(parent.path() + "/cgroup.freeze");
    freeze << "1";
  }
  LocalProcessOptions options = Fixture::fast_options();
  options.containment = Containment::Required;
  options.cgroup_parent = parent.path();
  auto start = Clock::now();
  std::optional<Result<InstanceHandle>> handle;
  {
    Fixture f(options);
    handle = f.backend->spawn_instance(child_config("frozen", {"exit", "0"}));
  }
  {
    std::ofstream thaw(parent.path() + "/cgroup.freeze");
    thaw << "0";
  }
  ASSERT_FALSE(*handle);
  EXPECT_NE(handle->error().message.find("frozen"), std::string::npos) << handle->error().message;
  EXPECT_LT(seconds_since(start), 5.0);
}

TEST(Limits, TheSpawnRecordNamesTheLimitsAndTheExitRecordTheUsage) {
  Fixture f;
  OopModuleConfig config = child_config("named", {"exit", "0"});
  config.limits.address_space = 512ull << 20;
  config.limits.cpu_time = std::chrono::seconds(5);
  auto run = run_to_end(f, config);
  ASSERT_TRUE(run.ok);
  auto events = library_events(*f.sink, run.handle.instance_id);
  EXPECT_TRUE(contains(events, "limits: address_space 512.0 MiB, cpu_time 5 s"));
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[events.size() - 2].rfind("used ", 0), 0u) << events[events.size() - 2];
  EXPECT_EQ(events.back(), "exited with code 0");
}

TEST(Limits, RequiredGroupLimitWithoutACgroupFailsNamingTheField) {
  LocalProcessOptions options = Fixture::fast_options();
  options.containment = Containment::Off;
  Fixture f(options);
  OopModuleConfig config = child_config("capped", {"sleep", "5"});
  config.limits.memory_max = 64ull << 20;
  config.limits.open_files = 64;
  auto handle = f.backend->spawn_instance(config);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::not_supported));
  EXPECT_NE(handle.error().message.find("limits.memory_max"), std::string::npos) << handle.error().message;
  EXPECT_EQ(handle.error().message.find("limits.open_files"), std::string::npos) << handle.error().message;
  EXPECT_TRUE(f.backend->list_instances("capped")->empty());
}

TEST(Limits, BestEffortGroupLimitWithoutACgroupRunsAndWarnsNamingTheField) {
  LocalProcessOptions options = Fixture::fast_options();
  options.containment = Containment::Off;
  Fixture f(options);
  OopModuleConfig config = child_config("capped", {"open-until-fail", "100"});
  config.limits.enforcement = ResourceLimits::Enforcement::BestEffort;
  config.limits.max_processes = 10;
  config.limits.open_files = 16;  // still applied
  auto run = run_to_end(f, config);
  ASSERT_TRUE(run.ok);
  EXPECT_NE(first_line(run.out).find("errno EMFILE"), std::string::npos) << first_line(run.out);
  bool warned = false;
  for (const auto& record : f.sink->records()) {
    if (record.instance_id == run.handle.instance_id && record.stream == LogStream::Library &&
        record.level == LogLevel::Warn && record.line.find("limits.max_processes") != std::string::npos) {
      warned = true;
    }
  }
  EXPECT_TRUE(warned);
  // The spawn record names what it runs under, not what was skipped.
  auto events = library_events(*f.sink, run.handle.instance_id);
  EXPECT_TRUE(contains(events, "(limits: open_files 16)")) << (events.empty() ? "" : events[0]);
}

// Runs `scenario` in a forked copy of this process that gave up root (uid
// and gid 65534), so that this process keeps it; returns what it wrote.
std::string run_as_unprivileged_host(const std::function<std::string()>& scenario) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  pid_t host = fork();
  if (host < 0) return "fork failed";
  if (host == 0) {
    close(fds[0]);
    std::string verdict;
    if (geteuid() == 0 && (setgroups(0, nullptr) != 0 || setresgid(65534, 65534, 65534) != 0 ||
                           setresuid(65534, 65534, 65534) != 0)) {
      verdict = "cannot drop root";
    } else {
      verdict = scenario();
    }
    (void)!write(fds[1], verdict.data(), verdict.size());
    _exit(0);
  }
  close(fds[1]);
  std::string verdict;
  char buffer[512];
  ssize_t got;
  while ((got = read(fds[0], buffer, sizeof buffer)) > 0) verdict.append(buffer, static_cast<std::size_t>(got));
  close(fds[0]);
  waitpid(host, nullptr, 0);
  return verdict;
}

TEST(Limits, AnRlimitAboveTheHostsHardLimitIsAnErrorNamingTheField) {
  std::string verdict = run_as_unprivileged_host([] {
    struct rlimit own {};
    getrlimit(RLIMIT_NOFILE, &own);
    own.rlim_max = own.rlim_cur = 256;
    if (setrlimit(RLIMIT_NOFILE, &own) != 0) return std::string("cannot lower the host's limit");
    Fixture f;
    OopModuleConfig config = child_config("greedy", {"exit", "0"});
    config.limits.open_files = 512;
    auto handle = f.backend->spawn_instance(config);
    if (handle) return std::string("spawned");
    return std::string(handle.error().code == std::make_error_code(std::errc::operation_not_permitted) ? "EPERM "
                                                                                                        : "other ") +
           handle.error().message;
  });
  ASSERT_EQ(verdict.rfind("EPERM ", 0), 0u) << verdict;
  EXPECT_NE(verdict.find("limits.open_files above the host's own hard limit"), std::string::npos) << verdict;
}

TEST(Limits, ACpuTimeEqualToTheHostsHardLimitIsHonouredWithoutTheGraceSecond) {
  // Found by a black-box review: the grace second (hard = soft + 1) went
  // above the host's hard limit and the spawn failed.
  std::string verdict = run_as_unprivileged_host([] {
    struct rlimit own {5, 5};
    if (setrlimit(RLIMIT_CPU, &own) != 0) return std::string("cannot lower the host's limit");
    ExitLog log;
    Fixture f(options_with(log));
    OopModuleConfig config("cpu", BackendKind::LocalProcess);
    config.binary = "/bin/sh";
    config.args = {"-c", "echo $(ulimit -St) $(ulimit -Ht)"};
    config.limits.cpu_time = std::chrono::seconds(5);
    auto run = run_to_end(f, config);
    return run.ok ? first_line(run.out) : std::string("spawn failed");
  });
  EXPECT_EQ(verdict, "5 5");
}

TEST(Privileges, TheModuleRunsWithTheIdentityItWasGiven) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to change identity";
  ChildCopy copy;
  ASSERT_TRUE(copy.ok());
  OopModuleConfig config = as_other_user(copy, "who", {"ids"});
  config.privileges.supplementary_groups = std::vector<std::uint32_t>{54323, 54324};
  config.privileges.no_new_privileges = true;
  config.privileges.umask = 027;
  auto ended = run_with_log(config);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(first_line(ended.run.out),
            "resuid 54321 54321 54321 resgid 54322 54322 54322 groups 54323,54324, nnp 1 umask 027");
}

TEST(Privileges, ANewIdentityDropsTheHostsSupplementaryGroups) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to change identity";
  gid_t extra = 54329;
  ASSERT_EQ(setgroups(1, &extra), 0);  // so the host has one to drop
  ChildCopy copy;
  ASSERT_TRUE(copy.ok());
  OopModuleConfig config = as_other_user(copy, "who", {"ids"});
  auto ended = run_with_log(config);
  setgroups(0, nullptr);
  ASSERT_TRUE(ended.status);
  EXPECT_EQ(first_line(ended.run.out), "resuid 54321 54321 54321 resgid 54322 54322 54322 groups  nnp 0 umask 022")
      << "(the umask is the host's: 022 expected from the test run)";
}

TEST(Privileges, WithoutOptionsTheModuleKeepsTheHostsIdentity) {
  auto ended = run_with_log(child_config("who", {"ids"}));
  ASSERT_TRUE(ended.status);
  std::string expected = "resuid " + std::to_string(getuid());
  EXPECT_EQ(first_line(ended.run.out).rfind(expected, 0), 0u) << first_line(ended.run.out);
}

TEST(Privileges, ASetuidRootProgramGainsNothingUnderNoNewPrivileges) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: makes a setuid-root program";
  struct statvfs tmp_fs {};
  ASSERT_EQ(statvfs("/tmp", &tmp_fs), 0);
  if (tmp_fs.f_flag & ST_NOSUID) GTEST_SKIP() << "/tmp is mounted nosuid: a setuid program cannot work there";
  ChildCopy copy(04755);
  ASSERT_TRUE(copy.ok()) << "cannot prepare " << copy.path();
  OopModuleConfig config = child_config("setuid", {"euid"});
  config.binary = copy.path();
  config.privileges.user = kUser;
  config.privileges.group = kGroup;
  // Without no_new_privs the copy does become root: the test can tell.
  auto plain = run_with_log(config);
  ASSERT_TRUE(plain.status);
  if (first_line(plain.run.out) != "euid 0") {
    GTEST_SKIP() << "setuid has no effect here (the test process has NoNewPrivs?): " << first_line(plain.run.out);
  }
  config.privileges.no_new_privileges = true;
  auto guarded = run_with_log(config);
  ASSERT_TRUE(guarded.status);
  EXPECT_EQ(first_line(guarded.run.out), "euid 54321");
}

TEST(Privileges, AnIdentityChangeWithoutThePrivilegeFailsAndNothingRuns) {
  std::string verdict = run_as_unprivileged_host([] {
    Fixture f;
    OopModuleConfig config = child_config("who", {"ids"});
    config.privileges.user = kUser;
    config.privileges.group = kGroup;
    auto handle = f.backend->spawn_instance(config);
    if (handle) return std::string("spawned");
    std::string said =
        (handle.error().code == std::make_error_code(std::errc::operation_not_permitted) ? "EPERM " : "other ") +
        handle.error().message;
    for (const auto& record : f.sink->records()) {
      if (record.stream == LogStream::Stdout) said += " (the module wrote output)";
    }
    return said;
  });
  ASSERT_EQ(verdict.rfind("EPERM ", 0), 0u) << verdict;
  EXPECT_NE(verdict.find("privileges."), std::string::npos) << verdict;
  EXPECT_EQ(verdict.find("output"), std::string::npos) << verdict;
}

// The host is a forked copy of this process: it spawns a module that sleeps,
// reports its pid, and waits to be killed.
pid_t spawn_in_forked_host(bool die_with_host, pid_t& module) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t host = fork();
  if (host == 0) {
    close(fds[0]);
    Fixture f;
    OopModuleConfig config = child_config("orphan", {"sleep", "20"});
    config.privileges.die_with_host = die_with_host;
    auto handle = f.backend->spawn_instance(config);
    std::string pid = handle ? std::to_string(*handle->pid) : "0";
    (void)!write(fds[1], pid.data(), pid.size());
    close(fds[1]);
    for (;;) pause();
  }
  close(fds[1]);
  char buffer[32] = {};
  ssize_t got = host > 0 ? read(fds[0], buffer, sizeof buffer - 1) : -1;
  close(fds[0]);
  module = got > 0 ? static_cast<pid_t>(std::atoi(buffer)) : 0;
  return host;
}

TEST(Privileges, DieWithHostIsRefusedForASetuidProgramUnlessNoNewPrivileges) {
  // The kernel would clear the parent-death signal when the program runs.
  char directory[] = "/tmp/modkit-pdeath-XXXXXX";
  ASSERT_NE(mkdtemp(directory), nullptr);
  const std::string copy = std::string(directory) + "/setuid_child";
  {
    std::ifstream in(test_child_path(), std::ios::binary);
    std::ofstream out(copy, std::ios::binary);
    out << in.rdbuf();
  }
  ASSERT_EQ(chmod(copy.c_str(), 04755), 0);
  Fixture f;
  OopModuleConfig config = child_config("setuid", {"exit", "0"});
  config.binary = copy;
  config.privileges.die_with_host = true;
  auto refused = f.backend->spawn_instance(config);
  config.privileges.no_new_privileges = true;
  auto allowed = f.backend->spawn_instance(config);
  unlink(copy.c_str());
  rmdir(directory);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_NE(refused.error().message.find("privileges.die_with_host"), std::string::npos) << refused.error().message;
  EXPECT_TRUE(allowed) << allowed.error();
}

// Spawns the module from a forked host, SIGKILLs and reaps the host; a
// pidfd of the module (-1 on failure, reported).
int module_of_killed_host(bool die_with_host) {
  pid_t module = 0;
  pid_t host = spawn_in_forked_host(die_with_host, module);
  EXPECT_GT(host, 0);
  EXPECT_GT(module, 0);
  if (host <= 0 || module <= 0) return -1;
  int pidfd = pidfd_of(module);
  EXPECT_GE(pidfd, 0);
  kill(host, SIGKILL);
  waitpid(host, nullptr, 0);
  return pidfd;
}

TEST(Privileges, AModuleThatDiesWithTheHostEndsWithin100msOfASigkillToTheHost) {
  int pidfd = module_of_killed_host(true);
  ASSERT_GE(pidfd, 0);
  bool ended = ends_within(pidfd, 100ms);
  if (!ended) syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
  close(pidfd);
  EXPECT_TRUE(ended) << "the module outlived its host by 100 ms";
}

TEST(Privileges, WithoutDieWithHostTheModuleOutlivesItsHost) {
  // The control for the test above: the same scenario without the option.
  int pidfd = module_of_killed_host(false);
  ASSERT_GE(pidfd, 0);
  EXPECT_FALSE(ends_within(pidfd, 300ms));
  syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
  ends_within(pidfd, 2000ms);
  close(pidfd);
}

TEST(Privileges, AModuleSpawnedFromAThreadThatEndsStaysAlive) {
  Fixture f;
  OopModuleConfig config = child_config("survivor", {"sleep", "20"});
  config.privileges.die_with_host = true;
  std::optional<InstanceHandle> handle;
  std::thread([&] {
    auto spawned = f.backend->spawn_instance(config);
    if (spawned) handle = *spawned;
  }).join();
  ASSERT_TRUE(handle);
  int pidfd = pidfd_of(static_cast<pid_t>(*handle->pid));
  ASSERT_GE(pidfd, 0);
  EXPECT_FALSE(ends_within(pidfd, 500ms)) << "the module died with the thread that spawned it";
  close(pidfd);
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(*stopped);
  EXPECT_EQ((*stopped)->reason, ExitStatus::Reason::Stopped);
}

}  // namespace
}  // namespace modkit::testing::behaviour
