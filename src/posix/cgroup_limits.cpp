#include "posix/cgroup_limits.hpp"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <limits>
#include <string_view>

#include "core/text.hpp"
#include "platform/system.hpp"
#include "posix/cgroup.hpp"
#include "posix/unique_fd.hpp"

namespace modkit::posix {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// cgroup.controllers is one line of space-separated names. Whole words are
// compared: "cpuset" does not provide "cpu".
bool lists_word(std::string_view text, std::string_view word) {
  std::size_t at = 0;
  while (at < text.size()) {
    while (at < text.size() && is_space(text[at])) ++at;
    std::size_t end = at;
    while (end < text.size() && !is_space(text[end])) ++end;
    if (text.substr(at, end - at) == word) return true;
    at = end;
  }
  return false;
}

// A whole decimal number with an optional line end; anything else (a sign,
// "max", trailing text, more than 64 bits) is none.
std::optional<std::uint64_t> parse_number(std::string_view text) {
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  if (text.empty()) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    auto digit = static_cast<std::uint64_t>(c - '0');
    if (value > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

// The value of the first "<key> <number>" line of a flat keyed file
// (cpu.stat, memory.events).
std::optional<std::uint64_t> keyed_number(std::string_view text, std::string_view key) {
  while (!text.empty()) {
    std::size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (line.size() > key.size() && line.compare(0, key.size(), key) == 0 && line[key.size()] == ' ') {
      return parse_number(line.substr(key.size() + 1));
    }
  }
  return std::nullopt;
}

std::optional<std::chrono::microseconds> microseconds(std::optional<std::uint64_t> value) {
  if (!value || *value > static_cast<std::uint64_t>(std::numeric_limits<std::chrono::microseconds::rep>::max())) {
    return std::nullopt;
  }
  return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(*value));
}

// One write(2) with the whole value: a cgroup file parses each write on its
// own, so a value cut in two would be two (wrong) values.
bool write_whole(int fd, std::string_view value) {
  ssize_t written;
  do {
    written = write(fd, value.data(), value.size());
  } while (written < 0 && errno == EINTR);
  if (written >= 0 && written != static_cast<ssize_t>(value.size())) errno = EIO;
  return written == static_cast<ssize_t>(value.size());
}

Result<void> set_file(int cell_fd, const std::string& cell_path, const char* field, const char* file,
                      std::string_view value) {
  UniqueFd fd(openat(cell_fd, file, O_WRONLY | O_CLOEXEC));
  if (fd && write_whole(fd.get(), value)) return {};
  std::error_code code = platform::last_error();
  return Error{code, core::concat({"limits.", field, ": cannot write '", value, "' to '", cell_path, "/", file, "': ",
                                   code.message()})};
}

struct GroupField {
  const char* name;
  const char* controller;
  bool set;
};

}  // namespace

std::vector<std::string> unenforceable_cgroup_limits(int cell_fd, const std::string& cell_path,
                                                     const ResourceLimits& limits) {
  const GroupField fields[] = {
      {"memory_max", "memory", limits.memory_max.has_value()},
      {"memory_high", "memory", limits.memory_high.has_value()},
      {"cpu_percent", "cpu", limits.cpu_percent.has_value()},
      {"max_processes", "pids", limits.max_processes.has_value()},
  };
  std::vector<std::string> missing;
  bool any = false;
  for (const auto& field : fields) any = any || field.set;
  if (!any) return missing;

  errno = 0;
  std::string controllers = read_text(cell_fd, "cgroup.controllers");
  // An empty file is a cgroup with no controller; a failed open or read is
  // one we know nothing about, and says so.
  std::string unreadable;
  if (controllers.empty() && errno != 0) unreadable = platform::last_error().message();
  for (const auto& field : fields) {
    if (!field.set) continue;
    std::string entry = core::concat({"limits.", field.name, " ("});
    if (!unreadable.empty()) {
      core::append(entry, {"cannot read '", cell_path, "/cgroup.controllers' to see whether the ", field.controller,
                           " controller is enabled: ", unreadable, ")"});
    } else if (!lists_word(controllers, field.controller)) {
      // The cell gets what its parent (the backend's directory) enables, and
      // that directory can enable only what cgroup_parent enables for it.
      core::append(entry, {"the ", field.controller, " controller is not enabled for cgroup '", cell_path,
                           "': delegate it to cgroup_parent, i.e. enable it in the cgroup.subtree_control of "
                           "cgroup_parent and of every cgroup above it)"});
    } else {
      continue;
    }
    missing.push_back(std::move(entry));
  }
  return missing;
}

Result<void> write_cgroup_limits(int cell_fd, const std::string& cell_path, const ResourceLimits& limits) {
  if (limits.memory_max) {
    if (auto written = set_file(cell_fd, cell_path, "memory_max", "memory.max", core::Decimal(*limits.memory_max));
        !written) {
      return written;
    }
    // Without it the OOM killer takes one process (the largest) and leaves
    // the rest of the instance running crippled.
    if (auto written = set_file(cell_fd, cell_path, "memory_max", "memory.oom.group", "1"); !written) return written;
  }
  if (limits.memory_high) {
    if (auto written = set_file(cell_fd, cell_path, "memory_high", "memory.high", core::Decimal(*limits.memory_high));
        !written) {
      return written;
    }
  }
  if (limits.cpu_percent) {
    // Percent of one CPU: quota per 100 ms period, in microseconds.
    std::uint64_t quota = static_cast<std::uint64_t>(*limits.cpu_percent) * 1000;
    if (auto written = set_file(cell_fd, cell_path, "cpu_percent", "cpu.max", core::concat({core::Decimal(quota), " 100000"}));
        !written) {
      return written;
    }
  }
  if (limits.max_processes) {
    if (auto written =
            set_file(cell_fd, cell_path, "max_processes", "pids.max", core::Decimal(*limits.max_processes));
        !written) {
      return written;
    }
  }
  return {};
}

CgroupUsage read_cgroup_usage(int cell_fd) {
  CgroupUsage usage;
  {
    std::string stat = read_text(cell_fd, "cpu.stat");
    usage.user = microseconds(keyed_number(stat, "user_usec"));
    usage.system = microseconds(keyed_number(stat, "system_usec"));
  }  // one file in memory at a time; read_text closes its descriptor itself
  usage.peak_memory = parse_number(read_text(cell_fd, "memory.peak"));
  return usage;
}

std::uint64_t read_oom_kills(int cell_fd) {
  return keyed_number(read_text(cell_fd, "memory.events"), "oom_kill").value_or(0);
}

std::vector<std::string> enable_limit_controllers(int directory_fd) {
  std::vector<std::string> enabled;
  std::string controllers = read_text(directory_fd, "cgroup.controllers");
  UniqueFd control;
  for (const char* controller : {"memory", "cpu", "pids"}) {
    if (!lists_word(controllers, controller)) continue;
    if (!control) {
      control.reset(openat(directory_fd, "cgroup.subtree_control", O_WRONLY | O_CLOEXEC));
      if (!control) break;
    }
    // Each write is one command to the kernel, whatever the file offset, so
    // one descriptor serves all three and a refused one leaves the others.
    if (write_whole(control.get(), std::string("+") + controller)) enabled.push_back(controller);
  }
  return enabled;
}

}  // namespace modkit::posix
