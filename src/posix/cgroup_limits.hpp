// ResourceLimits' group limits in an instance's cgroup v2 cell (Linux), and
// what the cell used. Every function works on an open directory descriptor
// (openat), so the backend needs no path lookups and at most one more
// descriptor at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "modkit/modkit.hpp"

namespace modkit::posix {

/// The group-limit fields of `limits` that are set (memory_max, memory_high,
/// cpu_percent, max_processes) but cannot be enforced in the cell whose
/// directory is `cell_fd` (path `cell_path`, for messages): its
/// cgroup.controllers lacks the controller (memory / cpu / pids), or cannot
/// be read. One entry per field, "limits.<field> (<why, what to do>)".
std::vector<std::string> unenforceable_cgroup_limits(int cell_fd, const std::string& cell_path,
                                                     const ResourceLimits& limits);

/// Writes the set group fields into the cell, before any process is in it:
/// memory.max (with memory.oom.group = 1, so the OOM killer ends the whole
/// instance together), memory.high, cpu.max ("<percent * 1000> 100000"),
/// pids.max. Nothing for unset fields. The first failing open or write ends
/// it, with its errno; the message names the file and the value.
Result<void> write_cgroup_limits(int cell_fd, const std::string& cell_path, const ResourceLimits& limits);

/// A cell's totals, each empty when it could not be read.
struct CgroupUsage {
  std::optional<std::chrono::microseconds> user, system;  // cpu.stat (every cgroup v2 directory)
  std::optional<std::uint64_t> peak_memory;                 // memory.peak (Linux 5.19+, memory controller)
};
/// Reads them one file at a time (one descriptor at most).
CgroupUsage read_cgroup_usage(int cell_fd);

/// The oom_kill count of the cell's memory.events; 0 when it cannot be read.
std::uint64_t read_oom_kills(int cell_fd);

/// In the backend's own directory `directory_fd` (no process, only cells),
/// enables each of memory, cpu, pids that its cgroup.controllers lists, by
/// writing "+memory" etc. to cgroup.subtree_control, one write each (one
/// refused does not stop the others). Returns the names enabled.
std::vector<std::string> enable_limit_controllers(int directory_fd);

}  // namespace modkit::posix
