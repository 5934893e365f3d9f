// Level detection from a line's content (the rules of ModKit's log forwarder).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>

#include "modkit/modkit.hpp"

namespace modkit {
namespace {

// ' ', or one of '\t' '\n' '\v' '\f' '\r' (9 to 13).
bool is_blank(char c) { return c == ' ' || static_cast<unsigned char>(c - '\t') <= '\r' - '\t'; }

// Index of the first blank of text[pos..], or text.size(). Runs on every
// line (the first token is often a long timestamp), so it looks at 8 bytes at
// a time for one below 0x21, where every blank is.
std::size_t find_blank(std::string_view text, std::size_t pos) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  constexpr std::uint64_t kOnes = 0x0101010101010101ULL, kHigh = 0x8080808080808080ULL;
  while (pos + 8 <= text.size()) {
    std::uint64_t word;
    std::memcpy(&word, text.data() + pos, 8);
    // Flags bytes below 0x21; the lowest flag is exact (borrows only
    // propagate upwards), so start looking there.
    std::uint64_t low = (word - kOnes * 0x21) & ~word & kHigh;
    if (low != 0) {
      for (std::size_t k = static_cast<std::size_t>(__builtin_ctzll(low)) / 8; k < 8; ++k) {
        if (is_blank(text[pos + k])) return pos + k;
      }
    }
    pos += 8;
  }
#endif
  while (pos < text.size() && !is_blank(text[pos])) ++pos;
  return pos;
}

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::optional<LogLevel> level_named(std::string_view word, bool any_case) {
  // The five names start with five different letters, so the first letter
  // (in either case) picks the only candidate: one comparison per line
  // instead of a scan of the table (this runs for every line a child writes).
  if (word.size() < 4 || word.size() > 5) return std::nullopt;
  std::string_view name;
  LogLevel level = LogLevel::Info;
  switch (lower(word[0])) {
    case 'e': name = "error"; level = LogLevel::Error; break;
    case 'w': name = "warn"; level = LogLevel::Warn; break;
    case 'i': name = "info"; level = LogLevel::Info; break;
    case 'd': name = "debug"; level = LogLevel::Debug; break;
    case 't': name = "trace"; level = LogLevel::Trace; break;
    default: return std::nullopt;
  }
  if (word.size() != name.size()) return std::nullopt;
  // Compare all bytes at once: exact lower case, exact upper case, or (with
  // any_case) equal once 0x20 is set in each byte, which holds only for the
  // letter in either case since every byte of a name is a lower-case letter.
  auto pack = [](std::string_view text) {  // 4 or 5 bytes into one word
    std::uint32_t head;
    std::memcpy(&head, text.data(), 4);
    std::uint64_t tail = text.size() == 5 ? static_cast<unsigned char>(text[4]) : 0;
    return std::uint64_t{head} | (tail << 32);
  };
  const std::uint64_t packed = pack(word), lower_name = pack(name);
  const std::uint64_t case_bits = word.size() == 5 ? 0x2020202020ULL : 0x20202020ULL;
  if (packed == lower_name || packed == (lower_name & ~case_bits)) return level;
  if (any_case && (packed | case_bits) == lower_name) return level;
  return std::nullopt;
}

bool equal4(const char* p, const char* name) {
  std::uint32_t a, b;
  std::memcpy(&a, p, 4);
  std::memcpy(&b, name, 4);
  return a == b;
}

// The level a 4- or 5-byte token names, all upper or all lower case, else
// Info: as level_named(token, false), in a few compares, for every line.
LogLevel token_level(const char* p, std::size_t length) {
  auto five = [&](const char* name) { return length == 5 && equal4(p, name) && p[4] == name[4]; };
  switch (p[0]) {
    case 'W': return length == 4 && equal4(p, "WARN") ? LogLevel::Warn : LogLevel::Info;
    case 'w': return length == 4 && equal4(p, "warn") ? LogLevel::Warn : LogLevel::Info;
    case 'E': return five("ERROR") ? LogLevel::Error : LogLevel::Info;
    case 'e': return five("error") ? LogLevel::Error : LogLevel::Info;
    case 'D': return five("DEBUG") ? LogLevel::Debug : LogLevel::Info;
    case 'd': return five("debug") ? LogLevel::Debug : LogLevel::Info;
    case 'T': return five("TRACE") ? LogLevel::Trace : LogLevel::Info;
    case 't': return five("trace") ? LogLevel::Trace : LogLevel::Info;
    default: return LogLevel::Info;  // "info"/"INFO" name Info too
  }
}

// A strict JSON reader that only validates and remembers the top-level
// "level" string. Depth is bounded so hostile input cannot exhaust the stack.
class JsonScanner {
 public:
  explicit JsonScanner(std::string_view text) : text_(text) {}

  // True if the whole text is one JSON object.
  bool scan_document() {
    skip_blanks();
    if (!peek('{') || !value(0)) return false;
    skip_blanks();
    return pos_ == text_.size();
  }
  const std::optional<std::string>& level() const { return level_; }

 private:
  static constexpr int kMaxDepth = 64;

  bool peek(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
  void skip_blanks() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r'))
      ++pos_;
  }
  bool literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  bool value(int depth) {
    if (depth > kMaxDepth) return false;
    skip_blanks();
    if (pos_ >= text_.size()) return false;
    switch (text_[pos_]) {
      case '{': return object(depth);
      case '[': return array(depth);
      case '"': return string(nullptr);
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }

  bool object(int depth) {
    ++pos_;  // '{'
    skip_blanks();
    if (peek('}')) {
      ++pos_;
      return true;
    }
    for (;;) {
      skip_blanks();
      std::string key;
      if (!peek('"') || !string(&key)) return false;
      skip_blanks();
      if (!peek(':')) return false;
      ++pos_;
      skip_blanks();
      if (depth == 0 && key == "level" && peek('"')) {
        std::string text;
        if (!string(&text)) return false;
        level_ = std::move(text);
      } else if (!value(depth + 1)) {
        return false;
      }
      skip_blanks();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (peek('}')) {
        ++pos_;
        return true;
      }
      return false;
    }
  }

  bool array(int depth) {
    ++pos_;  // '['
    skip_blanks();
    if (peek(']')) {
      ++pos_;
      return true;
    }
    for (;;) {
      if (!value(depth + 1)) return false;
      skip_blanks();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (peek(']')) {
        ++pos_;
        return true;
      }
      return false;
    }
  }

  static bool hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

  // Escapes other than the simple ones are validated but kept verbatim: the
  // only string we look at is a level name, which is plain ASCII.
  bool string(std::string* out) {
    ++pos_;  // '"'
    while (pos_ < text_.size()) {
      char c = text_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c == '\\') {
        if (pos_ >= text_.size()) return false;
        char e = text_[pos_++];
        if (e == 'u') {
          for (int i = 0; i < 4; ++i) {
            if (pos_ >= text_.size() || !hex(text_[pos_])) return false;
            ++pos_;
          }
          if (out) out->push_back('?');
          continue;
        }
        static constexpr std::string_view kSimple = "\"\\/bfnrt";
        if (kSimple.find(e) == std::string_view::npos) return false;
        if (out) out->push_back(e);
        continue;
      }
      if (out) out->push_back(c);
    }
    return false;
  }

  bool digits() {
    std::size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    return pos_ > start;
  }

  bool number() {
    if (peek('-')) ++pos_;
    if (peek('0')) {
      ++pos_;
    } else if (!digits()) {
      return false;
    }
    if (peek('.')) {
      ++pos_;
      if (!digits()) return false;
    }
    if (peek('e') || peek('E')) {
      ++pos_;
      if (peek('+') || peek('-')) ++pos_;
      if (!digits()) return false;
    }
    return true;
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  std::optional<std::string> level_;
};

// Out of line: the scanner's frame stays off the path of plain-text lines.
#if defined(__GNUC__)
__attribute__((noinline))
#endif
std::optional<LogLevel> json_level(std::string_view text) {
  JsonScanner scanner(text);
  if (scanner.scan_document() && scanner.level()) return level_named(*scanner.level(), /*any_case=*/true);
  return std::nullopt;
}

}  // namespace

LogLevel detect_level(std::string_view line) {
  const char* p = line.data();
  const char* const end = p + line.size();
  while (p < end && is_blank(*p)) ++p;
  std::string_view rest(p, static_cast<std::size_t>(end - p));
  if (!rest.empty() && rest.front() == '{') {
    if (auto level = json_level(rest)) return *level;
  }
  // The second whitespace-separated token: "2025-01-01T00:00:00Z  WARN target: text".
  p += find_blank(rest, 0);  // end of the first token
  while (p < end && is_blank(*p)) ++p;
  // A level name is a token of 4 or 5 letters. Blanks inside the candidate
  // need no check: token_level compares letters, and no blank matches one.
  const std::size_t left = static_cast<std::size_t>(end - p);
  std::size_t length = 0;
  if (left == 4 || (left > 4 && is_blank(p[4]))) {
    length = 4;
  } else if (left == 5 || (left > 5 && is_blank(p[5]))) {
    length = 5;
  } else {
    return LogLevel::Info;
  }
  return token_level(p, length);
}

}  // namespace modkit
