// Fuzzes RecordBatcher: whatever the bytes and however they are chunked, its
// records (the inline path for whole ASCII lines, LineSplitter for the rest)
// are those of LineSplitter with detect_level per line, and no batch is
// empty or larger than kMaxBatch.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/line_splitter.hpp"
#include "core/record_batcher.hpp"
#include "fuzz_support.hpp"
#include "modkit/modkit.hpp"

namespace {

using modkit::LineSplitter;
using modkit::LogLevel;
using modkit::LogRecord;
using modkit::core::RecordBatcher;

struct Rec {
  std::string line;
  LogLevel level;
  bool continuation;
  bool operator==(const Rec& o) const { return line == o.line && level == o.level && continuation == o.continuation; }
};

class Reference final : public LineSplitter::Sink {
 public:
  void line(std::string_view text, bool continuation) override {
    if (!continuation) level_ = modkit::detect_level(text);
    records.push_back({std::string(text), level_, continuation});
  }
  std::vector<Rec> records;

 private:
  LogLevel level_ = LogLevel::Info;
};

class Batches final : public RecordBatcher::Output {
 public:
  void deliver(const LogRecord* batch, std::size_t count) override {
    MODKIT_FUZZ_CHECK(count > 0 && count <= RecordBatcher::kMaxBatch, "batch size out of bounds");
    for (std::size_t i = 0; i < count; ++i) {
      records.push_back({std::string(batch[i].line), batch[i].level, batch[i].continuation});
    }
  }
  bool wants_lines() override { return watching > 0; }
  void line_seen(std::string_view) override { --watching; }
  std::vector<Rec> records;
  int watching = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 10) return 0;
  const std::size_t max = 4 + data[0] % 64;
  const std::uint8_t* chunks = data + 1;
  const int watching = data[9] % 4;  // lines a readiness waits for
  std::string_view stream(reinterpret_cast<const char*>(data + 10), size - 10);

  Reference reference;
  LineSplitter splitter(max, reference);
  Batches batches;
  batches.watching = watching;
  RecordBatcher batcher(max, "m", "i", modkit::LogStream::Stdout, batches);
  const auto when = std::chrono::system_clock::time_point{};
  std::size_t k = 0;
  while (!stream.empty()) {
    std::size_t piece = 1 + chunks[k++ % 8] * 3u % 200;
    if (piece > stream.size()) piece = stream.size();
    splitter.feed(stream.substr(0, piece));
    batcher.feed(stream.substr(0, piece), when);
    stream.remove_prefix(piece);
  }
  splitter.finish();
  batcher.finish(when);
  MODKIT_FUZZ_CHECK(batches.records == reference.records, "records differ from the per-line path");
  return 0;
}
