// ResourceLimits and Privileges on Windows (src/win32/job_limits.cpp): what
// is refused, what BestEffort skips, ResourceUsage of an ended child, and
// probes of which Job limits the system enforces. Under Wine a probe that
// finds a limit not enforced skips with "Wine does not enforce ..."; on
// Windows the same finding fails.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "platform/process.hpp"
#include "win32/job_limits.hpp"
#include "win32_test_support.hpp"

#include <tlhelp32.h>

using namespace modkit;
using namespace modkit::testing;
using modkit::testing::wintest::WinFixture;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

platform::SpawnRequest limited_request(std::vector<std::string> args, ResourceLimits limits = {},
                                       Privileges privileges = {}) {
  platform::SpawnRequest request;
  request.module = "limits";
  request.binary = test_child_path();
  request.args = std::move(args);
  request.graceful_stop = GracefulStop::None;
  request.limits = std::move(limits);
  request.privileges = std::move(privileges);
  return request;
}

ResourceLimits best_effort() {
  ResourceLimits limits;
  limits.enforcement = ResourceLimits::Enforcement::BestEffort;
  return limits;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// What a child did, run to its end at the platform level.
struct Ended {
  std::optional<ExitStatus> status;
  std::optional<ExitStatus::Reason> limit_end;  // asked as the backend does: as soon as the exit is seen
  std::vector<std::string> out;                  // stdout lines, without CR
  double seconds = 0;

  std::string first_starting(const std::string& prefix) const {
    for (const auto& line : out) {
      if (line.rfind(prefix, 0) == 0) return line;
    }
    return {};
  }
};

// Reads the child's stdout until it exits (killing its tree after `timeout`),
// then kills what is left of its Job so the pipes close, and reaps it.
Ended run_to_end(platform::Process& process, std::chrono::milliseconds timeout = 20s) {
  Ended ended;
  auto start = Clock::now();
  auto out = process.take_stdout();
  auto err = process.take_stderr();
  std::mutex mutex;
  std::string text;
  std::atomic<int> readers_done{0};
  std::thread out_reader([&] {
    char buffer[4096];
    for (std::ptrdiff_t n; (n = out->read(buffer, sizeof buffer)) > 0;) {
      std::lock_guard<std::mutex> lock(mutex);
      text.append(buffer, static_cast<std::size_t>(n));
    }
    ++readers_done;
  });
  std::thread err_reader([&] {
    char buffer[4096];
    while (err->read(buffer, sizeof buffer) > 0) {
    }
    ++readers_done;
  });
  ended.status = process.wait_for_exit(timeout);
  if (!ended.status) {
    ADD_FAILURE() << "the child did not end within " << timeout.count() << " ms; killing it";
    EXPECT_TRUE(process.kill_tree());
    ended.status = process.wait_for_exit(10s);
  }
  ended.limit_end = process.limit_end();
  ended.seconds = seconds_since(start);
  EXPECT_TRUE(process.kill_tree());  // descendants still holding the pipes
  for (auto deadline = Clock::now() + 5s; readers_done.load() < 2 && Clock::now() < deadline;) {
    std::this_thread::sleep_for(20ms);
  }
  out->interrupt();
  out_reader.join();
  err_reader.join();
  process.reap();
  std::size_t begin = 0;
  for (std::size_t end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
    std::string line = text.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    ended.out.push_back(std::move(line));
  }
  return ended;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += (text.empty() ? "" : " | ") + line;
  return text;
}

// The number after `key` in `line` ("alloc-mb failed after 63 error 1455"), or -1.
long long value_after(const std::string& line, const std::string& key) {
  std::size_t at = line.find(key);
  if (at == std::string::npos) return -1;
  return std::strtoll(line.c_str() + at + key.size(), nullptr, 10);
}

// Processes whose parent is this process (Toolhelp snapshot).
int children_of_this_process() {
  HANDLE snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
  if (snapshot == INVALID_HANDLE_VALUE) return -1;
  PROCESSENTRY32W entry{};
  entry.dwSize = sizeof entry;
  int count = 0;
  for (BOOL ok = Process32FirstW(snapshot, &entry); ok; ok = Process32NextW(snapshot, &entry)) {
    if (entry.th32ParentProcessID == GetCurrentProcessId()) ++count;
  }
  CloseHandle(snapshot);
  return count;
}

}  // namespace

// --- Privileges: refused whatever the enforcement ------------------------------

TEST(Win32Privileges, EveryFieldButDieWithHostIsRefusedNamingIt) {
  struct Case {
    const char* field;
    Privileges privileges;
  };
  std::vector<Case> cases(5);
  cases[0].field = "privileges.user";
  cases[0].privileges.user = 1000;
  cases[0].privileges.group = 1000;  // user needs group (validation); user is named first
  cases[1].field = "privileges.group";
  cases[1].privileges.group = 1000;
  cases[2].field = "privileges.supplementary_groups";
  cases[2].privileges.supplementary_groups = std::vector<std::uint32_t>{};
  cases[3].field = "privileges.no_new_privileges";
  cases[3].privileges.no_new_privileges = true;
  cases[4].field = "privileges.umask";
  cases[4].privileges.umask = 022;
  for (auto enforcement : {ResourceLimits::Enforcement::Required, ResourceLimits::Enforcement::BestEffort}) {
    for (const auto& c : cases) {
      ResourceLimits limits;
      limits.enforcement = enforcement;
      auto spawned = platform::spawn(limited_request({"exit", "0"}, limits, c.privileges));
      ASSERT_FALSE(spawned) << c.field << " was accepted";
      EXPECT_EQ(spawned.error().code, std::make_error_code(std::errc::not_supported)) << spawned.error();
      EXPECT_TRUE(contains(spawned.error().message, "module 'limits': " + std::string(c.field) +
                                                        " is not supported on Windows"))
          << spawned.error();
    }
  }
  // Both named when both are set.
  Privileges two;
  two.umask = 077;
  two.no_new_privileges = true;
  auto spawned = platform::spawn(limited_request({"exit", "0"}, {}, two));
  ASSERT_FALSE(spawned);
  EXPECT_TRUE(contains(spawned.error().message, "privileges.no_new_privileges")) << spawned.error();
  EXPECT_TRUE(contains(spawned.error().message, "privileges.umask")) << spawned.error();
}

TEST(Win32Privileges, DieWithHostIsAcceptedAndRefusalsStartNothing) {
  Privileges die_with_host;
  die_with_host.die_with_host = true;
  auto spawned = platform::spawn(limited_request({"say", "up"}, {}, die_with_host));
  ASSERT_TRUE(spawned) << spawned.error();
  auto ended = run_to_end(**spawned);
  ASSERT_TRUE(ended.status);
  EXPECT_TRUE(ended.status->success()) << *ended.status;
  EXPECT_EQ(ended.out, std::vector<std::string>{"up"});

  // Through the backend: not_supported, and no instance, no exit report.
  WinFixture f;
  OopModuleConfig config = child_config("umask", {"say", "should not run"});
  config.privileges.umask = 022;
  auto handle = f.backend->spawn_instance(config);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::not_supported)) << handle.error();
  EXPECT_TRUE(contains(handle.error().message, "privileges.umask is not supported on Windows")) << handle.error();
  auto listed = f.backend->list_instances("umask");
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->empty());
}

// --- Limits Windows cannot enforce: Required refuses, BestEffort skips --------

TEST(Win32Limits, RequiredRefusesWhatNoJobLimitEnforces) {
  struct Case {
    const char* field;
    void (*set)(ResourceLimits&);
  };
  const Case cases[] = {
      {"limits.memory_high", [](ResourceLimits& l) { l.memory_high = 64 * kMiB; }},
      {"limits.data_size", [](ResourceLimits& l) { l.data_size = 64 * kMiB; }},
      {"limits.open_files", [](ResourceLimits& l) { l.open_files = 64; }},
      {"limits.file_size", [](ResourceLimits& l) { l.file_size = kMiB; }},
      {"limits.core_size", [](ResourceLimits& l) { l.core_size = 0; }},
      {"limits.user_processes", [](ResourceLimits& l) { l.user_processes = 10; }},
  };
  for (const auto& c : cases) {
    ResourceLimits limits;  // Required by default
    c.set(limits);
    auto spawned = platform::spawn(limited_request({"exit", "0"}, limits));
    ASSERT_FALSE(spawned) << c.field << " was accepted under Required";
    EXPECT_EQ(spawned.error().code, std::make_error_code(std::errc::not_supported)) << spawned.error();
    EXPECT_TRUE(contains(spawned.error().message,
                         "module 'limits': " + std::string(c.field) + " cannot be enforced on Windows ("))
        << spawned.error();
  }
  ResourceLimits two;
  two.file_size = kMiB;
  two.open_files = 100;
  two.memory_max = 256 * kMiB;  // enforceable: not named
  auto spawned = platform::spawn(limited_request({"exit", "0"}, two));
  ASSERT_FALSE(spawned);
  EXPECT_TRUE(contains(spawned.error().message, "limits.open_files")) << spawned.error();
  EXPECT_TRUE(contains(spawned.error().message, "limits.file_size")) << spawned.error();
  EXPECT_FALSE(contains(spawned.error().message, "memory_max")) << spawned.error();

  // The same through the backend.
  WinFixture f;
  OopModuleConfig config = child_config("required", {"say", "should not run"});
  config.limits.core_size = 0;
  auto handle = f.backend->spawn_instance(config);
  ASSERT_FALSE(handle);
  EXPECT_EQ(handle.error().code, std::make_error_code(std::errc::not_supported)) << handle.error();
  EXPECT_TRUE(contains(handle.error().message, "limits.core_size cannot be enforced on Windows")) << handle.error();
}

TEST(Win32Limits, BestEffortRunsWithoutThemAndNamesEach) {
  ResourceLimits limits = best_effort();
  limits.file_size = kMiB;
  limits.open_files = 100;
  limits.memory_max = 256 * kMiB;  // applied: not listed
  auto spawned = platform::spawn(limited_request({"say", "ran"}, limits));
  ASSERT_TRUE(spawned) << spawned.error();
  EXPECT_EQ((*spawned)->limits_not_applied(),
            (std::vector<std::string>{"limits.open_files (not supported on Windows)",
                                      "limits.file_size (not supported on Windows)"}));
  auto ended = run_to_end(**spawned);
  ASSERT_TRUE(ended.status);
  EXPECT_TRUE(ended.status->success()) << *ended.status;
  EXPECT_EQ(ended.out, std::vector<std::string>{"ran"});
  EXPECT_FALSE(ended.limit_end.has_value());

  // Nothing set, or only what a Job enforces: nothing listed.
  auto plain = platform::spawn(limited_request({"exit", "0"}, best_effort()));
  ASSERT_TRUE(plain) << plain.error();
  EXPECT_TRUE((*plain)->limits_not_applied().empty());
  run_to_end(**plain);
}

TEST(Win32Limits, CpuRateIsAShareOfTheWholeMachine) {
  EXPECT_EQ(win32::hard_cap_cpu_rate(100, 1), 10000u);
  EXPECT_EQ(win32::hard_cap_cpu_rate(100, 2), 5000u);
  EXPECT_EQ(win32::hard_cap_cpu_rate(50, 4), 1250u);
  EXPECT_EQ(win32::hard_cap_cpu_rate(250, 8), 3125u);
  EXPECT_EQ(win32::hard_cap_cpu_rate(1, 128), 1u);           // never 0 (which would be no cap at all)
  EXPECT_EQ(win32::hard_cap_cpu_rate(100000, 2), 10000u);    // at most the whole machine
  EXPECT_EQ(win32::hard_cap_cpu_rate(100, 0), 10000u);       // a count of 0 is read as 1
  EXPECT_GE(win32::processor_count(), 1u);
}

// What the Job's messages say ended the module (the messages are posted here
// by hand: Wine posts none of them, and Windows only at a real limit).
TEST(Win32Limits, JobMessagesMapToTheLimitThatEndedTheModule) {
  constexpr DWORD kModule = 4242, kDescendant = 4343;
  auto post = [](HANDLE port, DWORD message, DWORD pid) {
    ASSERT_TRUE(PostQueuedCompletionStatus(port, message, 0,
                                           reinterpret_cast<LPOVERLAPPED>(static_cast<ULONG_PTR>(pid))));
  };
  win32::JobLimitEvents unattached;
  EXPECT_FALSE(unattached.drain(kModule).has_value());

  win32::UniqueHandle job(CreateJobObjectW(nullptr, nullptr));
  ASSERT_TRUE(job);
  win32::JobLimitEvents events;
  ASSERT_EQ(events.attach(job.get()), 0u);
  EXPECT_FALSE(events.drain(kModule).has_value());
  post(events.port(), JOB_OBJECT_MSG_NEW_PROCESS, kDescendant);
  post(events.port(), JOB_OBJECT_MSG_END_OF_PROCESS_TIME, kDescendant);  // a descendant's own time limit
  post(events.port(), JOB_OBJECT_MSG_EXIT_PROCESS, kDescendant);
  EXPECT_FALSE(events.drain(kModule).has_value());
  post(events.port(), JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT, kModule);
  EXPECT_EQ(events.drain(kModule), std::optional<ExitStatus::Reason>(ExitStatus::Reason::MemoryLimit));
  EXPECT_EQ(events.drain(kModule), std::optional<ExitStatus::Reason>(ExitStatus::Reason::MemoryLimit))
      << "what was seen is remembered";
  post(events.port(), JOB_OBJECT_MSG_END_OF_PROCESS_TIME, kModule);  // the time limit terminates: it wins
  EXPECT_EQ(events.drain(kModule), std::optional<ExitStatus::Reason>(ExitStatus::Reason::CpuLimit));

  win32::UniqueHandle second_job(CreateJobObjectW(nullptr, nullptr));  // a Job takes one port only
  win32::JobLimitEvents group;
  ASSERT_EQ(group.attach(second_job.get()), 0u);
  post(group.port(), JOB_OBJECT_MSG_JOB_MEMORY_LIMIT, kDescendant);  // any process of the Job
  EXPECT_EQ(group.drain(kModule), std::optional<ExitStatus::Reason>(ExitStatus::Reason::MemoryLimit));
  win32::UniqueHandle third_job(CreateJobObjectW(nullptr, nullptr));
  win32::JobLimitEvents job_time;
  ASSERT_EQ(job_time.attach(third_job.get()), 0u);
  post(job_time.port(), JOB_OBJECT_MSG_END_OF_JOB_TIME, 0);
  EXPECT_EQ(job_time.drain(kModule), std::optional<ExitStatus::Reason>(ExitStatus::Reason::CpuLimit));
}

// --- ResourceUsage --------------------------------------------------------------

TEST(Win32Usage, IsFilledForAnExitedChild) {
  auto spawned = platform::spawn(limited_request({"spin-ms", "300", "alloc-mb", "16"}));
  ASSERT_TRUE(spawned) << spawned.error();
  platform::Process& process = **spawned;
  auto status = process.wait_for_exit(20s);
  ASSERT_TRUE(status);
  ASSERT_TRUE(status->usage.has_value()) << "no usage in " << *status;
  const ResourceUsage& usage = *status->usage;
  std::printf("[   NOTE   ] usage: user %lld us, system %lld us, peak %llu bytes; group %s\n",
              static_cast<long long>(usage.user_cpu.count()), static_cast<long long>(usage.system_cpu.count()),
              static_cast<unsigned long long>(usage.peak_memory.value_or(0)),
              usage.group_user_cpu ? ("user " + std::to_string(usage.group_user_cpu->count()) + " us, system " +
                                      std::to_string(usage.group_system_cpu->count()) + " us, peak " +
                                      (usage.group_peak_memory ? std::to_string(*usage.group_peak_memory) : "-"))
                                         .c_str()
                                   : "none");
  EXPECT_GT((usage.user_cpu + usage.system_cpu).count(), 0) << "a child that spun 300 ms";
  if (!usage.peak_memory && wintest::under_wine()) {
    // Seen in about half the runs: Wine 8 has the counters only while the
    // process is still there, and it is often gone when the exit is seen.
    std::printf("[   NOTE   ] Wine reported no peak working set for the ended child\n");
  } else {
    EXPECT_GT(usage.peak_memory, 16 * kMiB) << "a child that touched 16 MiB";
  }
  if (usage.group_user_cpu) {
    ASSERT_TRUE(usage.group_system_cpu);
    EXPECT_GE((*usage.group_user_cpu + *usage.group_system_cpu).count(), (usage.user_cpu + usage.system_cpu).count());
  }
  if (usage.group_peak_memory) {
    EXPECT_GT(*usage.group_peak_memory, 0u);
  }
  // Computed once: the same answer again.
  auto again = process.peek_exit();
  ASSERT_TRUE(again && again->usage);
  EXPECT_EQ(again->usage->user_cpu, usage.user_cpu);
  EXPECT_EQ(again->usage->peak_memory, usage.peak_memory);
  process.reap();
}

TEST(Win32Usage, IsReportedThroughTheBackend) {
  WinFixture f;
  auto run = wintest::run_child(f, child_config("usage", {"spin-ms", "200"}));
  ASSERT_TRUE(run.status);
  ASSERT_TRUE(run.status->usage.has_value()) << *run.status;
  EXPECT_GT((run.status->usage->user_cpu + run.status->usage->system_cpu).count(), 0);
  if (!run.status->usage->peak_memory && wintest::under_wine()) {
    std::printf("[   NOTE   ] Wine reported no peak working set for the ended child\n");
  } else {
    EXPECT_GT(run.status->usage->peak_memory, 0u);
  }
}

// --- Probes: which Job limits does this system enforce? -------------------------

// JOB_OBJECT_LIMIT_ACTIVE_PROCESS: with max_processes 2 the module may start
// one process, and CreateProcess fails for the next.
TEST(Win32LimitsProbe, ActiveProcessLimit) {
  ResourceLimits limits;
  limits.max_processes = 2;
  auto spawned = platform::spawn(limited_request({"spawn-children", "3", "10"}, limits));
  ASSERT_TRUE(spawned) << spawned.error();
  auto ended = run_to_end(**spawned);
  std::string line = ended.first_starting("spawn-children started ");
  std::printf("[   NOTE   ] max_processes 2: %s\n", joined(ended.out).c_str());
  ASSERT_FALSE(line.empty()) << joined(ended.out);
  long long started = value_after(line, "started ");
  if (started == 3 && wintest::under_wine()) {
    GTEST_SKIP() << "Wine does not enforce the Job's active process limit (JOB_OBJECT_LIMIT_ACTIVE_PROCESS): " << line;
  }
  EXPECT_EQ(started, 1) << line;
  EXPECT_NE(value_after(line, "error "), 0) << line;
}

// JOB_OBJECT_LIMIT_PROCESS_MEMORY: an allocation past address_space fails.
TEST(Win32LimitsProbe, ProcessMemoryLimit) {
  ResourceLimits limits;
  limits.address_space = 64 * kMiB;
  auto spawned = platform::spawn(limited_request({"alloc-mb", "256"}, limits));
  ASSERT_TRUE(spawned) << spawned.error();
  auto ended = run_to_end(**spawned);
  std::string line = ended.first_starting("alloc-mb ");
  std::printf("[   NOTE   ] address_space 64 MiB, 256 MiB asked: %s; limit_end %s\n", line.c_str(),
              ended.limit_end ? std::string(to_string(*ended.limit_end)).c_str() : "none");
  ASSERT_FALSE(line.empty()) << joined(ended.out);
  if (contains(line, "alloc-mb ok") && wintest::under_wine()) {
    GTEST_SKIP() << "Wine does not enforce the Job's per-process memory limit (JOB_OBJECT_LIMIT_PROCESS_MEMORY): "
                 << line;
  }
  EXPECT_TRUE(contains(line, "alloc-mb failed after")) << line;
  EXPECT_LT(value_after(line, "after "), 64) << line;
  EXPECT_EQ(ended.limit_end, std::optional<ExitStatus::Reason>(ExitStatus::Reason::MemoryLimit));
}

// JOB_OBJECT_LIMIT_JOB_MEMORY: the same for the whole Job (memory_max).
TEST(Win32LimitsProbe, JobMemoryLimit) {
  ResourceLimits limits;
  limits.memory_max = 64 * kMiB;
  auto spawned = platform::spawn(limited_request({"alloc-mb", "256"}, limits));
  ASSERT_TRUE(spawned) << spawned.error();
  auto ended = run_to_end(**spawned);
  std::string line = ended.first_starting("alloc-mb ");
  std::printf("[   NOTE   ] memory_max 64 MiB, 256 MiB asked: %s; limit_end %s\n", line.c_str(),
              ended.limit_end ? std::string(to_string(*ended.limit_end)).c_str() : "none");
  ASSERT_FALSE(line.empty()) << joined(ended.out);
  if (contains(line, "alloc-mb ok") && wintest::under_wine()) {
    GTEST_SKIP() << "Wine does not enforce the Job's memory limit (JOB_OBJECT_LIMIT_JOB_MEMORY): " << line;
  }
  EXPECT_TRUE(contains(line, "alloc-mb failed after")) << line;
  EXPECT_LT(value_after(line, "after "), 64) << line;
  EXPECT_EQ(ended.limit_end, std::optional<ExitStatus::Reason>(ExitStatus::Reason::MemoryLimit));
}

// JOB_OBJECT_LIMIT_PROCESS_TIME: a module that spins past cpu_time is
// terminated, and limit_end says CpuLimit.
TEST(Win32LimitsProbe, ProcessTimeLimit) {
  ResourceLimits limits;
  limits.cpu_time = std::chrono::seconds(1);
  auto spawned = platform::spawn(limited_request({"spin-ms", "5000"}, limits));
  ASSERT_TRUE(spawned) << spawned.error();
  auto ended = run_to_end(**spawned);
  ASSERT_TRUE(ended.status);
  std::printf("[   NOTE   ] cpu_time 1 s, 5 s spin: %s after %.1f s, out '%s', limit_end %s\n",
              ::testing::PrintToString(*ended.status).c_str(), ended.seconds, joined(ended.out).c_str(),
              ended.limit_end ? std::string(to_string(*ended.limit_end)).c_str() : "none");
  if (!ended.first_starting("spin-ms done").empty() && wintest::under_wine()) {
    GTEST_SKIP() << "Wine does not enforce the Job's per-process time limit (JOB_OBJECT_LIMIT_PROCESS_TIME): "
                 << joined(ended.out);
  }
  EXPECT_TRUE(ended.first_starting("spin-ms done").empty()) << "it spun to the end";
  EXPECT_FALSE(ended.status->success()) << *ended.status;
  EXPECT_LT(ended.seconds, 4.5);
  EXPECT_EQ(ended.limit_end, std::optional<ExitStatus::Reason>(ExitStatus::Reason::CpuLimit));
}

// JobObjectCpuRateControlInformation (hard cap): a module capped at 20 % of
// one CPU that spins 1.5 s gets about 0.3 s of CPU. Where the system refuses
// the rate control, Required fails naming limits.cpu_percent and
// BestEffort lists it as not applied.
TEST(Win32LimitsProbe, CpuRateHardCap) {
  ResourceLimits limits;
  limits.cpu_percent = 20;
  auto spawned = platform::spawn(limited_request({"spin-ms", "1500"}, limits));
  if (!spawned) {
    std::printf("[   NOTE   ] cpu_percent 20 refused: %s\n", spawned.error().message.c_str());
    EXPECT_EQ(spawned.error().code, std::make_error_code(std::errc::not_supported)) << spawned.error();
    EXPECT_TRUE(contains(spawned.error().message, "limits.cpu_percent cannot be enforced")) << spawned.error();
    ResourceLimits skip = best_effort();
    skip.cpu_percent = 20;
    auto skipped = platform::spawn(limited_request({"exit", "0"}, skip));
    ASSERT_TRUE(skipped) << skipped.error();
    auto not_applied = (*skipped)->limits_not_applied();
    ASSERT_EQ(not_applied.size(), 1u) << joined(not_applied);
    EXPECT_EQ(not_applied[0].rfind("limits.cpu_percent (", 0), 0u) << not_applied[0];
    auto ended = run_to_end(**skipped);
    EXPECT_TRUE(ended.status && ended.status->success());
    if (wintest::under_wine()) GTEST_SKIP() << "Wine does not enforce the Job's CPU rate cap (it refuses to set it)";
    FAIL() << "the CPU rate control was refused: " << spawned.error();
  }
  auto ended = run_to_end(**spawned);
  std::string line = ended.first_starting("spin-ms done cpu_ms ");
  std::printf("[   NOTE   ] cpu_percent 20, 1.5 s spin: %s\n", line.c_str());
  ASSERT_FALSE(line.empty()) << joined(ended.out);
  EXPECT_TRUE((*spawned)->limits_not_applied().empty());
  long long cpu_ms = value_after(line, "cpu_ms ");
  if (cpu_ms > 900 && wintest::under_wine()) {
    GTEST_SKIP() << "Wine does not enforce the Job's CPU rate cap (accepted, but the child got " << cpu_ms
                 << " ms of CPU in 1.5 s)";
  }
  EXPECT_LT(cpu_ms, 600) << line;
}

// --- Nothing left behind -------------------------------------------------------

// The completion port goes with the Process object, and a spawn refused after
// CreateProcessW (the CPU rate control, where the system refuses it) leaves
// no process and no handle.
TEST(Win32Limits, PortsAndRefusedChildrenLeaveNothingBehind) {
  auto run_batch = [] {
    for (int i = 0; i < 4; ++i) {
      ResourceLimits watched;  // memory and time limits: the Job gets a completion port
      watched.memory_max = 256 * kMiB;
      watched.cpu_time = std::chrono::seconds(60);
      auto spawned = platform::spawn(limited_request({"exit", "0"}, watched));
      ASSERT_TRUE(spawned) << spawned.error();
      run_to_end(**spawned);
      ResourceLimits capped;
      capped.cpu_percent = 50;
      auto maybe = platform::spawn(limited_request({"exit", "0"}, capped));
      if (maybe) run_to_end(**maybe);
    }
  };
  run_batch();  // one-time handles of the first spawns and threads
  std::optional<unsigned long> before;
  for (auto deadline = Clock::now() + 5s; Clock::now() < deadline; std::this_thread::sleep_for(100ms)) {
    auto now = wintest::handle_count();
    if (!now) GTEST_SKIP() << "this system reports no handle count";
    if (before && *now == *before) break;  // settled
    before = now;
  }
  run_batch();
  std::optional<unsigned long> after;
  for (auto deadline = Clock::now() + 5s; Clock::now() < deadline; std::this_thread::sleep_for(100ms)) {
    after = wintest::handle_count();
    if (after && *after <= *before + 2) break;
  }
  ASSERT_TRUE(after.has_value());
  std::printf("[   NOTE   ] handles %lu before, %lu after 8 limited spawns\n", *before, *after);
  EXPECT_LE(*after, *before + 2) << "handles of limited children are still open";
  EXPECT_EQ(children_of_this_process(), 0);
}

// --- The host hears of what BestEffort skipped ---------------------------------

TEST(Win32Limits, BestEffortWarnsThroughTheBackend) {
  WinFixture f;
  OopModuleConfig config = child_config("best-effort", {"say", "ran"});
  config.limits.enforcement = ResourceLimits::Enforcement::BestEffort;
  config.limits.file_size = kMiB;
  auto run = wintest::run_child(f, config);
  ASSERT_TRUE(run.status);
  EXPECT_TRUE(run.status->success()) << *run.status;
  EXPECT_EQ(run.out, std::vector<std::string>{"ran"});
  bool warned = false;
  for (const auto& record : f.sink->records()) {
    if (record.stream == LogStream::Library && record.level == LogLevel::Warn &&
        contains(record.line, "limits.file_size")) {
      warned = true;
    }
  }
  EXPECT_TRUE(warned) << "no Warn library record names limits.file_size: " << joined(run.events);
}
