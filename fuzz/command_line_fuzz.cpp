// Fuzzes the Windows command-line builder (src/win32/command_line.cpp) on any
// platform: the line it builds from a program and arguments is split back into
// exactly that program and those arguments by two parsers written here,
// independently of the library: the MSVC C runtime's (UCRT, 2008 and later)
// and CommandLineToArgvW's (as Wine implements it). The library's own
// parse_command_line must agree too. Also checks is_batch_file.
//
// Input: [flags] program, then arguments, separated by NUL bytes (a Windows
// argument cannot contain NUL).
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "win32/command_line.hpp"

using namespace modkit::fuzz;
using Args = std::vector<std::string>;

namespace {

// The UCRT's parse_command_line (argv_parsing.cpp), restated.
Args parse_ucrt(const std::string& line) {
  Args result;
  const char* p = line.c_str();  // NUL-terminated: the end reads as '\0'
  std::string program;
  bool in_quotes = false;
  char c;
  do {
    if (*p == '"') {
      in_quotes = !in_quotes;
      c = *p++;
      continue;
    }
    program.push_back(*p);
    c = *p++;
  } while (c != '\0' && (in_quotes || (c != ' ' && c != '\t')));
  if (c == '\0') {
    --p;
    if (!program.empty() && program.back() == '\0') program.pop_back();
  } else {
    program.pop_back();  // the blank that ended it
  }
  result.push_back(program);

  in_quotes = false;
  for (;;) {
    while (*p == ' ' || *p == '\t') ++p;
    if (*p == '\0') break;
    std::string argument;
    for (;;) {
      bool copy = true;
      unsigned slashes = 0;
      while (*p == '\\') {
        ++p;
        ++slashes;
      }
      if (*p == '"') {
        if (slashes % 2 == 0) {
          if (in_quotes && p[1] == '"') {
            ++p;  // "" inside quotes: one literal quote
          } else {
            copy = false;
            in_quotes = !in_quotes;
          }
        }
        slashes /= 2;
      }
      argument.append(slashes, '\\');
      if (*p == '\0' || (!in_quotes && (*p == ' ' || *p == '\t'))) break;
      if (copy) argument.push_back(*p);
      ++p;
    }
    result.push_back(argument);
  }
  return result;
}

// CommandLineToArgvW as Wine implements it (dlls/shell32/shell32_main.c),
// restated: argv[0] ends at the closing quote or the first blank; then
// backslash/quote rules with a quote counter.
Args parse_argvw(const std::string& line) {
  Args result;
  const char* s = line.c_str();
  std::string program;
  if (*s == '"') {
    ++s;
    while (*s && *s != '"') program.push_back(*s++);
    if (*s == '"') ++s;
  } else {
    while (*s && *s != ' ' && *s != '\t') program.push_back(*s++);
  }
  result.push_back(program);
  while (*s == ' ' || *s == '\t') ++s;
  if (!*s) return result;

  std::string argument;
  int quotes = 0;
  unsigned slashes = 0;
  while (*s) {
    if ((*s == ' ' || *s == '\t') && quotes == 0) {
      result.push_back(argument);
      argument.clear();
      slashes = 0;
      while (*s == ' ' || *s == '\t') ++s;
      if (!*s) return result;
      continue;
    }
    if (*s == '\\') {
      argument.push_back(*s++);
      ++slashes;
    } else if (*s == '"') {
      if ((slashes & 1) == 0) {
        argument.resize(argument.size() - slashes / 2);
        ++quotes;
      } else {
        argument.resize(argument.size() - slashes / 2 - 1);
        argument.push_back('"');
      }
      ++s;
      slashes = 0;
      while (*s == '"') {
        if (++quotes == 3) {
          argument.push_back('"');
          quotes = 0;
        }
        ++s;
      }
      if (quotes == 2) quotes = 0;
    } else {
      slashes = 0;
      argument.push_back(*s++);
    }
  }
  result.push_back(argument);
  return result;
}

bool batch_rule(std::string path) {
  while (!path.empty() && (path.back() == '.' || path.back() == ' ')) path.pop_back();
  if (path.size() < 4) return false;
  std::string tail = path.substr(path.size() - 4);
  for (char& c : tail) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  return tail == ".bat" || tail == ".cmd";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input input(data, size);
  input.byte();  // flags, reserved
  std::string program(input.until('\0'));
  Args args;
  while (!input.empty()) args.emplace_back(input.until('\0'));

  MODKIT_FUZZ_CHECK(modkit::win32::is_batch_file(program) == batch_rule(program), "is_batch_file disagrees");

  std::string line = "stale";
  bool built = modkit::win32::build_command_line(program, args, line);
  MODKIT_FUZZ_CHECK(built == (program.find('"') == std::string::npos), "refused the wrong programs");
  if (built) {
    MODKIT_FUZZ_CHECK(line.find('\0') == std::string::npos, "NUL in the command line");
    Args expected = args;
    expected.insert(expected.begin(), program);
    MODKIT_FUZZ_CHECK(parse_ucrt(line) == expected, "the C runtime would parse other arguments");
    MODKIT_FUZZ_CHECK(parse_argvw(line) == expected, "CommandLineToArgvW would parse other arguments");
    MODKIT_FUZZ_CHECK(modkit::win32::parse_command_line(line) == expected, "parse_command_line disagrees");
  }

  // Each argument alone, appended after a plain program.
  for (const auto& argument : args) {
    std::string single = "p ";
    modkit::win32::append_quoted_argument(single, argument);
    Args expected{"p", argument};
    MODKIT_FUZZ_CHECK(parse_ucrt(single) == expected, "append_quoted_argument: C runtime round trip");
    MODKIT_FUZZ_CHECK(parse_argvw(single) == expected, "append_quoted_argument: CommandLineToArgvW round trip");
  }
  return 0;
}
