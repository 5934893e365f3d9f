// Forwarding of the children's stdout and stderr, line by line.
#include <gtest/gtest.h>

#include <string>

#include "behaviour_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::behaviour;

namespace {

std::vector<StoredRecord> records_of(const CollectingSink& sink, const std::string& id, LogStream stream) {
  std::vector<StoredRecord> result;
  for (const auto& record : sink.records()) {
    if (record.instance_id == id && record.stream == stream) result.push_back(record);
  }
  return result;
}

TEST(Output, LinesOfBothStreamsArriveInOrderWithTheirFields) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("talker", {"lines", "500", "stderr-lines", "300"}));
  ASSERT_TRUE(run.ok);
  ASSERT_EQ(run.out.size(), 500u);
  ASSERT_EQ(run.err.size(), 300u);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(run.out[i], "line " + std::to_string(i + 1));
  for (int i = 0; i < 300; ++i) ASSERT_EQ(run.err[i], "err " + std::to_string(i + 1));
  for (auto stream : {LogStream::Stdout, LogStream::Stderr}) {
    for (const auto& record : records_of(*f.sink, run.handle.instance_id, stream)) {
      EXPECT_EQ(record.module, "talker");
      EXPECT_EQ(record.level, LogLevel::Info);
      EXPECT_FALSE(record.continuation);
    }
  }
}

TEST(Output, LevelComesFromTheContent) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("levels", {"say", "2025-01-01T00:00:00Z ERROR failed", "say",
                                                  "12:00:00 warn careful", "say", R"({"level":"DEBUG","msg":"x"})",
                                                  "say", "t TRACE x", "say", "plain"}));
  auto records = records_of(*f.sink, run.handle.instance_id, LogStream::Stdout);
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(records[0].level, LogLevel::Error);
  EXPECT_EQ(records[1].level, LogLevel::Warn);
  EXPECT_EQ(records[2].level, LogLevel::Debug);
  EXPECT_EQ(records[3].level, LogLevel::Trace);
  EXPECT_EQ(records[4].level, LogLevel::Info);
}

TEST(Output, LastLineWithoutNewlineIsDelivered) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("tail", {"say", "first", "say-raw", "no newline at the end"}));
  EXPECT_EQ(run.out, (std::vector<std::string>{"first", "no newline at the end"}));
}

TEST(Output, CarriageReturnsBeforeNewlinesAreDropped) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("crlf", {"say-raw", "dos\r\nline\r\n", "say-raw", "last\r"}));
  EXPECT_EQ(run.out, (std::vector<std::string>{"dos", "line", "last"}));
}

TEST(Output, InvalidUtf8IsReplacedAndForwardingGoesOn) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("bad", {"invalid-utf8", "say", "still forwarding", "stderr-lines", "1"}));
  EXPECT_EQ(run.out, (std::vector<std::string>{"bad \xEF\xBF\xBD\xEF\xBF\xBD bytes \xEF\xBF\xBD( end",
                                               "still forwarding"}));
  EXPECT_EQ(run.err, (std::vector<std::string>{"err 1"}));
}

TEST(Output, HugeLineIsCutIntoContinuations) {
  LocalProcessOptions options = Fixture::fast_options();
  options.max_line_bytes = 1000;
  Fixture f(options);
  ChildRun run = run_to_end(f, child_config("huge", {"say-raw", "t ERROR ", "huge", "5492", "say", "next"}));
  auto records = records_of(*f.sink, run.handle.instance_id, LogStream::Stdout);
  ASSERT_EQ(records.size(), 7u);
  std::string joined;
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(records[i].continuation, i > 0) << i;
    EXPECT_EQ(records[i].line.size(), i < 5 ? 1000u : 500u) << i;
    EXPECT_EQ(records[i].level, LogLevel::Error) << "a continuation keeps its line's level";
    joined += records[i].line;
  }
  EXPECT_EQ(joined, "t ERROR " + std::string(5492, 'x'));
  EXPECT_EQ(records[6].line, "next");
  EXPECT_FALSE(records[6].continuation);
  EXPECT_EQ(records[6].level, LogLevel::Info);
}

TEST(Output, DefaultCapIs16KiB) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("huge", {"huge", "100000"}));
  auto records = records_of(*f.sink, run.handle.instance_id, LogStream::Stdout);
  ASSERT_EQ(records.size(), 7u);  // 6 x 16384 + 1696
  std::size_t total = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i].continuation, i > 0);
    EXPECT_LE(records[i].line.size(), 16u * 1024);
    total += records[i].line.size();
  }
  EXPECT_EQ(total, 100000u);
}

TEST(Output, ManyLinesAreAllDeliveredInOrder) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("many", {"lines", "20000"}));
  ASSERT_EQ(run.out.size(), 20000u);
  for (int i = 0; i < 20000; ++i) ASSERT_EQ(run.out[i], "line " + std::to_string(i + 1));
}

TEST(Output, LibraryEventsAreTaggedAsTheLibrarys) {
  Fixture f;
  ChildRun run = run_to_end(f, child_config("events", {"exit", "0"}));
  auto events = records_of(*f.sink, run.handle.instance_id, LogStream::Library);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[0].line.rfind("spawned pid " + std::to_string(*run.handle.pid), 0), 0u) << events[0].line;
  EXPECT_EQ(events[0].module, "events");
  EXPECT_TRUE(contains(library_events(*f.sink, run.handle.instance_id), "exited with code 0"));
}

}  // namespace
