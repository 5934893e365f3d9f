#include "posix/environment.hpp"

#include <string_view>

namespace modkit::posix {

std::vector<std::string> build_environment(const char* const* host,
                                           const std::vector<std::pair<std::string, std::string>>& overrides,
                                           bool clear) {
  std::vector<std::string> result;
  if (!clear && host != nullptr) {
    for (const char* const* entry = host; *entry != nullptr; ++entry) {
      std::string_view text(*entry);
      std::size_t equals = text.find('=');
      if (equals == std::string_view::npos || equals == 0) continue;
      std::string_view key = text.substr(0, equals);
      bool overridden = false;
      for (const auto& override_entry : overrides) {
        if (override_entry.first == key) {
          overridden = true;
          break;
        }
      }
      if (!overridden) result.emplace_back(text);
    }
  }
  for (const auto& [key, value] : overrides) result.push_back(key + "=" + value);
  return result;
}

const char* find_in_environment(const std::vector<std::string>& environment, const std::string& key) {
  for (const auto& entry : environment) {
    if (entry.size() > key.size() && entry[key.size()] == '=' && entry.compare(0, key.size(), key) == 0) {
      return entry.c_str() + key.size() + 1;
    }
  }
  return nullptr;
}

}  // namespace modkit::posix
