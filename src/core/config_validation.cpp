#include "core/config_validation.hpp"

#include "core/text.hpp"

#include <optional>
#include <string>

namespace modkit {
namespace {

bool has_nul(std::string_view text) { return text.find('\0') != std::string_view::npos; }

Error invalid(const OopModuleConfig& config, std::initializer_list<std::string_view> what) {
  std::string text = core::concat({"module '", config.name, "': "});
  core::append(text, what);
  return make_error(std::errc::invalid_argument, std::move(text));
}

Error invalid(const OopModuleConfig& config, std::string_view what) { return invalid(config, {what}); }

// Values no module could run under, or that the kernel reads as "no change",
// are refused here, the same on every platform; what a platform cannot
// enforce is its own decision (platform::SpawnRequest::limits).
std::optional<Error> check_limits(const OopModuleConfig& config) {
  const ResourceLimits& limits = config.limits;
  constexpr std::uint64_t kMiB = 1024 * 1024;
  // Every byte limit stays below 2^62 so that no platform's arithmetic on it
  // (cgroup files, Job SIZE_T fields, rlim_t) can overflow.
  constexpr std::uint64_t kLargest = std::uint64_t(1) << 62;
  struct Bytes {
    const char* field;
    const std::optional<std::uint64_t>& value;
    std::uint64_t smallest;
  };
  // An ordinary dynamically linked program cannot even be loaded with less
  // address space or data than 16 MiB (ld.so maps libc) or fewer than 8
  // descriptors.
  for (const Bytes& bytes : {Bytes{"memory_max", limits.memory_max, kMiB}, Bytes{"memory_high", limits.memory_high, kMiB},
                             Bytes{"address_space", limits.address_space, 16 * kMiB},
                             Bytes{"data_size", limits.data_size, 16 * kMiB}, Bytes{"file_size", limits.file_size, 0},
                             Bytes{"core_size", limits.core_size, 0}}) {
    if (bytes.value && (*bytes.value < bytes.smallest || *bytes.value > kLargest)) {
      const bool floor = bytes.smallest != 0;
      const core::Decimal mib(bytes.smallest / kMiB);
      return invalid(config, {"limits.", bytes.field, " must be ", floor ? "at least " : "",
                              floor ? std::string_view(mib) : "", floor ? " MiB and " : "", "at most 2^62 bytes"});
    }
  }
  if (limits.cpu_percent && (*limits.cpu_percent < 1 || *limits.cpu_percent > 100000)) {
    return invalid(config, "limits.cpu_percent must be 1 to 100000 (percent of one CPU)");
  }
  // pids.max takes no more than PID_MAX_LIMIT (4194304, include/linux/threads.h).
  if (limits.max_processes && (*limits.max_processes < 1 || *limits.max_processes > 4194304)) {
    return invalid(config, "limits.max_processes must be 1 to 4194304");
  }
  if (limits.user_processes && (*limits.user_processes < 1 || *limits.user_processes > kLargest)) {
    return invalid(config, "limits.user_processes must be 1 to 2^62");
  }
  if (limits.cpu_time && (limits.cpu_time->count() < 1 || limits.cpu_time->count() > 100LL * 365 * 24 * 3600)) {
    return invalid(config, "limits.cpu_time must be at least one second (and at most a century)");
  }
  if (limits.open_files && (*limits.open_files < 8 || *limits.open_files > (std::uint64_t(1) << 30))) {
    return invalid(config, "limits.open_files must be at least 8 (stdio, and what the loader opens) and at most 2^30");
  }
  if (limits.enforcement != ResourceLimits::Enforcement::Required &&
      limits.enforcement != ResourceLimits::Enforcement::BestEffort) {
    return invalid(config, "limits.enforcement is neither Required nor BestEffort");
  }
  return std::nullopt;
}

std::optional<Error> check_privileges(const OopModuleConfig& config) {
  const Privileges& privileges = config.privileges;
  // (uid_t)-1 and (gid_t)-1 mean "leave unchanged" to setresuid/setresgid.
  constexpr std::uint32_t kUnchanged = 0xFFFFFFFFu;
  if (privileges.user && *privileges.user == kUnchanged) return invalid(config, "privileges.user must not be 4294967295 (-1)");
  if (privileges.group && *privileges.group == kUnchanged) {
    return invalid(config, "privileges.group must not be 4294967295 (-1)");
  }
  if (privileges.user && !privileges.group) {
    return invalid(config, "privileges.user needs privileges.group too (a module never keeps the host's group by accident)");
  }
  if (privileges.supplementary_groups) {
    // NGROUPS_MAX on Linux since 2.6.4.
    if (privileges.supplementary_groups->size() > 65536) {
      return invalid(config, "privileges.supplementary_groups holds more than 65536 groups");
    }
    for (std::uint32_t group : *privileges.supplementary_groups) {
      if (group == kUnchanged) return invalid(config, "privileges.supplementary_groups must not hold 4294967295 (-1)");
    }
  }
  if (privileges.umask && *privileges.umask > 0777) return invalid(config, "privileges.umask must be 0 to 0777");
  return std::nullopt;
}

}  // namespace

Result<platform::SpawnRequest> validate_config(const OopModuleConfig& config) {
  if (config.backend != BackendKind::LocalProcess) {
    return core::error_of(std::errc::invalid_argument,
                          {"LocalProcessBackend can only spawn LocalProcess instances, got ", to_string(config.backend)});
  }
  if (config.name.empty()) return make_error(std::errc::invalid_argument, "module name must not be empty");
  if (has_nul(config.name)) return make_error(std::errc::invalid_argument, "module name contains a NUL byte");
  if (!config.binary || config.binary->empty()) {
    return invalid(config, "executable_path must be set for LocalProcess backend");
  }
  if (has_nul(*config.binary)) return invalid(config, "binary path contains a NUL byte");
  for (std::size_t i = 0; i < config.args.size(); ++i) {
    if (has_nul(config.args[i])) return invalid(config, {"argument ", core::Decimal(i + 1), " contains a NUL byte"});
  }
  platform::SpawnRequest request;
  for (const auto& [key, value] : config.env) {
    if (key.empty()) return invalid(config, "environment variable with an empty name");
    if (key.find('=') != std::string::npos) {
      return invalid(config, {"environment variable name '", key, "' contains '='"});
    }
    if (has_nul(key)) return invalid(config, "environment variable name contains a NUL byte");
    if (has_nul(value)) return invalid(config, {"value of environment variable '", key, "' contains a NUL byte"});
    request.env.emplace_back(key, value);
  }
  if (config.working_directory) {
    if (config.working_directory->empty()) return invalid(config, "working directory is an empty path");
    if (has_nul(*config.working_directory)) return invalid(config, "working directory contains a NUL byte");
  }
  const Readiness& readiness = config.readiness;
  // A day bounds every wait and keeps the deadline arithmetic far from overflow.
  constexpr std::chrono::milliseconds kLongestWait = std::chrono::hours(24);
  if (readiness.mode != Readiness::Mode::Immediate &&
      (readiness.timeout <= std::chrono::milliseconds::zero() || readiness.timeout > kLongestWait)) {
    return invalid(config, "readiness timeout must be positive and at most a day (there is no unbounded wait)");
  }
  if (readiness.mode == Readiness::Mode::StdoutLine && readiness.line_prefix.empty()) {
    return invalid(config, "readiness line_prefix must not be empty with Readiness::Mode::StdoutLine");
  }
  if (readiness.watchdog < std::chrono::milliseconds::zero() || readiness.watchdog > kLongestWait) {
    return invalid(config, "readiness watchdog must be zero (none) or positive and at most a day");
  }
  if (readiness.watchdog > std::chrono::milliseconds::zero() && readiness.mode != Readiness::Mode::Notify) {
    return invalid(config, "a readiness watchdog needs Readiness::Mode::Notify (pings come on the descriptor)");
  }
  if (readiness.mode == Readiness::Mode::Notify) {
    request.notify = true;
    if (readiness.watchdog > std::chrono::milliseconds::zero()) {
      request.env.emplace_back("MODKIT_WATCHDOG_MS", std::to_string(readiness.watchdog.count()));
    }
  }
  if (auto error = check_limits(config)) return std::move(*error);
  if (auto error = check_privileges(config)) return std::move(*error);
  request.limits = config.limits;
  request.privileges = config.privileges;
  request.module = config.name;
  request.binary = *config.binary;
  request.args = config.args;
  request.clear_environment = config.clear_environment;
  request.working_directory = config.working_directory;
  request.graceful_stop = config.graceful_stop;
  request.allow_batch_files = config.allow_batch_files;
  request.show_window = config.show_window;
  return request;
}

}  // namespace modkit
