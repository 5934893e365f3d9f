// Level detection: the seed's cases, then the edges.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <utility>

#include "modkit/modkit.hpp"

using modkit::detect_level;
using modkit::LogLevel;

TEST(DetectLevel, SecondTokenUpperCaseForAllFiveLevels) {
  EXPECT_EQ(detect_level("2025-01-01T00:00:00Z ERROR something failed"), LogLevel::Error);
  EXPECT_EQ(detect_level("2025-01-01T00:00:00Z WARN disk almost full"), LogLevel::Warn);
  EXPECT_EQ(detect_level("2025-01-01T00:00:00Z INFO started"), LogLevel::Info);
  EXPECT_EQ(detect_level("2025-01-01T00:00:00Z DEBUG state=1"), LogLevel::Debug);
  EXPECT_EQ(detect_level("2025-01-01T00:00:00Z TRACE enter"), LogLevel::Trace);
}

TEST(DetectLevel, SecondTokenLowerCase) {
  EXPECT_EQ(detect_level("12:00:00 error boom"), LogLevel::Error);
  EXPECT_EQ(detect_level("12:00:00 warn careful"), LogLevel::Warn);
  EXPECT_EQ(detect_level("12:00:00 debug x"), LogLevel::Debug);
  EXPECT_EQ(detect_level("12:00:00 trace y"), LogLevel::Trace);
}

TEST(DetectLevel, TracingLineWithSpansAndPadding) {
  EXPECT_EQ(detect_level("2025-01-01T00:00:00.123456Z  WARN request{id=7}: my_module::api: slow"), LogLevel::Warn);
  EXPECT_EQ(detect_level("   2025-01-01T00:00:00Z\tERROR span{a=1}:inner{b=2}: failed"), LogLevel::Error);
}

TEST(DetectLevel, JsonLevelFieldAnyCase) {
  EXPECT_EQ(detect_level(R"({"level":"ERROR","msg":"x"})"), LogLevel::Error);
  EXPECT_EQ(detect_level(R"({"level":"warn","msg":"x"})"), LogLevel::Warn);
  EXPECT_EQ(detect_level(R"(  {"msg":"x", "level" : "Debug"})"), LogLevel::Debug);
  EXPECT_EQ(detect_level(R"({"timestamp":"t","level":"trace","fields":{"level":"error"}})"), LogLevel::Trace);
}

TEST(DetectLevel, DefaultsToInfo) {
  EXPECT_EQ(detect_level(""), LogLevel::Info);
  EXPECT_EQ(detect_level("just a message"), LogLevel::Info);
  EXPECT_EQ(detect_level("ERROR first token is not the level"), LogLevel::Info);
  EXPECT_EQ(detect_level("x Error mixed case is not a level"), LogLevel::Info);
  EXPECT_EQ(detect_level(R"({"level":"fatal"})"), LogLevel::Info);
}

TEST(DetectLevel, BrokenJsonFallsBackToTokens) {
  EXPECT_EQ(detect_level(R"({"level":"error")"), LogLevel::Info);          // unterminated
  EXPECT_EQ(detect_level(R"({"level":"error"} trailing)"), LogLevel::Info);  // not one document
  EXPECT_EQ(detect_level("{broken WARN json"), LogLevel::Warn);              // second token rule still applies
  EXPECT_EQ(detect_level(R"({"nested":{"level":"error"}})"), LogLevel::Info);  // only the top level counts
}

TEST(DetectLevel, DeepNestingIsRejectedNotRecursedForever) {
  std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + ",\"level\":\"error\"}";
  EXPECT_EQ(detect_level(deep), LogLevel::Info);
}

// The token rule as it was before the second token was matched in place
// (byte by byte, table of names): same level for random non-JSON lines.
LogLevel token_rule_before(std::string_view line) {
  auto blank = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  std::size_t pos = 0;
  while (pos < line.size() && blank(line[pos])) ++pos;
  while (pos < line.size() && !blank(line[pos])) ++pos;
  while (pos < line.size() && blank(line[pos])) ++pos;
  std::size_t end = pos;
  while (end < line.size() && !blank(line[end])) ++end;
  const std::string_view word = line.substr(pos, end - pos);
  static const std::pair<const char*, LogLevel> kNames[] = {{"error", LogLevel::Error}, {"warn", LogLevel::Warn},
                                                            {"info", LogLevel::Info}, {"debug", LogLevel::Debug},
                                                            {"trace", LogLevel::Trace}};
  for (const auto& [name, level] : kNames) {
    std::string lower = name, upper = name;
    for (char& c : upper) c = static_cast<char>(c - 'a' + 'A');
    if (word == lower || word == upper) return level;
  }
  return LogLevel::Info;
}

TEST(DetectLevel, TokenRuleSameAsBeforeOnRandomLines) {
  std::mt19937 rng(7);
  static const char* const kPieces[] = {"ERROR", "error", "WARN", "warn", "INFO", "DEBUG", "debug", "TRACE", "trace",
                                        "Error", "ERRORS", "WAR", " ", "  ", "\t", "\r", "\v", "x", "12:00:00",
                                        "2025-01-01T00:00:00.123456Z", "e", "w", "\xc3\xa9", "{", "}"};
  for (int round = 0; round < 200000; ++round) {
    std::string line;
    const int pieces = static_cast<int>(rng() % 6);
    for (int i = 0; i < pieces; ++i) line += kPieces[rng() % (sizeof kPieces / sizeof kPieces[0])];
    std::size_t start = line.find_first_not_of(" \t\n\v\f\r");
    if (start != std::string::npos && line[start] == '{') continue;  // the JSON rule: unchanged
    ASSERT_EQ(detect_level(line), token_rule_before(line)) << "'" << line << "'";
  }
}
