// How arguments reach a batch file through cmd.exe (issue 13.6): pure string
// logic, checked on every platform; tests/win32 runs real batch files.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "win32/command_line.hpp"

namespace modkit::win32 {
namespace {

std::string line_for(const std::vector<std::string>& args) {
  std::string out, why;
  EXPECT_TRUE(build_batch_command_line("C:\\mods\\run.bat", args, out, why)) << why;
  return out;
}

TEST(BatchCommandLine, PlainArgumentsStayAsTheyAre) {
  EXPECT_EQ(line_for({"alpha", "b-2", "C:\\x\\y.txt", "a@b.c"}),
            "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" alpha b-2 C:\\x\\y.txt a@b.c\"");
}

TEST(BatchCommandLine, MetacharactersAreQuotedSoCmdTakesThemLiterally) {
  for (const std::string argument : {"a&calc", "x|y", "<in", "out>", "^", "(a)", "a b", "!x!", ";", ",", "="}) {
    std::string line = line_for({argument});
    EXPECT_NE(line.find(" \"" + argument + "\"\""), std::string::npos) << line;
  }
}

TEST(BatchCommandLine, QuotesAreDoubledAndCannotCloseTheQuoting) {
  // The classic injection: a quote to leave the quoted string, then &.
  EXPECT_EQ(line_for({"\" & calc.exe"}), "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" \"\"\" & calc.exe\"\"");
}

// Each '%' becomes %%cd:~,% : cmd.exe expands %cd:~,% (an empty slice of
// the current directory) to nothing and keeps the first '%', so the batch
// file receives the text %PATH% itself, never the variable's value.
TEST(BatchCommandLine, PercentCannotExpandAVariable) {
  EXPECT_EQ(line_for({"%PATH%"}), "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" \"%%cd:~,%PATH%%cd:~,%\"\"");
}

TEST(BatchCommandLine, EmptyAndTrailingBackslashArgumentsAreQuoted) {
  EXPECT_EQ(line_for({""}), "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" \"\"\"");
  // A trailing backslash run is doubled so that it cannot escape the closing quote.
  EXPECT_EQ(line_for({"C:\\dir\\"}), "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" \"C:\\dir\\\\\"\"");
}

TEST(BatchCommandLine, BackslashesBeforeAQuoteAreDoubled) {
  EXPECT_EQ(line_for({"a\\\"b"}), "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" \"a\\\\\"\"b\"\"");
}

TEST(BatchCommandLine, NonAsciiTextNeedsNoQuotesButItsControlsDo) {
  EXPECT_EQ(line_for({"w\xC3\xB6rk"}), "cmd.exe /e:ON /v:OFF /d /c \"\"C:\\mods\\run.bat\" w\xC3\xB6rk\"");
  std::string line = line_for({"a\xC2\x85" "b"});  // U+0085, NEXT LINE
  EXPECT_NE(line.find("\"a\xC2\x85" "b\""), std::string::npos) << line;
}

TEST(BatchCommandLine, WhatCannotBePassedSafelyIsRefused) {
  std::string out, why;
  for (const std::string& argument : {std::string("a\rb"), std::string("a\nb"), std::string("a\0b", 3)}) {
    EXPECT_FALSE(build_batch_command_line("C:\\run.bat", {argument}, out, why));
    EXPECT_FALSE(why.empty());
  }
  for (const char* script : {"C:\\a\"b.bat", "C:\\100%.bat", "C:\\dir\\"}) {
    EXPECT_FALSE(build_batch_command_line(script, {}, out, why)) << script;
  }
}

}  // namespace
}  // namespace modkit::win32
