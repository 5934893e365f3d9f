// LineSplitter: '\n' framing, '\r' dropping, the last line, the length cap
// with continuation records, and UTF-8 safety (core/line_splitter.hpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/line_splitter.hpp"

namespace {

using modkit::LineSplitter;

struct Piece {
  std::string text;
  bool continuation;
  bool operator==(const Piece& other) const { return text == other.text && continuation == other.continuation; }
};

std::ostream& operator<<(std::ostream& os, const Piece& piece) {
  return os << (piece.continuation ? "+" : "") << '"' << piece.text << '"';
}

class Collect final : public LineSplitter::Sink {
 public:
  void line(std::string_view text, bool continuation) override { pieces.push_back({std::string(text), continuation}); }
  std::vector<Piece> pieces;
};

bool is_valid_utf8(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto b = static_cast<unsigned char>(text[i]);
    std::size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > text.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

std::vector<Piece> split(std::size_t max, const std::vector<std::string>& chunks, bool finish = true) {
  Collect sink;
  LineSplitter splitter(max, sink);
  for (const auto& chunk : chunks) splitter.feed(chunk);
  if (finish) splitter.finish();
  return sink.pieces;
}

// Feeds one byte at a time: the worst case for anything that looks ahead.
std::vector<Piece> split_bytewise(std::size_t max, const std::string& text) {
  std::vector<std::string> chunks;
  for (char c : text) chunks.emplace_back(1, c);
  return split(max, chunks);
}

TEST(LineSplitter, SplitsOnNewline) {
  EXPECT_EQ(split(100, {"a\nbb\n\nccc\n"}),
            (std::vector<Piece>{{"a", false}, {"bb", false}, {"", false}, {"ccc", false}}));
}

TEST(LineSplitter, DropsOneTrailingCarriageReturn) {
  EXPECT_EQ(split(100, {"crlf\r\nonly cr\r\r\nmid\rdle\n"}),
            (std::vector<Piece>{{"crlf", false}, {"only cr\r", false}, {"mid\rdle", false}}));
}

TEST(LineSplitter, CarriageReturnAndNewlineInSeparateChunks) {
  EXPECT_EQ(split(100, {"abc\r", "\n"}), (std::vector<Piece>{{"abc", false}}));
}

TEST(LineSplitter, LinesAcrossChunks) {
  EXPECT_EQ(split(100, {"hel", "lo\nwor", "ld\n"}), (std::vector<Piece>{{"hello", false}, {"world", false}}));
}

TEST(LineSplitter, LastLineWithoutNewlineIsFlushedAtFinish) {
  EXPECT_EQ(split(100, {"one\ntwo"}, /*finish=*/false), (std::vector<Piece>{{"one", false}}));
  EXPECT_EQ(split(100, {"one\ntwo"}), (std::vector<Piece>{{"one", false}, {"two", false}}));
  EXPECT_EQ(split(100, {"last\r"}), (std::vector<Piece>{{"last", false}}));
}

TEST(LineSplitter, NothingPendingMeansNothingAtFinish) {
  EXPECT_TRUE(split(100, {}).empty());
  EXPECT_EQ(split(100, {"x\n"}), (std::vector<Piece>{{"x", false}}));
}

TEST(LineSplitter, LongLineIsCutIntoContinuations) {
  std::string line(10, 'x');
  EXPECT_EQ(split(4, {line + "\nnext\n"}),
            (std::vector<Piece>{{"xxxx", false}, {"xxxx", true}, {"xx", true}, {"next", false}}));
}

TEST(LineSplitter, LongLineWithoutNewlineInChunksIsBounded) {
  // Pieces go out before the newline arrives, so memory stays bounded.
  Collect sink;
  LineSplitter splitter(8, sink);
  for (int i = 0; i < 100; ++i) splitter.feed("abcd");
  EXPECT_GE(sink.pieces.size(), 40u);  // 400 bytes in, at most max+3 held back
  splitter.feed("\n");
  splitter.finish();
  std::string joined;
  for (std::size_t i = 0; i < sink.pieces.size(); ++i) {
    EXPECT_EQ(sink.pieces[i].continuation, i > 0) << i;
    EXPECT_LE(sink.pieces[i].text.size(), 8u);
    joined += sink.pieces[i].text;
  }
  std::string expected;
  for (int i = 0; i < 100; ++i) expected += "abcd";
  EXPECT_EQ(joined, expected);
}

TEST(LineSplitter, ExactlyMaxIsOneRecord) {
  EXPECT_EQ(split(4, {"abcd\n"}), (std::vector<Piece>{{"abcd", false}}));
  EXPECT_EQ(split_bytewise(4, "abcd\nefgh"), (std::vector<Piece>{{"abcd", false}, {"efgh", false}}));
}

TEST(LineSplitter, CarriageReturnAtTheCapIsStillDropped) {
  // "abcd\r\n" with a cap of 4: the '\r' must not become an empty continuation.
  EXPECT_EQ(split_bytewise(4, "abcd\r\nx\n"), (std::vector<Piece>{{"abcd", false}, {"x", false}}));
  EXPECT_EQ(split(4, {"abcd\r", "\n"}), (std::vector<Piece>{{"abcd", false}}));
}

TEST(LineSplitter, ContinuationStateResetsAfterLine) {
  auto pieces = split(4, {"aaaaaa\nbb\n"});
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_FALSE(pieces[2].continuation);
}

TEST(LineSplitter, CutNeverSplitsUtf8WholeLine) {
  std::string euros;
  for (int i = 0; i < 20; ++i) euros += "\xE2\x82\xAC";
  for (std::size_t max = 4; max <= 9; ++max) {
    auto pieces = split(max, {"a" + euros + "\n"});
    std::string joined;
    for (const auto& piece : pieces) {
      EXPECT_TRUE(is_valid_utf8(piece.text)) << "max " << max << " piece " << piece;
      EXPECT_LE(piece.text.size(), max);
      joined += piece.text;
    }
    EXPECT_EQ(joined, "a" + euros) << "max " << max;
  }
}

TEST(LineSplitter, CutNeverSplitsUtf8WhenBytesArriveOneByOne) {
  // A multi-byte sequence that straddles the cut and whose last bytes have
  // not arrived yet must wait for them, not be cut and replaced.
  std::string text = "a";
  for (int i = 0; i < 30; ++i) text += (i % 2) ? "\xF0\x9F\x98\x80" : "\xE2\x82\xAC";
  for (std::size_t max = 4; max <= 11; ++max) {
    auto pieces = split_bytewise(max, text + "\n");
    std::string joined;
    for (const auto& piece : pieces) {
      EXPECT_TRUE(is_valid_utf8(piece.text)) << "max " << max;
      EXPECT_LE(piece.text.size(), max);
      joined += piece.text;
    }
    EXPECT_EQ(joined, text) << "max " << max << ": a sequence was cut and replaced";
  }
}

TEST(LineSplitter, InvalidUtf8IsReplacedAndForwardingGoesOn) {
  auto pieces = split(100, {"bad \xff\xfe bytes \xc3\x28 end\n", "after\n"});
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].text, "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes \xEF\xBF\xBD( end");
  EXPECT_EQ(pieces[1].text, "after");
}

TEST(LineSplitter, TinyMaximumIsRaisedToFour) {
  // One code point (up to 4 bytes) must always fit.
  auto pieces = split(1, {"\xF0\x9F\x98\x80\xF0\x9F\x98\x80\n"});
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].text, "\xF0\x9F\x98\x80");
  EXPECT_EQ(pieces[1].text, "\xF0\x9F\x98\x80");
  EXPECT_TRUE(pieces[1].continuation);
}

}  // namespace
