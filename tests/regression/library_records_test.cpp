// Regression tests for defect 7's library-record half (the sinks' escaping
// is tested in tests/unit/log_sinks_test.cpp): c31190c logged every argument
// verbatim at Info ("spawned pid N: path --password=..."), and passed a
// module name with invalid UTF-8 into library records as it was.
#include <gtest/gtest.h>

#include "../reliability/reliability_support.hpp"
#include "test_support.hpp"

using namespace modkit;
using namespace modkit::testing;

namespace {

std::vector<std::string> library_lines(const CollectingSink& sink) {
  std::vector<std::string> lines;
  for (const auto& record : sink.records()) {
    if (record.stream == LogStream::Library) lines.push_back(record.line);
  }
  return lines;
}

bool any_contains(const std::vector<std::string>& lines, const std::string& text) {
  for (const auto& line : lines) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST(RegressionLibraryRecords, ArgumentValuesAreNotLoggedUnlessAsked) {
  {
    Fixture f;
    auto handle = f.backend->spawn_instance(child_config("secret", {"say", "--password=hunter2", "exit", "0"}));
    ASSERT_TRUE(handle) << handle.error();
    ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) { return r.line.rfind("exited with code", 0) == 0; },
                                 std::chrono::seconds(10)));
    auto lines = library_lines(*f.sink);
    EXPECT_TRUE(any_contains(lines, "(4 argument(s))")) << ::testing::PrintToString(lines);
    EXPECT_FALSE(any_contains(lines, "hunter2")) << "an argument's value reached a library record";
  }
  {
    LocalProcessOptions options = Fixture::fast_options();
    options.log_arguments = true;
    Fixture f(options);
    auto handle = f.backend->spawn_instance(child_config("verbose", {"exit", "0", "--flag=visible"}));
    ASSERT_TRUE(handle) << handle.error();
    ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) { return r.line.find("--flag=visible") != std::string::npos; },
                                 std::chrono::seconds(10)))
        << "log_arguments = true logs them";
  }
}

TEST(RegressionLibraryRecords, EveryLibraryRecordIsValidUtf8) {
  Fixture f;
  std::string name = "bad\xff\xfe" "name\xc3";  // invalid UTF-8 in the module's name
  auto handle = f.backend->spawn_instance(child_config(name, {"exit", "3"}));
  ASSERT_TRUE(handle) << handle.error();
  ASSERT_TRUE(f.sink->wait_for([&](const StoredRecord& r) { return r.line.rfind("exited with code", 0) == 0; },
                               std::chrono::seconds(10)));
  int library = 0;
  for (const auto& record : f.sink->records()) {
    if (record.stream != LogStream::Library) continue;
    ++library;
    EXPECT_TRUE(is_valid_utf8(record.module)) << "module of '" << record.line << "'";
    EXPECT_TRUE(is_valid_utf8(record.line)) << record.line;
  }
  EXPECT_GE(library, 2);
}
