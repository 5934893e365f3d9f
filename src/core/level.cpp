// Level detection from a line's content (the rules of ModKit's log forwarder).
#include <optional>

#include "modkit/modkit.hpp"

namespace modkit {
namespace {

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::optional<LogLevel> level_named(std::string_view word, bool any_case) {
  static constexpr std::pair<std::string_view, LogLevel> kLevels[] = {
      {"error", LogLevel::Error}, {"warn", LogLevel::Warn},   {"info", LogLevel::Info},
      {"debug", LogLevel::Debug}, {"trace", LogLevel::Trace},
  };
  for (const auto& [name, level] : kLevels) {
    if (word.size() != name.size()) continue;
    bool all_lower = true, all_upper = true, folded = true;
    for (std::size_t i = 0; i < word.size(); ++i) {
      all_lower = all_lower && word[i] == name[i];
      all_upper = all_upper && word[i] == static_cast<char>(name[i] - 'a' + 'A');
      folded = folded && lower(word[i]) == name[i];
    }
    if (all_lower || all_upper || (any_case && folded)) return level;
  }
  return std::nullopt;
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

}  // namespace

LogLevel detect_level(std::string_view line) {
  std::size_t start = 0;
  while (start < line.size() && is_blank(line[start])) ++start;
  std::string_view rest = line.substr(start);
  if (!rest.empty() && rest.front() == '{') {
    JsonScanner scanner(rest);
    if (scanner.scan_document() && scanner.level()) {
      if (auto level = level_named(*scanner.level(), /*any_case=*/true)) return *level;
    }
  }
  // The second whitespace-separated token: "2025-01-01T00:00:00Z  WARN target: text".
  std::size_t pos = 0;
  while (pos < rest.size() && !is_blank(rest[pos])) ++pos;  // first token
  while (pos < rest.size() && is_blank(rest[pos])) ++pos;
  std::size_t end = pos;
  while (end < rest.size() && !is_blank(rest[end])) ++end;
  if (end > pos) {
    if (auto level = level_named(rest.substr(pos, end - pos), /*any_case=*/false)) return *level;
  }
  return LogLevel::Info;
}

}  // namespace modkit
