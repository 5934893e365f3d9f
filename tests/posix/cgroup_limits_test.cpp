// ResourceLimits' group limits in a cgroup v2 cell: first against a fake
// cell (a temporary directory of plain files named like the kernel's), for
// the exact bytes written and the parsing of what is read; then on the real
// hierarchy, in cgroups of the test's own (tests/support/test_cgroup.hpp).
// A test that needs a controller the host does not delegate skips, naming it.
#include <gtest/gtest.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "collecting_sink.hpp"
#include "modkit/modkit.hpp"
#include "posix/cgroup.hpp"
#include "posix/cgroup_limits.hpp"
#include "test_cgroup.hpp"

namespace modkit {
namespace {

using namespace std::chrono_literals;
using testing::TestCgroupParent;

// --- A fake cell -----------------------------------------------------------

constexpr const char* kFakeFiles[] = {"memory.max", "memory.oom.group",       "memory.high", "cpu.max",
                                      "pids.max",   "cgroup.controllers",     "cpu.stat",    "memory.events",
                                      "memory.peak", "cgroup.subtree_control"};
constexpr const char* kCellPath = "/sys/fs/cgroup/apps/modkit-7-8-1/0190a0b2";

class FakeCell {
 public:
  FakeCell() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/modkit-limits-XXXXXX";
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    if (mkdtemp(name.data()) == nullptr) return;
    path_ = name.data();
    fd_ = open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (const char* file : kFakeFiles) set(file, "");
  }
  ~FakeCell() {
    if (fd_ >= 0) close(fd_);
    if (path_.empty()) return;
    if (DIR* listing = opendir(path_.c_str())) {
      while (dirent* entry = readdir(listing)) {
        if (entry->d_name[0] == '.') continue;
        std::string file = path_ + "/" + entry->d_name;
        if (unlink(file.c_str()) != 0) rmdir(file.c_str());
      }
      closedir(listing);
    }
    rmdir(path_.c_str());
  }
  FakeCell(const FakeCell&) = delete;
  FakeCell& operator=(const FakeCell&) = delete;

  int fd() const { return fd_; }
  std::string contents(const char* file) const { return testing::read_text_file(path_ + "/" + file); }
  void set(const char* file, const std::string& text) const {
    int fd = open((path_ + "/" + file).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << file;
    ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    close(fd);
  }
  void remove(const char* file) const { ASSERT_EQ(unlink((path_ + "/" + file).c_str()), 0) << file; }
  // A file whose every write fails (ENOSPC), as the kernel refusing a value.
  void refuse_writes(const char* file) const {
    remove(file);
    ASSERT_EQ(symlink("/dev/full", (path_ + "/" + file).c_str()), 0);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

#define FAKE_CELL(name) \
  FakeCell name;        \
  ASSERT_GE(name.fd(), 0) << "cannot make a temporary directory"

bool mentions(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(CgroupLimits, WritesEachFieldAsTheKernelReadsIt) {
  FAKE_CELL(cell);
  ResourceLimits limits;
  limits.memory_max = 64ull << 20;
  limits.memory_high = 48ull << 20;
  limits.cpu_percent = 250;
  limits.max_processes = 64;
  auto written = posix::write_cgroup_limits(cell.fd(), kCellPath, limits);
  ASSERT_TRUE(written) << written.error();
  EXPECT_EQ(cell.contents("memory.max"), "67108864");
  EXPECT_EQ(cell.contents("memory.oom.group"), "1") << "the OOM killer ends the whole instance";
  EXPECT_EQ(cell.contents("memory.high"), "50331648");
  EXPECT_EQ(cell.contents("cpu.max"), "250000 100000") << "2.5 CPUs: 250 ms per 100 ms period";
  EXPECT_EQ(cell.contents("pids.max"), "64");
  for (const char* untouched : {"cgroup.controllers", "cgroup.subtree_control", "cpu.stat", "memory.events"}) {
    EXPECT_EQ(cell.contents(untouched), "") << untouched;
  }
}

TEST(CgroupLimits, CpuPercentIsAQuotaOfAHundredMillisecondPeriod) {
  for (std::uint32_t percent : {1u, 50u, 100u, 100000u}) {
    FAKE_CELL(cell);
    ResourceLimits limits;
    limits.cpu_percent = percent;
    ASSERT_TRUE(posix::write_cgroup_limits(cell.fd(), kCellPath, limits));
    EXPECT_EQ(cell.contents("cpu.max"), std::to_string(percent * 1000ull) + " 100000") << percent;
  }
}

TEST(CgroupLimits, LargestValuesAreWrittenWhole) {
  FAKE_CELL(cell);
  ResourceLimits limits;
  limits.memory_max = UINT64_MAX;
  limits.max_processes = UINT64_MAX;
  ASSERT_TRUE(posix::write_cgroup_limits(cell.fd(), kCellPath, limits));
  EXPECT_EQ(cell.contents("memory.max"), "18446744073709551615");
  EXPECT_EQ(cell.contents("pids.max"), "18446744073709551615");
}

TEST(CgroupLimits, UnsetFieldsAreNotWritten) {
  {
    FAKE_CELL(cell);
    ResourceLimits limits;
    limits.address_space = 1ull << 30;  // per-process limits are not the cell's
    limits.cpu_time = std::chrono::seconds(5);
    ASSERT_TRUE(posix::write_cgroup_limits(cell.fd(), kCellPath, limits));
    for (const char* file : kFakeFiles) EXPECT_EQ(cell.contents(file), "") << file;
  }
  {
    FAKE_CELL(cell);
    ResourceLimits limits;
    limits.memory_high = 4096;
    ASSERT_TRUE(posix::write_cgroup_limits(cell.fd(), kCellPath, limits));
    EXPECT_EQ(cell.contents("memory.high"), "4096");
    for (const char* file : {"memory.max", "memory.oom.group", "cpu.max", "pids.max"}) {
      EXPECT_EQ(cell.contents(file), "") << file << ": only memory.high is set";
    }
  }
}

TEST(CgroupLimits, MissingFileIsAnErrorNamingItAndTheValue) {
  {
    FAKE_CELL(cell);
    cell.remove("pids.max");
    ResourceLimits limits;
    limits.max_processes = 64;
    auto written = posix::write_cgroup_limits(cell.fd(), kCellPath, limits);
    ASSERT_FALSE(written);
    EXPECT_EQ(written.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(mentions(written.error().message, std::string(kCellPath) + "/pids.max")) << written.error().message;
    EXPECT_TRUE(mentions(written.error().message, "'64'")) << written.error().message;
    EXPECT_TRUE(mentions(written.error().message, "limits.max_processes")) << written.error().message;
  }
  {
    FAKE_CELL(cell);  // memory.max without memory.oom.group (Linux before 4.19)
    cell.remove("memory.oom.group");
    ResourceLimits limits;
    limits.memory_max = 1 << 20;
    auto written = posix::write_cgroup_limits(cell.fd(), kCellPath, limits);
    ASSERT_FALSE(written);
    EXPECT_EQ(written.error().code, std::errc::no_such_file_or_directory);
    EXPECT_TRUE(mentions(written.error().message, "/memory.oom.group")) << written.error().message;
  }
}

TEST(CgroupLimits, RefusedWriteGivesItsErrnoAndStops) {
  FAKE_CELL(cell);
  cell.refuse_writes("cpu.max");
  ResourceLimits limits;
  limits.memory_high = 8192;
  limits.cpu_percent = 250;
  limits.max_processes = 10;
  auto written = posix::write_cgroup_limits(cell.fd(), kCellPath, limits);
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().code, std::errc::no_space_on_device);
  EXPECT_TRUE(mentions(written.error().message, std::string(kCellPath) + "/cpu.max")) << written.error().message;
  EXPECT_TRUE(mentions(written.error().message, "'250000 100000'")) << written.error().message;
  EXPECT_EQ(cell.contents("memory.high"), "8192") << "written before";
  EXPECT_EQ(cell.contents("pids.max"), "") << "not after the failure";
}

ResourceLimits all_group_limits() {
  ResourceLimits limits;
  limits.memory_max = 1 << 30;
  limits.memory_high = 1 << 29;
  limits.cpu_percent = 100;
  limits.max_processes = 100;
  return limits;
}

// Which fields are named, in order, by their "limits.<name> (" prefix.
std::vector<std::string> named_fields(const std::vector<std::string>& entries) {
  std::vector<std::string> names;
  for (const auto& entry : entries) {
    std::size_t paren = entry.find(" (");
    names.push_back(entry.rfind("limits.", 0) == 0 && paren != std::string::npos ? entry.substr(7, paren - 7) : entry);
  }
  return names;
}

TEST(CgroupLimits, UnenforceableFieldsAreThoseWhoseControllerIsNotListed) {
  using Names = std::vector<std::string>;
  struct Case {
    const char* controllers;
    Names expected;
  };
  const Case cases[] = {
      {"", {"memory_max", "memory_high", "cpu_percent", "max_processes"}},
      {"\n", {"memory_max", "memory_high", "cpu_percent", "max_processes"}},
      {"cpu memory pids\n", {}},
      {"memory pids", {"cpu_percent"}},
      {"cpuset io memory hugetlb pids rdma misc\n", {"cpu_percent"}},  // cpuset is not cpu
      {"cpu io\n", {"memory_max", "memory_high", "max_processes"}},
      {"memoryx cpu pidsy\n", {"memory_max", "memory_high", "max_processes"}},
      {"pids\tcpu  memory \n", {}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string("cgroup.controllers: '") + c.controllers + "'");
    FAKE_CELL(cell);
    cell.set("cgroup.controllers", c.controllers);
    auto entries = posix::unenforceable_cgroup_limits(cell.fd(), kCellPath, all_group_limits());
    EXPECT_EQ(named_fields(entries), c.expected);
    for (const auto& entry : entries) {
      EXPECT_TRUE(mentions(entry, kCellPath)) << entry;
      EXPECT_TRUE(mentions(entry, "cgroup_parent")) << entry;
      EXPECT_TRUE(mentions(entry, "cgroup.subtree_control")) << entry;
    }
  }
}

TEST(CgroupLimits, UnenforceableNamesTheController) {
  FAKE_CELL(cell);
  auto entries = posix::unenforceable_cgroup_limits(cell.fd(), kCellPath, all_group_limits());
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_TRUE(mentions(entries[0], "the memory controller")) << entries[0];
  EXPECT_TRUE(mentions(entries[1], "the memory controller")) << entries[1];
  EXPECT_TRUE(mentions(entries[2], "the cpu controller")) << entries[2];
  EXPECT_TRUE(mentions(entries[3], "the pids controller")) << entries[3];
}

TEST(CgroupLimits, UnsetFieldsAreNeverUnenforceable) {
  FAKE_CELL(cell);
  cell.set("cgroup.controllers", "io\n");
  ResourceLimits limits;
  limits.address_space = 1 << 30;
  EXPECT_TRUE(posix::unenforceable_cgroup_limits(cell.fd(), kCellPath, limits).empty());
  limits.max_processes = 5;
  EXPECT_EQ(named_fields(posix::unenforceable_cgroup_limits(cell.fd(), kCellPath, limits)),
            std::vector<std::string>{"max_processes"});
}

TEST(CgroupLimits, UnreadableControllersMakeEverySetFieldUnenforceable) {
  FAKE_CELL(cell);
  cell.remove("cgroup.controllers");
  ResourceLimits limits;
  limits.memory_max = 1 << 20;
  limits.cpu_percent = 10;
  auto entries = posix::unenforceable_cgroup_limits(cell.fd(), kCellPath, limits);
  EXPECT_EQ(named_fields(entries), (std::vector<std::string>{"memory_max", "cpu_percent"}));
  for (const auto& entry : entries) {
    EXPECT_TRUE(mentions(entry, std::string(kCellPath) + "/cgroup.controllers")) << entry;
    EXPECT_TRUE(mentions(entry, std::strerror(ENOENT))) << entry;
  }
  // Nor with no directory at all.
  EXPECT_EQ(posix::unenforceable_cgroup_limits(-1, kCellPath, limits).size(), 2u);
}

TEST(CgroupLimits, UsageIsReadFromCpuStatAndMemoryPeak) {
  FAKE_CELL(cell);
  cell.set("cpu.stat",
           "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnice_usec 0\ncore_sched.force_idle_usec 0\n"
           "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n");
  cell.set("memory.peak", "4096\n");
  auto usage = posix::read_cgroup_usage(cell.fd());
  EXPECT_EQ(usage.user, 1000us);
  EXPECT_EQ(usage.system, 500us);
  EXPECT_EQ(usage.peak_memory, 4096u);
}

TEST(CgroupLimits, UsageParsesDefensively) {
  using Micros = std::optional<std::chrono::microseconds>;
  struct Case {
    std::string stat;
    Micros user, system;
  };
  const std::int64_t max = INT64_MAX;
  const Case cases[] = {
      {"system_usec 8\nuser_usec 7", 7us, 8us},  // any order, no final newline
      {"", std::nullopt, std::nullopt},
      {"usage_usec 10\n", std::nullopt, std::nullopt},
      {"user_usec abc\nsystem_usec -5\n", std::nullopt, std::nullopt},
      {"user_usec\nsystem_usec \n", std::nullopt, std::nullopt},
      {"user_usec 5 6\nsystem_usec 0x10\n", std::nullopt, std::nullopt},
      {"xuser_usec 5\nsystem_usec_total 6\nuser_usec_ 7\n", std::nullopt, std::nullopt},
      {"  user_usec 5\n", std::nullopt, std::nullopt},
      {std::string("user_usec 1\0\xff\n", 14) + "system_usec 2\n", std::nullopt, 2us},
      {"user_usec 9223372036854775807\nsystem_usec 9223372036854775808\n", std::chrono::microseconds(max),
       std::nullopt},
      {"user_usec 18446744073709551616\nsystem_usec 99999999999999999999999\n", std::nullopt, std::nullopt},
      {"user_usec 3\r\nsystem_usec 4\n", 3us, 4us},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("cpu.stat: '" + c.stat + "'");
    FAKE_CELL(cell);
    cell.set("cpu.stat", c.stat);
    auto usage = posix::read_cgroup_usage(cell.fd());
    EXPECT_EQ(usage.user, c.user);
    EXPECT_EQ(usage.system, c.system);
    EXPECT_FALSE(usage.peak_memory.has_value()) << "empty memory.peak";
  }
  struct PeakCase {
    const char* text;
    std::optional<std::uint64_t> peak;
  };
  const PeakCase peaks[] = {
      {"0\n", 0u},
      {"18446744073709551615\n", UINT64_MAX},
      {"18446744073709551616\n", std::nullopt},
      {"max\n", std::nullopt},
      {"12 34\n", std::nullopt},
      {"-1\n", std::nullopt},
      {"\n", std::nullopt},
  };
  for (const auto& p : peaks) {
    SCOPED_TRACE(std::string("memory.peak: '") + p.text + "'");
    FAKE_CELL(cell);
    cell.set("memory.peak", p.text);
    EXPECT_EQ(posix::read_cgroup_usage(cell.fd()).peak_memory, p.peak);
  }
}

TEST(CgroupLimits, MissingUsageFilesLeaveItEmpty) {
  FAKE_CELL(cell);
  cell.remove("cpu.stat");
  cell.remove("memory.peak");
  auto usage = posix::read_cgroup_usage(cell.fd());
  EXPECT_FALSE(usage.user);
  EXPECT_FALSE(usage.system);
  EXPECT_FALSE(usage.peak_memory);
  auto none = posix::read_cgroup_usage(-1);
  EXPECT_FALSE(none.user || none.system || none.peak_memory);
}

// With every descriptor below the lowest free one in use and the limit just
// above it, only one more can be open at a time.
TEST(CgroupLimits, UsageNeedsOneDescriptorAtATime) {
  FAKE_CELL(cell);
  cell.set("cpu.stat", "user_usec 1\nsystem_usec 2\n");
  cell.set("memory.peak", "3\n");
  cell.set("memory.events", "oom_kill 4\n");
  int lowest = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(lowest, 0);
  close(lowest);
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest) + 1;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  auto usage = posix::read_cgroup_usage(cell.fd());
  std::uint64_t kills = posix::read_oom_kills(cell.fd());
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_EQ(usage.user, 1us);
  EXPECT_EQ(usage.system, 2us);
  EXPECT_EQ(usage.peak_memory, 3u);
  EXPECT_EQ(kills, 4u);
}

TEST(CgroupLimits, OomKillsAreReadFromMemoryEvents) {
  struct Case {
    std::string events;
    std::uint64_t kills;
  };
  const Case cases[] = {
      {"low 0\nhigh 3\nmax 7\noom 2\noom_kill 2\noom_group_kill 1\n", 2},
      {"oom_group_kill 5\noom_kill 0\n", 0},
      {"oom_group_kill 5\n", 0},
      {"oom_kill banana\n", 0},
      {"oom_kill\n", 0},
      {"", 0},
      {"oom_kill 18446744073709551615", UINT64_MAX},
      {"oom_kill 99999999999999999999\n", 0},
      {std::string("\0\0\noom_kill 3\n", 14), 3},  // a junk line before it
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("memory.events: '" + c.events + "'");
    FAKE_CELL(cell);
    cell.set("memory.events", c.events);
    EXPECT_EQ(posix::read_oom_kills(cell.fd()), c.kills);
  }
  FAKE_CELL(cell);
  cell.remove("memory.events");
  EXPECT_EQ(posix::read_oom_kills(cell.fd()), 0u);
  EXPECT_EQ(posix::read_oom_kills(-1), 0u);
}

// One descriptor, one write per controller: in a plain file they follow one
// another, so the file shows each write and its order.
TEST(CgroupLimits, EnablesOnlyTheLimitControllersListed) {
  using Names = std::vector<std::string>;
  struct Case {
    const char* controllers;
    Names enabled;
    const char* written;
  };
  const Case cases[] = {
      {"cpuset cpu io memory hugetlb pids rdma misc\n", {"memory", "cpu", "pids"}, "+memory+cpu+pids"},
      {"cpuset io memory\n", {"memory"}, "+memory"},
      {"pids cpu", {"cpu", "pids"}, "+cpu+pids"},
      {"cpuset hugetlb\n", {}, ""},
      {"", {}, ""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string("cgroup.controllers: '") + c.controllers + "'");
    FAKE_CELL(cell);
    cell.set("cgroup.controllers", c.controllers);
    EXPECT_EQ(posix::enable_limit_controllers(cell.fd()), c.enabled);
    EXPECT_EQ(cell.contents("cgroup.subtree_control"), c.written);
    EXPECT_EQ(cell.contents("cgroup.controllers"), c.controllers) << "only read";
  }
}

TEST(CgroupLimits, EnablingWithoutItsFilesEnablesNothing) {
  {
    FAKE_CELL(cell);
    cell.remove("cgroup.controllers");
    EXPECT_TRUE(posix::enable_limit_controllers(cell.fd()).empty());
    EXPECT_EQ(cell.contents("cgroup.subtree_control"), "");
  }
  {
    FAKE_CELL(cell);
    cell.set("cgroup.controllers", "memory cpu pids\n");
    cell.remove("cgroup.subtree_control");
    EXPECT_TRUE(posix::enable_limit_controllers(cell.fd()).empty());
  }
  {
    FAKE_CELL(cell);
    cell.set("cgroup.controllers", "memory cpu pids\n");
    cell.refuse_writes("cgroup.subtree_control");
    EXPECT_TRUE(posix::enable_limit_controllers(cell.fd()).empty()) << "each refused";
  }
}

// --- On the real hierarchy ---------------------------------------------------

// A cell made as the backend makes one, in a test parent of our own.
struct RealCell {
  TestCgroupParent parent;
  std::unique_ptr<posix::CgroupCell> cell;
  std::string error;

  RealCell() {
    if (!parent) return;
    int directory = open(parent.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    auto made = posix::CgroupCell::create(directory, parent.path(), "cell");
    close(directory);
    if (made) {
      cell = std::move(*made);
    } else {
      error = made.error().message;
    }
  }
  ~RealCell() {
    if (cell) cell->remove();
  }
  std::string controllers() const { return testing::read_text_file(cell->path() + "/cgroup.controllers"); }
  bool has(const char* controller) const {
    std::string list = " " + controllers();
    for (char& c : list) c = c == '\n' ? ' ' : c;
    return mentions(list, std::string(" ") + controller + " ");
  }
};

#define REAL_CELL(name)                                                                   \
  RealCell name;                                                                          \
  if (!name.parent) GTEST_SKIP() << "needs root and a writable cgroup v2 hierarchy";     \
  ASSERT_TRUE(name.cell) << name.error

// Enables `controller` in the test parent (ours, and process-free) so that
// cells made afterwards have it; skips, saying so, when the hierarchy does
// not offer it to the test parent.
#define REQUIRE_CONTROLLER(parent, controller)                                                                      \
  do {                                                                                                              \
    int directory_ = open((parent).path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);                             \
    ASSERT_GE(directory_, 0);                                                                                       \
    auto enabled_ = posix::enable_limit_controllers(directory_);                                                    \
    close(directory_);                                                                                              \
    bool found_ = false;                                                                                            \
    for (const auto& name_ : enabled_) found_ = found_ || name_ == (controller);                                    \
    if (!found_) {                                                                                                  \
      GTEST_SKIP() << "the " << (controller) << " controller is missing: the cgroup v2 hierarchy at "               \
                   << testing::cgroup2_mount() << " does not delegate it to " << (parent).path()                    \
                   << " (its cgroup.controllers: '"                                                                 \
                   << testing::read_text_file((parent).path() + "/cgroup.controllers") << "')";                     \
    }                                                                                                               \
  } while (false)

// Starts a child in `cell` that runs `body` and _exits with what it returns.
template <typename Body>
pid_t run_in(posix::CgroupCell& cell, const Body& body) {
  int procs = cell.procs_fd();
  pid_t pid = fork();
  if (pid == 0) {
    if (write(procs, "0", 1) != 1) _exit(126);
    _exit(body());
  }
  cell.close_procs();
  return pid;
}

double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

TEST(CgroupLimitsOnHost, UsageCountsTheCpuOfProcessesThatRanInTheCell) {
  REAL_CELL(real);
  int cell_fd = real.cell->directory_fd();
  auto before = posix::read_cgroup_usage(cell_fd);
  ASSERT_TRUE(before.user && before.system) << "cpu.stat is in every cgroup v2 directory: '"
                                            << testing::read_text_file(real.cell->path() + "/cpu.stat") << "'";
  EXPECT_EQ(*before.user + *before.system, 0us) << "a new cell has used nothing";
  pid_t child = run_in(*real.cell, [] {
    // 100 ms of CPU, partly in the kernel.
    volatile unsigned spin = 0;
    while (process_cpu_seconds() < 0.1) {
      for (int i = 0; i < 10000; ++i) spin = spin + 1;
      (void)getppid();
    }
    return 0;
  });
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto after = posix::read_cgroup_usage(cell_fd);
  ASSERT_TRUE(after.user && after.system);
  EXPECT_GE(*after.user + *after.system, 80ms) << "the child's 100 ms, after it was reaped; user " << after.user->count()
                                               << " us, system " << after.system->count() << " us";
  EXPECT_LT(*after.user + *after.system, 10s);
  bool peak_readable = access((real.cell->path() + "/memory.peak").c_str(), F_OK) == 0;
  EXPECT_EQ(after.peak_memory.has_value(), peak_readable) << "memory.peak: memory controller and Linux 5.19+";
  if (after.peak_memory) {
    EXPECT_GT(*after.peak_memory, 0u);
  }
  EXPECT_EQ(posix::read_oom_kills(cell_fd), 0u);
}

TEST(CgroupLimitsOnHost, UnenforceableNamesEachFieldWhoseControllerTheCellLacks) {
  REAL_CELL(real);
  auto entries = posix::unenforceable_cgroup_limits(real.cell->directory_fd(), real.cell->path(), all_group_limits());
  std::vector<std::string> expected;
  if (!real.has("memory")) expected.insert(expected.end(), {"memory_max", "memory_high"});
  if (!real.has("cpu")) expected.push_back("cpu_percent");
  if (!real.has("pids")) expected.push_back("max_processes");
  EXPECT_EQ(named_fields(entries), expected) << "the cell's cgroup.controllers: '" << real.controllers() << "'";
  for (const auto& entry : entries) EXPECT_TRUE(mentions(entry, real.cell->path())) << entry;
  if (!real.has("memory")) {
    ASSERT_FALSE(entries.empty());
    EXPECT_EQ(entries[0].rfind("limits.memory_max (the memory controller is not enabled", 0), 0u) << entries[0];
  }
}

TEST(CgroupLimitsOnHost, WritingALimitWithoutItsControllerNamesTheMissingFile) {
  REAL_CELL(real);
  ResourceLimits limits;
  const char* file = nullptr;
  if (!real.has("memory")) {
    limits.memory_max = 1 << 30;
    file = "memory.max";
  } else if (!real.has("cpu")) {
    limits.cpu_percent = 50;
    file = "cpu.max";
  } else if (!real.has("pids")) {
    limits.max_processes = 50;
    file = "pids.max";
  } else {
    GTEST_SKIP() << "every limit controller is enabled here, so no limit file is missing";
  }
  auto written = posix::write_cgroup_limits(real.cell->directory_fd(), real.cell->path(), limits);
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().code, std::errc::no_such_file_or_directory) << written.error();
  EXPECT_TRUE(mentions(written.error().message, real.cell->path() + "/" + file)) << written.error().message;
}

TEST(CgroupLimitsOnHost, EnablesWhatTheParentOffersAndNothingElse) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a writable cgroup v2 hierarchy";
  std::string offered = " " + testing::read_text_file(parent.path() + "/cgroup.controllers") + " ";
  for (char& c : offered) c = c == '\n' ? ' ' : c;
  std::vector<std::string> expected;
  for (const char* controller : {"memory", "cpu", "pids"}) {
    if (mentions(offered, std::string(" ") + controller + " ")) expected.push_back(controller);
  }
  int directory = open(parent.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(directory, 0);
  EXPECT_EQ(posix::enable_limit_controllers(directory), expected) << "offered:" << offered;
  close(directory);
  std::string subtree = " " + testing::read_text_file(parent.path() + "/cgroup.subtree_control") + " ";
  for (char& c : subtree) c = c == '\n' ? ' ' : c;
  for (const auto& controller : expected) {
    EXPECT_TRUE(mentions(subtree, " " + controller + " ")) << controller << " in" << subtree;
  }
}

// The backend's own directory passes on whatever cgroup_parent offers.
TEST(CgroupLimitsOnHost, BackendDirectoryEnablesTheControllersItsParentOffers) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a writable cgroup v2 hierarchy";
  LocalProcessOptions options;
  options.containment = Containment::Required;
  options.cgroup_parent = parent.path();
  auto backend = LocalProcessBackend::create(CancellationToken(), std::make_shared<testing::CollectingSink>(), options);
  ASSERT_TRUE(backend) << backend.error();
  auto made = testing::subdirectories(parent.path());
  ASSERT_EQ(made.size(), 1u);
  std::string directory = parent.path() + "/" + made[0];
  std::string offered = " " + testing::read_text_file(directory + "/cgroup.controllers") + " ";
  std::string enabled = " " + testing::read_text_file(directory + "/cgroup.subtree_control") + " ";
  for (std::string* list : {&offered, &enabled}) {
    for (char& c : *list) c = c == '\n' ? ' ' : c;
  }
  for (const char* controller : {"memory", "cpu", "pids"}) {
    bool is_offered = mentions(offered, std::string(" ") + controller + " ");
    EXPECT_EQ(mentions(enabled, std::string(" ") + controller + " "), is_offered) << controller << ": offered"
                                                                                  << offered << ", enabled" << enabled;
  }
  (*backend).reset();
  EXPECT_TRUE(parent.descendants().empty()) << "the backend removes its directory";
}

TEST(CgroupLimitsOnHost, MemoryMaxEndsTheWholeInstance) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a writable cgroup v2 hierarchy";
  REQUIRE_CONTROLLER(parent, "memory");
  int directory = open(parent.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  auto made = posix::CgroupCell::create(directory, parent.path(), "cell");
  close(directory);
  ASSERT_TRUE(made) << made.error();
  auto& cell = **made;
  ResourceLimits limits;
  limits.memory_max = 32ull << 20;
  EXPECT_TRUE(posix::unenforceable_cgroup_limits(cell.directory_fd(), cell.path(), limits).empty());
  auto written = posix::write_cgroup_limits(cell.directory_fd(), cell.path(), limits);
  ASSERT_TRUE(written) << written.error();
  EXPECT_EQ(testing::read_text_file(cell.path() + "/memory.max"), "33554432\n");
  EXPECT_EQ(testing::read_text_file(cell.path() + "/memory.oom.group"), "1\n");
  // Swap would only delay the limit: none for this test cell.
  testing::write_text_file(cell.path() + "/memory.swap.max", "0");
  pid_t child = run_in(cell, [] {
    pid_t sibling = fork();  // an innocent bystander, ended with the rest
    if (sibling == 0) {
      pause();
      _exit(0);
    }
    const std::size_t size = 64u << 20;
    char* block = static_cast<char*>(std::malloc(size));
    if (block == nullptr) return 3;
    for (std::size_t at = 0; at < size; at += 4096) block[at] = 1;
    return 4;  // not killed
  });
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  EXPECT_GE(posix::read_oom_kills(cell.directory_fd()), 1u);
  for (int i = 0; i < 300 && cell.populated(); ++i) usleep(10000);
  EXPECT_FALSE(cell.populated()) << "memory.oom.group: the sibling went too";
  auto usage = posix::read_cgroup_usage(cell.directory_fd());
  if (usage.peak_memory) {
    EXPECT_GE(*usage.peak_memory, 16ull << 20);
  }
  EXPECT_TRUE(cell.remove());
}

TEST(CgroupLimitsOnHost, CpuPercentIsWrittenAsTheKernelsQuota) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a writable cgroup v2 hierarchy";
  REQUIRE_CONTROLLER(parent, "cpu");
  int directory = open(parent.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  auto made = posix::CgroupCell::create(directory, parent.path(), "cell");
  close(directory);
  ASSERT_TRUE(made) << made.error();
  ResourceLimits limits;
  limits.cpu_percent = 50;
  auto written = posix::write_cgroup_limits((*made)->directory_fd(), (*made)->path(), limits);
  ASSERT_TRUE(written) << written.error();
  EXPECT_EQ(testing::read_text_file((*made)->path() + "/cpu.max"), "50000 100000\n");
  EXPECT_TRUE((*made)->remove());
}

TEST(CgroupLimitsOnHost, MaxProcessesRefusesForksPastIt) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a writable cgroup v2 hierarchy";
  REQUIRE_CONTROLLER(parent, "pids");
  int directory = open(parent.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  auto made = posix::CgroupCell::create(directory, parent.path(), "cell");
  close(directory);
  ASSERT_TRUE(made) << made.error();
  ResourceLimits limits;
  limits.max_processes = 3;
  auto written = posix::write_cgroup_limits((*made)->directory_fd(), (*made)->path(), limits);
  ASSERT_TRUE(written) << written.error();
  EXPECT_EQ(testing::read_text_file((*made)->path() + "/pids.max"), "3\n");
  pid_t child = run_in(**made, [] {
    std::vector<pid_t> forked;
    for (int i = 0; i < 6; ++i) {
      pid_t pid = fork();
      if (pid == 0) {
        pause();
        _exit(0);
      }
      if (pid > 0) forked.push_back(pid);
    }
    for (pid_t pid : forked) kill(pid, SIGKILL);
    for (pid_t pid : forked) waitpid(pid, nullptr, 0);
    return static_cast<int>(forked.size());
  });
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 2) << "the child and two more make three";
  EXPECT_TRUE((*made)->remove());
}

}  // namespace
}  // namespace modkit
