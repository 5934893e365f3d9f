// core/text.hpp: the message-building helpers (concat, append, Decimal, error_of).
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <string>

#include "core/text.hpp"

namespace {

using modkit::core::append;
using modkit::core::concat;
using modkit::core::Decimal;

std::string text(const Decimal& decimal) { return std::string(std::string_view(decimal)); }

TEST(Text, DecimalMatchesToString) {
  for (long long value : {0LL, 1LL, -1LL, 9LL, 10LL, -10LL, 4194304LL, LLONG_MAX, LLONG_MIN}) {
    EXPECT_EQ(text(Decimal(value)), std::to_string(value));
  }
  EXPECT_EQ(text(Decimal(ULLONG_MAX)), std::to_string(ULLONG_MAX));
  EXPECT_EQ(text(Decimal(std::uint32_t(4294967295u))), "4294967295");
  EXPECT_EQ(text(Decimal(std::size_t(42))), "42");
  EXPECT_EQ(text(Decimal(-5)), "-5");
}

TEST(Text, ConcatAndAppendJoinEveryPiece) {
  std::string name = "m";
  EXPECT_EQ(concat({"module '", name, "': pid ", Decimal(12), ""}), "module 'm': pid 12");
  EXPECT_EQ(concat({}), "");
  std::string grown = "a";
  append(grown, {"b", std::string(100, 'c'), "d"});
  EXPECT_EQ(grown, "ab" + std::string(100, 'c') + "d");
}

TEST(Text, ErrorOfCarriesCodeAndMessage) {
  modkit::Error error = modkit::core::error_of(std::errc::invalid_argument, {"x ", Decimal(3)});
  EXPECT_EQ(error.code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(error.message, "x 3");
}

}  // namespace
