#include "core/limits_text.hpp"

#include <cinttypes>
#include <cstdio>

#include "core/text.hpp"

namespace modkit::core {
namespace {

// A size or a time in words, in a buffer of its own (no allocation);
// converts to a string_view that lives as long as it does.
struct Words {
  char text[48];
  operator std::string_view() const { return text; }  // NOLINT
};

Words bytes(std::uint64_t value) {
  Words words;
  if (value >= (std::uint64_t(1) << 30) && value % (std::uint64_t(1) << 20) == 0) {
    std::snprintf(words.text, sizeof words.text, "%.1f GiB", static_cast<double>(value) / (1 << 30));
  } else if (value >= (std::uint64_t(1) << 20)) {
    std::snprintf(words.text, sizeof words.text, "%.1f MiB", static_cast<double>(value) / (1 << 20));
  } else {
    std::snprintf(words.text, sizeof words.text, "%" PRIu64 " bytes", value);
  }
  return words;
}

Words seconds(std::chrono::microseconds value) {
  Words words;
  std::snprintf(words.text, sizeof words.text, "%.3f s", static_cast<double>(value.count()) / 1e6);
  return words;
}

// Appends ", " (but first) and the pieces.
void add(std::string& text, std::initializer_list<std::string_view> pieces) {
  if (!text.empty()) text += ", ";
  append(text, pieces);
}

}  // namespace

std::string describe_limits(const ResourceLimits& limits, const Privileges& privileges) {
  std::string set;
  if (limits.memory_max) add(set, {"memory_max ", bytes(*limits.memory_max)});
  if (limits.memory_high) add(set, {"memory_high ", bytes(*limits.memory_high)});
  if (limits.cpu_percent) add(set, {"cpu_percent ", Decimal(*limits.cpu_percent), "%"});
  if (limits.max_processes) add(set, {"max_processes ", Decimal(*limits.max_processes)});
  if (limits.address_space) add(set, {"address_space ", bytes(*limits.address_space)});
  if (limits.data_size) add(set, {"data_size ", bytes(*limits.data_size)});
  if (limits.cpu_time) add(set, {"cpu_time ", Decimal(limits.cpu_time->count()), " s"});
  if (limits.open_files) add(set, {"open_files ", Decimal(*limits.open_files)});
  if (limits.file_size) add(set, {"file_size ", bytes(*limits.file_size)});
  if (limits.core_size) add(set, {"core_size ", bytes(*limits.core_size)});
  if (limits.user_processes) add(set, {"user_processes ", Decimal(*limits.user_processes)});
  std::string identity;
  if (privileges.user) add(identity, {"uid ", Decimal(*privileges.user)});
  if (privileges.group) add(identity, {"gid ", Decimal(*privileges.group)});
  if (privileges.supplementary_groups) {
    add(identity, {Decimal(privileges.supplementary_groups->size()), " supplementary group(s)"});
  }
  if (privileges.no_new_privileges) add(identity, {"no_new_privileges"});
  if (privileges.umask) {
    char text[16];
    std::snprintf(text, sizeof text, "umask %03o", static_cast<unsigned>(*privileges.umask));
    add(identity, {text});
  }
  if (privileges.die_with_host) add(identity, {"dies with the host"});
  std::string text;
  if (!set.empty()) append(text, {"limits: ", set});
  if (!identity.empty()) append(text, {text.empty() ? "" : "; ", "runs with ", identity});
  return text;
}

ResourceLimits without(ResourceLimits limits, const std::vector<std::string>& skipped) {
  for (const auto& entry : skipped) {
    auto is = [&](const char* field) {
      std::size_t length = std::char_traits<char>::length(field);
      return entry.compare(0, length, field) == 0 && (entry.size() == length || entry[length] == ' ');
    };
    if (is("limits.memory_max")) limits.memory_max.reset();
    if (is("limits.memory_high")) limits.memory_high.reset();
    if (is("limits.cpu_percent")) limits.cpu_percent.reset();
    if (is("limits.max_processes")) limits.max_processes.reset();
    if (is("limits.address_space")) limits.address_space.reset();
    if (is("limits.data_size")) limits.data_size.reset();
    if (is("limits.cpu_time")) limits.cpu_time.reset();
    if (is("limits.open_files")) limits.open_files.reset();
    if (is("limits.file_size")) limits.file_size.reset();
    if (is("limits.core_size")) limits.core_size.reset();
    if (is("limits.user_processes")) limits.user_processes.reset();
  }
  return limits;
}

std::string describe_usage(const ResourceUsage& usage) {
  std::string text = concat({"used ", seconds(usage.user_cpu), " user, ", seconds(usage.system_cpu), " system"});
  if (usage.peak_memory) append(text, {", peak ", bytes(*usage.peak_memory)});
  std::string group;
  if (usage.group_user_cpu) add(group, {seconds(*usage.group_user_cpu), " user"});
  if (usage.group_system_cpu) add(group, {seconds(*usage.group_system_cpu), " system"});
  if (usage.group_peak_memory) add(group, {"peak ", bytes(*usage.group_peak_memory)});
  if (!group.empty()) append(text, {" (whole group: ", group, ")"});
  return text;
}

}  // namespace modkit::core
