// Building a child's environment ("KEY=value" strings).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace modkit::posix {

/// The host's entries (unless `clear`), minus those whose key an override
/// names, followed by the overrides in order. Host entries without '=' are
/// dropped.
std::vector<std::string> build_environment(const char* const* host,
                                           const std::vector<std::pair<std::string, std::string>>& overrides,
                                           bool clear);

/// The value of `key` in a built environment, or nullptr.
const char* find_in_environment(const std::vector<std::string>& environment, const std::string& key);

}  // namespace modkit::posix
