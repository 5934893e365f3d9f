// Windows command-line building. Pure string logic: no <windows.h>, so it is
// compiled and fuzzed on Linux too.
#include "win32/command_line.hpp"

namespace modkit::win32 {
namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }

// Characters that force quoting. The parsers split only on space and tab,
// but newline and vertical tab are quoted too, as the MSVC documentation and
// other launchers (Rust, Python) do, so the text stays readable and safe.
bool needs_quotes(std::string_view argument) {
  if (argument.empty()) return true;
  for (char c : argument) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '"') return true;
  }
  return false;
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

void append_quoted_argument(std::string& command_line, std::string_view argument) {
  if (!needs_quotes(argument)) {
    command_line.append(argument.data(), argument.size());
    return;
  }
  command_line.push_back('"');
  std::size_t backslashes = 0;
  for (char c : argument) {
    if (c == '\\') {
      ++backslashes;
      continue;
    }
    if (c == '"') {
      // n backslashes before a quote: 2n + 1 of them, then the quote.
      command_line.append(2 * backslashes + 1, '\\');
    } else {
      command_line.append(backslashes, '\\');
    }
    backslashes = 0;
    command_line.push_back(c);
  }
  // Backslashes before the closing quote are doubled so it stays a quote.
  command_line.append(2 * backslashes, '\\');
  command_line.push_back('"');
}

bool build_command_line(std::string_view program, const std::vector<std::string>& args, std::string& out) {
  out.clear();
  if (program.find('"') != std::string_view::npos) return false;
  // argv[0] is always quoted: its parser takes everything between the quotes
  // literally (backslashes included), so no escaping is possible or needed.
  out.push_back('"');
  out.append(program.data(), program.size());
  out.push_back('"');
  for (const auto& argument : args) {
    out.push_back(' ');
    append_quoted_argument(out, argument);
  }
  return true;
}

bool is_batch_file(std::string_view path) {
  while (!path.empty() && (path.back() == '.' || path.back() == ' ')) path.remove_suffix(1);
  if (path.size() < 4) return false;
  std::string_view tail = path.substr(path.size() - 4);
  std::string lowered;
  for (char c : tail) lowered.push_back(ascii_lower(c));
  return lowered == ".bat" || lowered == ".cmd";
}

std::vector<std::string> parse_command_line(std::string_view line) {
  std::vector<std::string> result;
  std::size_t i = 0;
  const std::size_t n = line.size();

  // argv[0]: quotes delimit, backslashes are literal.
  std::string program;
  bool quoted = false;
  while (i < n) {
    char c = line[i];
    if (c == '"') {
      quoted = !quoted;
      ++i;
      continue;
    }
    if (!quoted && is_blank(c)) break;
    program.push_back(c);
    ++i;
  }
  result.push_back(std::move(program));

  for (;;) {
    while (i < n && is_blank(line[i])) ++i;
    if (i >= n) break;
    std::string argument;
    bool in_quotes = false;
    while (i < n) {
      std::size_t backslashes = 0;
      while (i < n && line[i] == '\\') {
        ++backslashes;
        ++i;
      }
      if (i < n && line[i] == '"') {
        argument.append(backslashes / 2, '\\');
        if (backslashes % 2 == 1) {
          argument.push_back('"');
          ++i;
        } else if (in_quotes && i + 1 < n && line[i + 1] == '"') {
          argument.push_back('"');  // "" inside quotes: a literal quote
          i += 2;
        } else {
          in_quotes = !in_quotes;
          ++i;
        }
        continue;
      }
      argument.append(backslashes, '\\');
      if (i >= n) break;
      if (!in_quotes && is_blank(line[i])) break;
      argument.push_back(line[i]);
      ++i;
    }
    result.push_back(std::move(argument));
  }
  return result;
}

namespace {

bool is_safe_unquoted_for_cmd(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  for (char safe : std::string_view("#$*+-./:?@\\_")) {
    if (c == static_cast<unsigned char>(safe)) return true;
  }
  return c >= 0x80;  // UTF-8 bytes of non-ASCII text (its C1 controls are caught below)
}

// U+0080..U+009F in UTF-8 (C2 80..C2 9F): controls, quoted too.
bool has_c1_control(std::string_view argument) {
  for (std::size_t i = 0; i + 1 < argument.size(); ++i) {
    if (static_cast<unsigned char>(argument[i]) == 0xC2 && static_cast<unsigned char>(argument[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(argument[i + 1]) <= 0x9F) {
      return true;
    }
  }
  return false;
}

void append_batch_argument(std::string& out, std::string_view argument) {
  bool quote = argument.empty() || argument.back() == '\\' || has_c1_control(argument);
  for (char c : argument) quote = quote || !is_safe_unquoted_for_cmd(static_cast<unsigned char>(c));
  if (quote) out.push_back('"');
  std::size_t backslashes = 0;
  for (char c : argument) {
    if (c == '\\') {
      ++backslashes;
    } else {
      if (c == '"') {
        out.append(backslashes, '\\');  // the run doubled, then "" (cmd's escaped quote)
        out.push_back('"');
      } else if (c == '%') {
        out.append("%%cd:~,");  // with the '%' below: an empty slice of %cd%, expanded to nothing
      }
      backslashes = 0;
    }
    out.push_back(c);
  }
  if (quote) {
    out.append(backslashes, '\\');
    out.push_back('"');
  }
}

}  // namespace

bool build_batch_command_line(std::string_view script, const std::vector<std::string>& args, std::string& out,
                              std::string& why) {
  if (script.find('"') != std::string_view::npos || script.find('%') != std::string_view::npos ||
      (!script.empty() && script.back() == '\\')) {
    why = "its path contains '\"' or '%', or ends in '\\', which cmd.exe cannot be given safely";
    return false;
  }
  for (const auto& argument : args) {
    if (argument.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      why = "an argument contains a line break or NUL, which cmd.exe would cut the command at";
      return false;
    }
  }
  out = "cmd.exe /e:ON /v:OFF /d /c \"\"";
  out.append(script.data(), script.size());
  out.push_back('"');
  for (const auto& argument : args) {
    out.push_back(' ');
    append_batch_argument(out, argument);
  }
  out.push_back('"');
  return true;
}

}  // namespace modkit::win32
