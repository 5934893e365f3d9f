// Internal: ResourceLimits and Privileges on Windows, through the Job object
// each child runs in (src/win32/process.cpp), and what an ended child used.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "modkit/modkit.hpp"
#include "win32/windows_util.hpp"

namespace modkit::win32 {

/// The set fields of `limits` that no Job limit enforces, each as
/// "limits.<field>", in declaration order.
std::vector<std::string> unenforceable_limits(const ResourceLimits& limits);

/// The error a spawn must fail with before anything is created: not_supported
/// for any Privileges field but die_with_host (whatever the enforcement), and
/// for the unenforceable limits under Enforcement::Required. nullopt: go on,
/// with unenforceable_limits() skipped (BestEffort).
std::optional<Error> refuse_unsupported(const std::string& module, const ResourceLimits& limits,
                                        const Privileges& privileges);

/// "limits.<field> (not supported on Windows)" for each unenforceable field:
/// what Process::limits_not_applied() reports under BestEffort.
std::vector<std::string> not_applied_entries(const ResourceLimits& limits);

/// Adds the flags and values of the limits a Job enforces to `information`,
/// keeping the flags already there.
void add_job_limits(const ResourceLimits& limits, JOBOBJECT_EXTENDED_LIMIT_INFORMATION& information);

/// JOBOBJECT_CPU_RATE_CONTROL_INFORMATION::CpuRate for a hard cap of
/// `percent_of_one_cpu` on a machine of `processors` processors: the rate is
/// a share of the whole machine in 1/100 %, so 1 to 10000.
DWORD hard_cap_cpu_rate(std::uint32_t percent_of_one_cpu, DWORD processors);

/// The processors the CPU rate is a share of (every processor group).
DWORD processor_count();

/// True when a limit is set whose end the Job reports through a completion
/// port (memory_max, address_space, cpu_time).
bool has_reported_limits(const ResourceLimits& limits);

/// The Job's limit notifications: a completion port associated with the Job,
/// drained without blocking. Not thread-safe (the owner locks). The Job also
/// posts NEW_PROCESS and EXIT_PROCESS for every process of the tree, and
/// they stay queued until drained: a module that starts processes all its
/// life queues two small packets for each until its end.
class JobLimitEvents {
 public:
  /// Creates the port and associates it with `job`; 0 or GetLastError().
  DWORD attach(HANDLE job);
  /// Reads every queued message (never waits) and returns what ended the
  /// process `module_pid` as far as they tell: CpuLimit when its per-process
  /// time limit (or the Job's time limit) was reached, else MemoryLimit when
  /// an allocation in the Job failed at a memory limit. What was seen stays
  /// seen. nullopt without a port.
  std::optional<ExitStatus::Reason> drain(DWORD module_pid);
  /// The port (null before attach): tests post the Job's messages to it.
  HANDLE port() const { return port_.get(); }

 private:
  UniqueHandle port_;
  bool memory_limit_seen_ = false;
  bool cpu_limit_seen_ = false;
};

/// What the exited process and its Job used; nullopt when even the process
/// times cannot be read. `job` may be null (no group figures then).
std::optional<ResourceUsage> read_usage(HANDLE process, HANDLE job);

}  // namespace modkit::win32
