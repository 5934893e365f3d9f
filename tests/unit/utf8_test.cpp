// UTF-8 repair and safe cutting (core/utf8.hpp).
#include <gtest/gtest.h>

#include <string>

#include "core/utf8.hpp"

namespace {

using modkit::utf8::safe_cut;
using modkit::utf8::sanitize;

const std::string kFffd = "\xEF\xBF\xBD";

std::string clean(std::string_view text) {
  std::string scratch;
  return std::string(sanitize(text, scratch));
}

TEST(Utf8Sanitize, ValidTextIsReturnedAsIsWithoutCopy) {
  std::string scratch = "untouched";
  std::string text = "plain ascii, caf\xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80";
  std::string_view out = sanitize(text, scratch);
  EXPECT_EQ(out, text);
  EXPECT_EQ(out.data(), text.data());  // a view of the input, not of scratch
  EXPECT_EQ(scratch, "untouched");
}

TEST(Utf8Sanitize, EmptyText) { EXPECT_EQ(clean(""), ""); }

TEST(Utf8Sanitize, LoneBytesAreReplaced) {
  EXPECT_EQ(clean("a\xFF" "b"), "a" + kFffd + "b");
  EXPECT_EQ(clean("\x80"), kFffd);
  EXPECT_EQ(clean("bad \xff\xfe bytes \xc3\x28 end"), "bad " + kFffd + kFffd + " bytes " + kFffd + "( end");
}

TEST(Utf8Sanitize, OverlongsSurrogatesAndBeyondMaxAreInvalid) {
  EXPECT_EQ(clean("\xC0\xAF"), kFffd + kFffd);          // overlong '/'
  EXPECT_EQ(clean("\xE0\x80\xAF"), kFffd + kFffd + kFffd);  // overlong, 3 bytes
  EXPECT_EQ(clean("\xED\xA0\x80"), kFffd + kFffd + kFffd);  // surrogate U+D800
  EXPECT_EQ(clean("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(clean("\xF5"), kFffd);
}

TEST(Utf8Sanitize, TruncatedSequenceIsOneReplacement) {
  // Maximal subpart: the lead and the continuation bytes that fit it.
  EXPECT_EQ(clean("\xE2\x82"), kFffd);
  EXPECT_EQ(clean("\xE2\x82x"), kFffd + "x");
  EXPECT_EQ(clean("\xF0\x9F\x98"), kFffd);
  EXPECT_EQ(clean("x\xF0\x9F\x98y\xE2\x82\xAC"), "x" + kFffd + "y\xE2\x82\xAC");
}

TEST(Utf8Sanitize, OutputIsAlwaysValid) {
  // Every two-byte combination, sanitized, must come out valid.
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; b += 7) {
      std::string text{static_cast<char>(a), static_cast<char>(b), '\xE2'};
      std::string once = clean(text);
      std::string scratch;
      EXPECT_EQ(sanitize(once, scratch).data(), once.data()) << a << " " << b;
    }
  }
}

TEST(Utf8SafeCut, LimitBeyondTextReturnsSize) {
  EXPECT_EQ(safe_cut("abc", 10), 3u);
  EXPECT_EQ(safe_cut("abc", 3), 3u);
}

TEST(Utf8SafeCut, AsciiCutsAtLimit) { EXPECT_EQ(safe_cut("abcdef", 4), 4u); }

TEST(Utf8SafeCut, NeverSplitsAWellFormedSequence) {
  std::string euro = "\xE2\x82\xAC";  // 3 bytes
  std::string text = "ab" + euro + "cd";  // a b E2 82 AC c d
  EXPECT_EQ(safe_cut(text, 2), 2u);
  EXPECT_EQ(safe_cut(text, 3), 2u);
  EXPECT_EQ(safe_cut(text, 4), 2u);
  EXPECT_EQ(safe_cut(text, 5), 5u);
  std::string emoji = "\xF0\x9F\x98\x80";  // 4 bytes
  std::string text4 = "a" + emoji + "b";
  for (std::size_t limit = 1; limit <= 4; ++limit) EXPECT_EQ(safe_cut(text4, limit), 1u) << limit;
  EXPECT_EQ(safe_cut(text4, 5), 5u);
}

TEST(Utf8SafeCut, InvalidBytesMayBeCutAnywhere) {
  std::string text = "ab\x80\x80\x80\x80";
  EXPECT_EQ(safe_cut(text, 4), 4u);
}

TEST(Utf8SafeCut, NeverReturnsZeroForAPositiveLimit) {
  std::string emoji = "\xF0\x9F\x98\x80\xF0\x9F\x98\x80";
  for (std::size_t limit = 1; limit < emoji.size(); ++limit) EXPECT_GT(safe_cut(emoji, limit), 0u) << limit;
}

}  // namespace
