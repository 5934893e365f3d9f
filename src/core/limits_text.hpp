// Words for the library's records about limits: what a module was started
// under, and what it used.
#pragma once

#include <string>
#include <vector>

#include "modkit/modkit.hpp"

namespace modkit::core {

/// "limits: address_space 64 MiB, cpu_time 2 s; runs as uid 65534 gid 65534,
/// no_new_privileges"; empty when nothing is set.
std::string describe_limits(const ResourceLimits& limits, const Privileges& privileges);
/// "used 0.120 s user, 0.010 s system, peak 63.2 MiB (whole group: ...)".
std::string describe_usage(const ResourceUsage& usage);
/// `limits` without the fields named at the start of each entry of `skipped`
/// ("limits.memory_max (why)"), as Process::limits_not_applied lists them.
ResourceLimits without(ResourceLimits limits, const std::vector<std::string>& skipped);

}  // namespace modkit::core
