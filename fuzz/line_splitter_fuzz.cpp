// Fuzzes LineSplitter: whatever the bytes and however they are chunked, every
// piece is valid UTF-8 without a newline, no piece's raw text exceeds the
// limit, lines are flagged correctly, the pieces of a line put together give
// the line back (after repair), and the chunking changes nothing.
//
// Input: [max byte][8 chunk-size bytes][stream...]
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/line_splitter.hpp"
#include "fuzz_support.hpp"

using modkit::LineSplitter;
using namespace modkit::fuzz;

namespace {

struct Piece {
  std::string text;
  bool continuation;
  bool operator==(const Piece& other) const { return text == other.text && continuation == other.continuation; }
};

class Recorder final : public LineSplitter::Sink {
 public:
  void line(std::string_view text, bool continuation) override { pieces.push_back({std::string(text), continuation}); }
  std::vector<Piece> pieces;
};

// Length of the well-formed sequence at text[i] (0 if none), by the
// independent checker.
std::size_t well_formed_at(std::string_view text, std::size_t i) {
  for (std::size_t length = 1; length <= 4 && i + length <= text.size(); ++length) {
    if (is_valid_utf8(text.substr(i, length))) return length;
  }
  return 0;
}

// The bytes of `raw` that belong to well-formed sequences, in order: what a
// repair keeps (it only adds U+FFFD in place of the others).
std::string kept_bytes(std::string_view raw) {
  std::string result;
  for (std::size_t i = 0; i < raw.size();) {
    std::size_t length = well_formed_at(raw, i);
    if (length == 0) {
      ++i;
    } else {
      result.append(raw.data() + i, length);
      i += length;
    }
  }
  return result;
}

std::string without_replacement_characters(std::string text) {
  static const std::string kFffd = "\xEF\xBF\xBD";
  for (std::size_t at = text.find(kFffd); at != std::string::npos; at = text.find(kFffd, at)) text.erase(at, 3);
  return text;
}

std::vector<Piece> run(std::string_view stream, std::size_t max, const std::uint8_t* chunks) {
  Recorder recorder;
  LineSplitter splitter(max, recorder);
  std::size_t k = 0;
  while (!stream.empty()) {
    std::size_t size = chunks ? 1 + chunks[k++ % 8] % 40 : stream.size();
    if (size > stream.size()) size = stream.size();
    splitter.feed(stream.substr(0, size));
    stream.remove_prefix(size);
  }
  splitter.finish();
  return std::move(recorder.pieces);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 9) return 0;
  const std::size_t max = 4 + data[0] % 64;
  const std::uint8_t* chunks = data + 1;
  std::string_view stream(reinterpret_cast<const char*>(data + 9), size - 9);

  std::vector<Piece> whole = run(stream, max, nullptr);
  std::vector<Piece> chunked = run(stream, max, chunks);

  // The lines the splitter should see: split at '\n', one trailing '\r' dropped,
  // a last unterminated line only if it is not empty.
  std::vector<std::string_view> lines;
  for (std::string_view rest = stream;;) {
    std::size_t newline = rest.find('\n');
    if (newline == std::string_view::npos) {
      if (!rest.empty()) lines.push_back(rest);
      break;
    }
    lines.push_back(rest.substr(0, newline));
    rest.remove_prefix(newline + 1);
  }
  for (auto& line : lines) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  }

  for (const auto* output : {&whole, &chunked}) {
    std::size_t line_index = 0;
    std::string joined;
    auto check_line = [&](std::size_t index) {
      MODKIT_FUZZ_CHECK(index < lines.size(), "more lines out than in");
      std::string_view raw = lines[index];
      if (is_valid_utf8(raw)) {
        MODKIT_FUZZ_CHECK(joined == raw, "pieces of a valid line do not join to the line");
      } else {
        MODKIT_FUZZ_CHECK(without_replacement_characters(joined) == without_replacement_characters(kept_bytes(raw)),
                          "pieces of a repaired line lost or invented text");
      }
    };
    for (std::size_t i = 0; i < output->size(); ++i) {
      const Piece& piece = (*output)[i];
      MODKIT_FUZZ_CHECK(is_valid_utf8(piece.text), "a piece is not valid UTF-8");
      MODKIT_FUZZ_CHECK(piece.text.find('\n') == std::string::npos, "a piece contains a newline");
      // Raw pieces are cut at max bytes; a repair turns one byte into at most 3.
      MODKIT_FUZZ_CHECK(piece.text.size() <= 3 * max, "a piece exceeds the limit");
      MODKIT_FUZZ_CHECK(i > 0 || !piece.continuation, "the first piece is a continuation");
      if (!piece.continuation && i > 0) {
        check_line(line_index++);
        joined.clear();
      }
      joined += piece.text;
    }
    if (!output->empty()) check_line(line_index++);
    MODKIT_FUZZ_CHECK(line_index == lines.size(), "a line went missing");
  }
  MODKIT_FUZZ_CHECK(whole == chunked, "the output depends on how the input was chunked");
  return 0;
}
