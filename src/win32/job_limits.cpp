// ResourceLimits through the child's Job object, and ResourceUsage from the
// process and the Job. Facts cited are from Microsoft's documentation of
// JOBOBJECT_BASIC_LIMIT_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
// JOBOBJECT_CPU_RATE_CONTROL_INFORMATION and
// JOBOBJECT_ASSOCIATE_COMPLETION_PORT.
#include "win32/job_limits.hpp"

#include <psapi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace modkit::win32 {
namespace {

struct Unenforceable {
  const char* field;
  bool set;
  const char* why;
};

// Every ResourceLimits field no Job limit covers, in declaration order.
std::vector<Unenforceable> unenforceable(const ResourceLimits& limits) {
  return {
      {"memory_high", limits.memory_high.has_value(), "a Job has no soft memory limit; memory_max is its hard one"},
      {"data_size", limits.data_size.has_value(),
       "Windows has no data segment limit; address_space is the per-process committed memory limit"},
      {"open_files", limits.open_files.has_value(), "Windows has no limit on a process's open handles"},
      {"file_size", limits.file_size.has_value(), "Windows has no per-process file size limit"},
      {"core_size", limits.core_size.has_value(), "Windows writes no core dumps"},
      {"user_processes", limits.user_processes.has_value(),
       "Windows has no per-user process limit; max_processes is the Job's"},
  };
}

// Lists "first (why), nor can|is second (why), ..." in the messages below.
std::string name_all(const std::vector<std::pair<std::string, const char*>>& fields, const char* verb_first,
                     const char* nor) {
  std::string text;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i == 0) {
      text += fields[i].first + verb_first + " (" + fields[i].second + ")";
    } else {
      text += std::string(", ") + nor + " " + fields[i].first + " (" + fields[i].second + ")";
    }
  }
  return text;
}

std::int64_t ticks(FILETIME time) {
  return static_cast<std::int64_t>((static_cast<std::uint64_t>(time.dwHighDateTime) << 32) | time.dwLowDateTime);
}

// FILETIME and the Job's LARGE_INTEGER times count 100 ns.
std::chrono::microseconds from_ticks(std::int64_t hundred_nanoseconds) {
  return std::chrono::microseconds(hundred_nanoseconds / 10);
}

SIZE_T to_size(std::uint64_t bytes) {
  return static_cast<SIZE_T>(std::min<std::uint64_t>(bytes, std::numeric_limits<SIZE_T>::max()));
}

}  // namespace

std::vector<std::string> unenforceable_limits(const ResourceLimits& limits) {
  std::vector<std::string> fields;
  for (const auto& entry : unenforceable(limits)) {
    if (entry.set) fields.push_back(std::string("limits.") + entry.field);
  }
  return fields;
}

std::vector<std::string> not_applied_entries(const ResourceLimits& limits) {
  std::vector<std::string> entries;
  for (auto& field : unenforceable_limits(limits)) entries.push_back(field + " (not supported on Windows)");
  return entries;
}

std::optional<Error> refuse_unsupported(const std::string& module, const ResourceLimits& limits,
                                        const Privileges& privileges) {
  // Identity and umask are POSIX notions: a module runs as the host's
  // account, with the host's token. die_with_host is accepted: it is always
  // so here (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: the Job dies with the last
  // handle to it, the host's, however the host ends).
  std::vector<std::pair<std::string, const char*>> privilege_fields;
  if (privileges.user) privilege_fields.emplace_back("privileges.user", "a module runs as the host's account");
  if (privileges.group) privilege_fields.emplace_back("privileges.group", "Windows has no POSIX group ids");
  if (privileges.supplementary_groups) {
    privilege_fields.emplace_back("privileges.supplementary_groups", "Windows has no POSIX group ids");
  }
  if (privileges.no_new_privileges) {
    privilege_fields.emplace_back("privileges.no_new_privileges",
                                  "Windows has no set-user-id programs or file capabilities to block");
  }
  if (privileges.umask) privilege_fields.emplace_back("privileges.umask", "Windows files have ACLs, not mode bits");
  if (!privilege_fields.empty()) {
    return make_error(std::errc::not_supported,
                      "module '" + module + "': " + name_all(privilege_fields, " is not supported on Windows", "nor is"));
  }

  if (limits.enforcement != ResourceLimits::Enforcement::Required) return std::nullopt;
  std::vector<std::pair<std::string, const char*>> limit_fields;
  for (const auto& entry : unenforceable(limits)) {
    if (entry.set) limit_fields.emplace_back(std::string("limits.") + entry.field, entry.why);
  }
  if (limit_fields.empty()) return std::nullopt;
  return make_error(std::errc::not_supported,
                    "module '" + module + "': " +
                        name_all(limit_fields, " cannot be enforced on Windows", "nor can") +
                        "; with limits.enforcement BestEffort the module runs without them");
}

void add_job_limits(const ResourceLimits& limits, JOBOBJECT_EXTENDED_LIMIT_INFORMATION& information) {
  JOBOBJECT_BASIC_LIMIT_INFORMATION& basic = information.BasicLimitInformation;
  if (limits.memory_max) {
    // Committed memory of the whole Job: an allocation past it fails
    // (JOB_OBJECT_MSG_JOB_MEMORY_LIMIT); nothing is killed for it.
    basic.LimitFlags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
    information.JobMemoryLimit = to_size(*limits.memory_max);
  }
  if (limits.address_space) {
    // Committed memory of each process of the Job, the closest to RLIMIT_AS.
    basic.LimitFlags |= JOB_OBJECT_LIMIT_PROCESS_MEMORY;
    information.ProcessMemoryLimit = to_size(*limits.address_space);
  }
  if (limits.cpu_time) {
    // User-mode time of each process, in 100 ns ticks; the system checks it
    // periodically and terminates a process past it.
    basic.LimitFlags |= JOB_OBJECT_LIMIT_PROCESS_TIME;
    basic.PerProcessUserTimeLimit.QuadPart = static_cast<LONGLONG>(limits.cpu_time->count()) * 10'000'000;
  }
  if (limits.max_processes) {
    // Processes only (threads are not counted); a CreateProcess past it fails.
    basic.LimitFlags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
    basic.ActiveProcessLimit =
        static_cast<DWORD>(std::min<std::uint64_t>(*limits.max_processes, std::numeric_limits<DWORD>::max()));
  }
}

DWORD hard_cap_cpu_rate(std::uint32_t percent_of_one_cpu, DWORD processors) {
  // CpuRate is "the number of cycles per 10,000 cycles" of the whole machine:
  // a percent of one CPU times 100, over the number of processors.
  std::uint64_t rate = static_cast<std::uint64_t>(percent_of_one_cpu) * 100 / std::max<DWORD>(processors, 1);
  return static_cast<DWORD>(std::clamp<std::uint64_t>(rate, 1, 10000));
}

DWORD processor_count() {
  DWORD count = GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
  if (count != 0) return count;
  SYSTEM_INFO info{};
  GetSystemInfo(&info);
  return std::max<DWORD>(info.dwNumberOfProcessors, 1);
}

bool has_reported_limits(const ResourceLimits& limits) {
  return limits.memory_max || limits.address_space || limits.cpu_time;
}

DWORD JobLimitEvents::attach(HANDLE job) {
  UniqueHandle port(CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 1));
  if (!port) {
    DWORD error = GetLastError();
    port.release();
    return error;
  }
  JOBOBJECT_ASSOCIATE_COMPLETION_PORT association{};
  association.CompletionKey = job;
  association.CompletionPort = port.get();
  if (!SetInformationJobObject(job, JobObjectAssociateCompletionPortInformation, &association, sizeof association)) {
    return GetLastError();
  }
  port_ = std::move(port);
  return 0;
}

std::optional<ExitStatus::Reason> JobLimitEvents::drain(DWORD module_pid) {
  if (!port_) return std::nullopt;
  // Bounded: a tree that keeps starting processes keeps posting
  // NEW_PROCESS / EXIT_PROCESS; what is left is read by the next call.
  constexpr int kMostPerCall = 1 << 16;
  for (int read = 0; read < kMostPerCall; ++read) {
    DWORD message = 0;
    ULONG_PTR key = 0;
    LPOVERLAPPED value = nullptr;
    if (!GetQueuedCompletionStatus(port_.get(), &message, &key, &value, 0)) break;  // empty (WAIT_TIMEOUT)
    // For these messages lpOverlapped carries the id of the process concerned.
    const auto pid = static_cast<DWORD>(reinterpret_cast<ULONG_PTR>(value));
    switch (message) {
      case JOB_OBJECT_MSG_END_OF_PROCESS_TIME:
        // A descendant past its own limit does not end the module.
        if (pid == module_pid) cpu_limit_seen_ = true;
        break;
      case JOB_OBJECT_MSG_END_OF_JOB_TIME:
        cpu_limit_seen_ = true;
        break;
      case JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT:
      case JOB_OBJECT_MSG_JOB_MEMORY_LIMIT:
        memory_limit_seen_ = true;
        break;
      default:
        break;
    }
  }
  // The time limit terminates the process; the memory limits only fail an
  // allocation, which the module may have survived.
  if (cpu_limit_seen_) return ExitStatus::Reason::CpuLimit;
  if (memory_limit_seen_) return ExitStatus::Reason::MemoryLimit;
  return std::nullopt;
}

std::optional<ResourceUsage> read_usage(HANDLE process, HANDLE job) {
  FILETIME creation{}, exit{}, kernel{}, user{};
  if (!GetProcessTimes(process, &creation, &exit, &kernel, &user)) return std::nullopt;
  ResourceUsage usage;
  usage.user_cpu = from_ticks(ticks(user));
  usage.system_cpu = from_ticks(ticks(kernel));
  // kernel32 exports K32GetProcessMemoryInfo since Windows 7 (psapi.dll's
  // GetProcessMemoryInfo forwards to it), so no psapi import is needed.
  // Windows keeps the counters of an ended process while a handle is open;
  // Wine 8 often reads 0 once the process has gone: unknown, left empty.
  PROCESS_MEMORY_COUNTERS counters{};
  counters.cb = sizeof counters;
  if (K32GetProcessMemoryInfo(process, &counters, sizeof counters) && counters.PeakWorkingSetSize > 0) {
    usage.peak_memory = counters.PeakWorkingSetSize;
  }
  if (job == nullptr) return usage;

  JOBOBJECT_BASIC_ACCOUNTING_INFORMATION accounting{};
  if (QueryInformationJobObject(job, JobObjectBasicAccountingInformation, &accounting, sizeof accounting, nullptr)) {
    // The totals include the module's own times; smaller ones mean the
    // system keeps no accounting for the Job (Wine 8 answers zeros).
    auto group_user = from_ticks(accounting.TotalUserTime.QuadPart);
    auto group_system = from_ticks(accounting.TotalKernelTime.QuadPart);
    if (group_user + group_system >= usage.user_cpu + usage.system_cpu) {
      usage.group_user_cpu = group_user;
      usage.group_system_cpu = group_system;
    }
  }
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION extended{};
  if (QueryInformationJobObject(job, JobObjectExtendedLimitInformation, &extended, sizeof extended, nullptr) &&
      extended.PeakJobMemoryUsed != 0) {  // a Job that ran a process committed memory: 0 is "not tracked" (Wine 8)
    usage.group_peak_memory = extended.PeakJobMemoryUsed;
  }
  return usage;
}

}  // namespace modkit::win32
