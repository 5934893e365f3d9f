// Windows command lines: the builder against hand-checked expectations and
// the reference parser, then a round trip through a real child, whose C
// runtime and CommandLineToArgvW must both give every argument back.
#include <gtest/gtest.h>

#include "win32/command_line.hpp"
#include "win32_test_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using modkit::testing::wintest::WinFixture;
using modkit::win32::append_quoted_argument;
using modkit::win32::build_command_line;
using modkit::win32::is_batch_file;
using modkit::win32::parse_command_line;

namespace {

// The hard cases: empty, blanks, quotes, backslash runs before quotes, inside
// and at the end, shell metacharacters, non-ASCII (2, 3 and 4 byte UTF-8).
const std::vector<std::string>& hard_cases() {
  static const std::vector<std::string> cases = {
      "",
      " ",
      "  ",
      "plain",
      "two words",
      "\t",
      "tab\there",
      " leading",
      "trailing ",
      "\"",
      "\"\"",
      "\"\"\"",
      "a\"b",
      "\"quoted\"",
      "\"a b\"",
      "\\",
      "\\\\",
      "\\\\\\",
      "a\\",
      "a\\\\",
      "a b\\",
      "a b\\\\",
      "a\\\"b",
      "a\\\\\"b",
      "\\\"",
      "\\\\\"",
      "\\\\\\\"\\",
      "C:\\Program Files\\dir\\",
      "\\\\server\\share\\",
      "back\\slash inside",
      "new\nline",
      "vertical\vtab",
      "&|<>^%!()",
      "%PATH%",
      "*?[]",
      "'single'",
      "na\xC3\xAFve caf\xC3\xA9",                     // naïve café
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \"x\"",   // 日本語 "x"
      "\xF0\x9F\x98\x80\\\"\xF0\x9F\x98\x80\\",       // 😀\"😀\ (a surrogate pair in UTF-16)
      "\xCE\xA9\t\xD0\x96",                           // Ω<tab>Ж
  };
  return cases;
}

std::string quoted(std::string_view argument) {
  std::string out;
  append_quoted_argument(out, argument);
  return out;
}

}  // namespace

TEST(Win32CommandLine, QuotingMatchesHandCheckedForms) {
  EXPECT_EQ(quoted("plain"), "plain");
  EXPECT_EQ(quoted(""), "\"\"");
  EXPECT_EQ(quoted("a b"), "\"a b\"");
  EXPECT_EQ(quoted("a\tb"), "\"a\tb\"");
  EXPECT_EQ(quoted("a\"b"), "\"a\\\"b\"");
  EXPECT_EQ(quoted("a\\b"), "a\\b");             // no quoting needed: backslashes stay literal
  EXPECT_EQ(quoted("a\\\"b"), "\"a\\\\\\\"b\"");   // \"  ->  \\\"
  EXPECT_EQ(quoted("a b\\"), "\"a b\\\\\"");       // a trailing backslash is doubled before the closing quote
  EXPECT_EQ(quoted("a b\\\\"), "\"a b\\\\\\\\\"");
  EXPECT_EQ(quoted("C:\\dir\\"), "C:\\dir\\");   // unquoted: nothing to double
}

TEST(Win32CommandLine, ProgramIsQuotedAndMustNotContainAQuote) {
  std::string line;
  ASSERT_TRUE(build_command_line("C:\\Program Files\\x.exe", {"a", ""}, line));
  EXPECT_EQ(line, "\"C:\\Program Files\\x.exe\" a \"\"");
  ASSERT_TRUE(build_command_line("C:\\dir\\", {}, line));  // argv[0] rules: backslashes are literal
  EXPECT_EQ(parse_command_line(line), std::vector<std::string>{"C:\\dir\\"});
  EXPECT_FALSE(build_command_line("bad\"name.exe", {}, line));
}

TEST(Win32CommandLine, ReferenceParserRoundTripsEveryHardCase) {
  for (const auto& argument : hard_cases()) {
    std::string line;
    ASSERT_TRUE(build_command_line("prog.exe", {argument}, line));
    auto parsed = parse_command_line(line);
    ASSERT_EQ(parsed.size(), 2u) << line;
    EXPECT_EQ(parsed[1], argument) << line;
  }
  std::string line;
  ASSERT_TRUE(build_command_line("prog.exe", hard_cases(), line));
  auto parsed = parse_command_line(line);
  ASSERT_EQ(parsed.size(), hard_cases().size() + 1);
  for (std::size_t i = 0; i < hard_cases().size(); ++i) EXPECT_EQ(parsed[i + 1], hard_cases()[i]) << i;
}

TEST(Win32CommandLine, ReferenceParserFollowsTheDocumentedRules) {
  // The examples of Microsoft's "Parsing C++ command-line arguments" page.
  using V = std::vector<std::string>;
  EXPECT_EQ(parse_command_line("p \"abc\" d e"), (V{"p", "abc", "d", "e"}));
  EXPECT_EQ(parse_command_line("p a\\\\b d\"e f\"g h"), (V{"p", "a\\\\b", "de fg", "h"}));
  EXPECT_EQ(parse_command_line("p a\\\\\\\"b c d"), (V{"p", "a\\\"b", "c", "d"}));
  EXPECT_EQ(parse_command_line("p a\\\\\\\\\"b c\" d e"), (V{"p", "a\\\\b c", "d", "e"}));
  EXPECT_EQ(parse_command_line("p a\"b\"\" c d"), (V{"p", "ab\" c d"}));
}

TEST(Win32CommandLine, BatchFilesAreRecognisedInAnyCaseAndWithTrailingDotsOrSpaces) {
  EXPECT_TRUE(is_batch_file("x.bat"));
  EXPECT_TRUE(is_batch_file("C:\\dir\\X.BAT"));
  EXPECT_TRUE(is_batch_file("run.Cmd"));
  EXPECT_TRUE(is_batch_file("run.cmd. . "));
  EXPECT_FALSE(is_batch_file("x.exe"));
  EXPECT_FALSE(is_batch_file("bat"));
  EXPECT_FALSE(is_batch_file("x.batch"));
  EXPECT_FALSE(is_batch_file(""));
}

// Each case alone, then all of them in one command line, through a real
// child: its C runtime's argv must equal what was sent, and the child checks
// that CommandLineToArgvW agrees ("parsers disagree" otherwise).
TEST(Win32CommandLine, HardCasesReachTheChildUnchanged) {
  WinFixture f;
  auto check = [&](const std::vector<std::string>& arguments) {
    std::vector<std::string> script = {"argv"};
    script.insert(script.end(), arguments.begin(), arguments.end());
    auto run = wintest::run_child(f, child_config("argv", script));
    ASSERT_TRUE(run.status.has_value());
    EXPECT_TRUE(run.status->success()) << *run.status;
    ASSERT_EQ(run.out.size(), arguments.size()) << "first line: " << (run.out.empty() ? "" : run.out[0]);
    for (std::size_t i = 0; i < arguments.size(); ++i) {
      EXPECT_EQ(run.out[i], "arg " + wintest::hex(arguments[i])) << "argument " << i << ": [" << arguments[i] << "]";
    }
  };
  for (const auto& argument : hard_cases()) check({argument});
  check(hard_cases());
}

TEST(Win32CommandLine, ArgumentThatIsNotUtf8IsRefused) {
  WinFixture f;
  auto result = f.backend->spawn_instance(child_config("bad", {"argv", "\xff\xfe"}));
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message.find("not valid UTF-8"), std::string::npos) << result.error().message;
}
