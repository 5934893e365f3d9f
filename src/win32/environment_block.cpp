// Environment blocks and UTF conversion for the Windows backend. Pure string
// logic: no <windows.h>, so it compiles and is tested on Linux too.
#include "win32/environment_block.hpp"

#include <algorithm>

namespace modkit::win32 {
namespace {

char16_t ascii_upper(char16_t c) { return (c >= u'a' && c <= u'z') ? static_cast<char16_t>(c - u'a' + u'A') : c; }

void append_utf8(std::string& out, char32_t code) {
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else if (code < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else if (code < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
}

bool same_name(std::u16string_view a, std::u16string_view b, NameCompare compare) { return compare(a, b) == 0; }

}  // namespace

bool utf8_to_utf16(std::string_view in, std::u16string& out) {
  out.clear();
  out.reserve(in.size());
  std::size_t i = 0;
  while (i < in.size()) {
    auto byte = static_cast<unsigned char>(in[i]);
    if (byte < 0x80) {
      out.push_back(byte);
      ++i;
      continue;
    }
    int length;
    char32_t code;
    char32_t minimum;
    if ((byte & 0xE0) == 0xC0) {
      length = 2, code = byte & 0x1F, minimum = 0x80;
    } else if ((byte & 0xF0) == 0xE0) {
      length = 3, code = byte & 0x0F, minimum = 0x800;
    } else if ((byte & 0xF8) == 0xF0) {
      length = 4, code = byte & 0x07, minimum = 0x10000;
    } else {
      return false;
    }
    if (in.size() - i < static_cast<std::size_t>(length)) return false;
    for (int k = 1; k < length; ++k) {
      auto next = static_cast<unsigned char>(in[i + static_cast<std::size_t>(k)]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    if (code >= 0x10000) {
      code -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (code >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (code & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(code));
    }
    i += static_cast<std::size_t>(length);
  }
  return true;
}

std::string utf16_to_utf8(std::u16string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char32_t unit = in[i];
    if (unit >= 0xD800 && unit <= 0xDBFF && i + 1 < in.size() && in[i + 1] >= 0xDC00 && in[i + 1] <= 0xDFFF) {
      append_utf8(out, 0x10000 + ((unit - 0xD800) << 10) + (in[i + 1] - 0xDC00));
      ++i;
    } else if (unit >= 0xD800 && unit <= 0xDFFF) {
      append_utf8(out, 0xFFFD);
    } else {
      append_utf8(out, unit);
    }
  }
  return out;
}

int compare_names_ascii(std::u16string_view a, std::u16string_view b) {
  std::size_t common = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < common; ++i) {
    char16_t x = ascii_upper(a[i]);
    char16_t y = ascii_upper(b[i]);
    if (x != y) return x < y ? -1 : 1;
  }
  if (a.size() == b.size()) return 0;
  return a.size() < b.size() ? -1 : 1;
}

std::u16string_view entry_name(std::u16string_view entry) {
  std::size_t equals = entry.find(u'=', 1);
  return equals == std::u16string_view::npos ? entry : entry.substr(0, equals);
}

std::vector<std::u16string> split_environment_block(const char16_t* block) {
  std::vector<std::u16string> entries;
  if (block == nullptr) return entries;
  while (*block != 0) {
    std::u16string entry(block);
    block += entry.size() + 1;
    entries.push_back(std::move(entry));
  }
  return entries;
}

std::vector<std::u16string> merge_environment(const std::vector<std::u16string>& host,
                                              const std::vector<std::pair<std::u16string, std::u16string>>& overrides,
                                              bool clear, NameCompare compare) {
  if (compare == nullptr) compare = compare_names_ascii;
  // Overrides first, the last of each name (in any case) winning.
  std::vector<std::u16string> result;
  std::vector<std::u16string_view> names;
  for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {
    bool seen = false;
    for (auto name : names) seen = seen || same_name(name, it->first, compare);
    if (seen) continue;
    names.push_back(it->first);
    result.push_back(it->first + u"=" + it->second);
  }
  for (const auto& entry : host) {
    std::u16string_view name = entry_name(entry);
    if (name.size() == entry.size() || name.empty()) continue;  // no '=': not a variable
    if (clear && !same_name(name, u"SYSTEMROOT", compare)) continue;
    bool seen = false;
    for (auto other : names) seen = seen || same_name(other, name, compare);
    if (seen) continue;
    names.push_back(name);
    result.push_back(entry);
  }
  std::stable_sort(result.begin(), result.end(), [compare](const std::u16string& a, const std::u16string& b) {
    return compare(entry_name(a), entry_name(b)) < 0;
  });
  return result;
}

std::u16string environment_block(const std::vector<std::u16string>& entries) {
  std::u16string block;
  for (const auto& entry : entries) {
    block += entry;
    block.push_back(u'\0');
  }
  if (entries.empty()) block.push_back(u'\0');
  block.push_back(u'\0');
  return block;
}

std::optional<std::u16string> find_environment_value(const std::vector<std::u16string>& entries,
                                                     std::u16string_view name, NameCompare compare) {
  if (compare == nullptr) compare = compare_names_ascii;
  for (const auto& entry : entries) {
    std::u16string_view entry_key = entry_name(entry);
    if (entry_key.size() < entry.size() && same_name(entry_key, name, compare)) {
      return entry.substr(entry_key.size() + 1);
    }
  }
  return std::nullopt;
}

}  // namespace modkit::win32
