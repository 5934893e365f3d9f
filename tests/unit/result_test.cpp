// Result<T> / Result<void> (std::expected-like) and Error.
#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <string>

#include "modkit/modkit.hpp"
#include "modkit/ostream.hpp"

namespace {

using modkit::Error;
using modkit::make_error;
using modkit::Result;

Result<int> parse_positive(int value) {
  if (value <= 0) return make_error(std::errc::invalid_argument, "value must be positive, got " + std::to_string(value));
  return value;
}

TEST(Result, HoldsAValue) {
  Result<int> result = parse_positive(7);
  EXPECT_TRUE(result.has_value());
  EXPECT_TRUE(static_cast<bool>(result));
  EXPECT_EQ(*result, 7);
  EXPECT_EQ(result.value(), 7);
  *result = 8;
  EXPECT_EQ(result.value(), 8);
}

TEST(Result, HoldsAnError) {
  Result<int> result = parse_positive(-1);
  EXPECT_FALSE(result.has_value());
  EXPECT_FALSE(static_cast<bool>(result));
  EXPECT_EQ(result.error().code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(result.error().message, "value must be positive, got -1");
}

TEST(Result, ArrowReachesMembers) {
  Result<std::string> result(std::string("hello"));
  EXPECT_EQ(result->size(), 5u);
  const Result<std::string>& constant = result;
  EXPECT_EQ(constant->front(), 'h');
}

TEST(Result, MoveOnlyValuesAndRvalueAccess) {
  Result<std::unique_ptr<int>> result(std::make_unique<int>(5));
  std::unique_ptr<int> taken = std::move(result).value();
  ASSERT_TRUE(taken);
  EXPECT_EQ(*taken, 5);
  Result<std::unique_ptr<int>> again(std::make_unique<int>(6));
  std::unique_ptr<int> star = *std::move(again);
  EXPECT_EQ(*star, 6);
}

TEST(Result, ErrorCanBeMovedOut) {
  Result<int> result = parse_positive(0);
  Error error = std::move(result).error();
  EXPECT_EQ(error.message, "value must be positive, got 0");
}

TEST(Result, VoidSuccessAndFailure) {
  Result<void> ok;
  EXPECT_TRUE(ok.has_value());
  EXPECT_TRUE(static_cast<bool>(ok));
  ok.value();  // does nothing
  Result<void> failed = make_error(std::errc::permission_denied, "cannot open '/x'");
  EXPECT_FALSE(failed.has_value());
  EXPECT_FALSE(static_cast<bool>(failed));
  EXPECT_EQ(failed.error().code, std::make_error_code(std::errc::permission_denied));
  EXPECT_EQ(failed.error().message, "cannot open '/x'");
}

TEST(Error, PrintsMessageAndCodeText) {
  Error error = make_error(std::errc::no_such_file_or_directory, "cannot execute '/nope'");
  std::ostringstream text;
  text << error;
  EXPECT_EQ(text.str(), "cannot execute '/nope' (" + std::make_error_code(std::errc::no_such_file_or_directory).message() + ")");
}

TEST(ResultDeathTest, ValueOnAnErrorAbortsWithTheMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Result<int> result = parse_positive(-5);
        (void)result.value();
      },
      "value must be positive, got -5");
  EXPECT_DEATH(
      {
        Result<void> result = make_error(std::errc::invalid_argument, "void failure");
        result.value();
      },
      "void failure");
}

}  // namespace
