// RecordBatcher: the lines of one chunk go to the sink as one batch, with the
// same records (text, level, continuation) the per-line path produced, and a
// line the readiness waits for reaches the sink before the tracker.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/line_splitter.hpp"
#include "core/record_batcher.hpp"
#include "core/utf8.hpp"
#include "modkit/modkit.hpp"

namespace {

using namespace modkit;
using core::RecordBatcher;

struct Rec {
  std::string line;
  LogLevel level;
  bool continuation;
  bool operator==(const Rec& o) const { return line == o.line && level == o.level && continuation == o.continuation; }
};

std::ostream& operator<<(std::ostream& os, const Rec& r) {
  return os << '"' << r.line << "\" level " << static_cast<int>(r.level) << (r.continuation ? " +" : "");
}

// What the batcher hands out: each batch, and the events in order.
class Recorder final : public RecordBatcher::Output {
 public:
  void deliver(const LogRecord* records, std::size_t count) override {
    batches.emplace_back();
    for (std::size_t i = 0; i < count; ++i) {
      EXPECT_EQ(records[i].module, "mod");
      EXPECT_EQ(records[i].instance_id, "id-1");
      EXPECT_EQ(records[i].stream, LogStream::Stdout);
      batches.back().push_back({std::string(records[i].line), records[i].level, records[i].continuation});
      events.push_back("sink:" + std::string(records[i].line));
    }
  }
  bool wants_lines() override { return wanted > 0; }
  void line_seen(std::string_view line) override {
    --wanted;
    events.push_back("seen:" + std::string(line));
  }
  std::vector<Rec> all() const {
    std::vector<Rec> result;
    for (const auto& batch : batches) result.insert(result.end(), batch.begin(), batch.end());
    return result;
  }
  std::vector<std::vector<Rec>> batches;
  std::vector<std::string> events;
  int wanted = 0;
};

std::chrono::system_clock::time_point kWhen{std::chrono::seconds(1)};

std::vector<Rec> batched(std::size_t max, const std::vector<std::string>& chunks, Recorder* out = nullptr) {
  Recorder local;
  Recorder& recorder = out ? *out : local;
  RecordBatcher batcher(max, "mod", "id-1", LogStream::Stdout, recorder);
  for (const auto& chunk : chunks) batcher.feed(chunk, kWhen);
  batcher.finish(kWhen);
  return recorder.all();
}

TEST(RecordBatcher, LinesOfOneChunkAreOneBatch) {
  Recorder recorder;
  RecordBatcher batcher(100, "mod", "id-1", LogStream::Stdout, recorder);
  batcher.feed("a\n1 ERROR b\nc", kWhen);
  ASSERT_EQ(recorder.batches.size(), 1u);
  EXPECT_EQ(recorder.batches[0],
            (std::vector<Rec>{{"a", LogLevel::Info, false}, {"1 ERROR b", LogLevel::Error, false}}));
  batcher.feed("d\ne\n", kWhen);
  ASSERT_EQ(recorder.batches.size(), 2u);
  EXPECT_EQ(recorder.batches[1], (std::vector<Rec>{{"cd", LogLevel::Info, false}, {"e", LogLevel::Info, false}}));
  batcher.finish(kWhen);
  EXPECT_EQ(recorder.batches.size(), 2u);  // nothing pending: no empty batch
}

TEST(RecordBatcher, RecordsCarryTheChunksTimestamp) {
  struct Times final : RecordBatcher::Output {
    void deliver(const LogRecord* records, std::size_t count) override {
      for (std::size_t i = 0; i < count; ++i) seen.push_back(records[i].timestamp);
    }
    bool wants_lines() override { return false; }
    void line_seen(std::string_view) override {}
    std::vector<std::chrono::system_clock::time_point> seen;
  } times;
  RecordBatcher batcher(100, "mod", "id-1", LogStream::Stdout, times);
  const auto later = kWhen + std::chrono::seconds(5);
  batcher.feed("a\nb\n", kWhen);
  batcher.feed("c\nd", later);
  batcher.finish(later + std::chrono::seconds(1));
  EXPECT_EQ(times.seen, (std::vector<std::chrono::system_clock::time_point>{kWhen, kWhen, later,
                                                                            later + std::chrono::seconds(1)}));
}

// Lines the splitter builds outside the chunk (joined, repaired, cut) must
// survive until the batch is flushed, next to lines used in place.
TEST(RecordBatcher, LinesBuiltOutsideTheChunkKeepTheirText) {
  EXPECT_EQ(batched(100, {"par", "tial\nbad \xff here\nok\n\xc3\x28\n"}),
            (std::vector<Rec>{{"partial", LogLevel::Info, false},
                              {"bad \xEF\xBF\xBD here", LogLevel::Info, false},
                              {"ok", LogLevel::Info, false},
                              {"\xEF\xBF\xBD(", LogLevel::Info, false}}));
  // Cut pieces keep the level of the first ("x WA": Info), as before.
  EXPECT_EQ(batched(4, {"x WARN", " 12345678\nn"}),
            (std::vector<Rec>{{"x WA", LogLevel::Info, false},
                              {"RN 1", LogLevel::Info, true},
                              {"2345", LogLevel::Info, true},
                              {"678", LogLevel::Info, true},
                              {"n", LogLevel::Info, false}}));
  EXPECT_EQ(batched(8, {"1 ERROR ", "abcdefgh\n"}),
            (std::vector<Rec>{{"1 ERROR ", LogLevel::Error, false}, {"abcdefgh", LogLevel::Error, true}}));
}

TEST(RecordBatcher, ALongChunkOfShortLinesIsCutIntoBoundedBatches) {
  std::string chunk;
  const std::size_t lines = RecordBatcher::kMaxBatch * 2 + 5;
  for (std::size_t i = 0; i < lines; ++i) chunk += "l\n";
  Recorder recorder;
  batched(100, {chunk}, &recorder);
  ASSERT_EQ(recorder.batches.size(), 3u);
  EXPECT_EQ(recorder.batches[0].size(), RecordBatcher::kMaxBatch);
  EXPECT_EQ(recorder.batches[1].size(), RecordBatcher::kMaxBatch);
  EXPECT_EQ(recorder.batches[2].size(), 5u);
}

// Readiness: the tracker sees a line only after the sink had it, and lines
// before it in the chunk reached the sink first too.
TEST(RecordBatcher, ALineTheReadinessWaitsForReachesTheSinkFirst) {
  Recorder recorder;
  recorder.wanted = 2;
  batched(100, {"one\ntwo\nthree\nfour\n"}, &recorder);
  EXPECT_EQ(recorder.events, (std::vector<std::string>{"sink:one", "seen:one", "sink:two", "seen:two", "sink:three",
                                                       "sink:four"}));
  EXPECT_EQ(recorder.batches.size(), 3u);  // once nothing waits, the rest is one batch again
}

TEST(RecordBatcher, AContinuationIsNotShownToTheReadiness) {
  Recorder recorder;
  recorder.wanted = 5;
  batched(4, {"abcdefg\n"}, &recorder);
  EXPECT_EQ(recorder.events, (std::vector<std::string>{"sink:abcd", "seen:abcd", "sink:efg"}));
}

// ---------------------------------------------------------------------------
// Differential: the per-line path as it was before batching and the fused
// newline/ASCII scan (a copy of the old LineSplitter: memchr, then a UTF-8
// check of every line; the level from detect_level per line) against the
// batcher, on random streams cut into random chunks.

class OldSplitter {
 public:
  OldSplitter(std::size_t max, std::vector<Rec>& out) : max_(max < 4 ? 4 : max), out_(out) {}
  void feed(std::string_view bytes) {
    while (!bytes.empty()) {
      const void* found = std::memchr(bytes.data(), '\n', bytes.size());
      if (found == nullptr) {
        pending_.append(bytes.data(), bytes.size());
        std::size_t offset = 0;
        while (pending_.size() - offset >= max_ + 3) {
          std::string_view rest(pending_.data() + offset, pending_.size() - offset);
          std::size_t cut = utf8::safe_cut(rest, max_);
          emit(rest.substr(0, cut), false);
          offset += cut;
        }
        pending_.erase(0, offset);
        return;
      }
      std::size_t length = static_cast<std::size_t>(static_cast<const char*>(found) - bytes.data());
      if (pending_.empty()) {
        emit_bounded(bytes.substr(0, length));
      } else {
        pending_.append(bytes.data(), length);
        emit_bounded(pending_);
        pending_.clear();
      }
      bytes.remove_prefix(length + 1);
    }
  }
  void finish() {
    if (!pending_.empty()) {
      emit_bounded(pending_);
      pending_.clear();
    }
    continuing_ = false;
  }

 private:
  void emit_bounded(std::string_view raw) {
    if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
    while (raw.size() > max_) {
      std::size_t cut = utf8::safe_cut(raw, max_);
      emit(raw.substr(0, cut), false);
      raw.remove_prefix(cut);
    }
    emit(raw, true);
  }
  void emit(std::string_view raw, bool complete) {
    std::string_view text = utf8::sanitize(raw, scratch_);
    if (!continuing_) level_ = detect_level(text);
    out_.push_back({std::string(text), level_, continuing_});
    continuing_ = !complete;
  }
  std::size_t max_;
  std::vector<Rec>& out_;
  std::string pending_, scratch_;
  bool continuing_ = false;
  LogLevel level_ = LogLevel::Info;
};

std::string random_stream(std::mt19937& rng) {
  static const char* const kPieces[] = {
      "2025-01-01T00:00:00Z ", "ERROR ", "warn ", "INFO", " DEBUG", "trace", "\t", "  ", "\n", "\r\n", "\r",
      "{\"level\":\"Warn\",\"m\":1}", "{\"level\":", "x", "0123456789abcdef", "\xc3\xa9", "\xe2\x82\xac",
      "\xf0\x9f\x98\x80", "\xff", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\x80", "\"", "\\", "}", "\x7f", "\xc2\x85"};
  std::string text;
  const int pieces = std::uniform_int_distribution<int>(0, 60)(rng);
  for (int i = 0; i < pieces; ++i) {
    if (rng() % 7 == 0) {
      text.append(std::uniform_int_distribution<std::size_t>(1, 80)(rng), static_cast<char>('a' + rng() % 26));
    } else if (rng() % 11 == 0) {
      text.push_back(static_cast<char>(rng() & 0xFF));
    } else {
      text += kPieces[rng() % (sizeof kPieces / sizeof kPieces[0])];
    }
  }
  return text;
}

TEST(RecordBatcher, SameRecordsAsThePerLinePath) {
  std::mt19937 rng(12);
  for (int round = 0; round < 20000; ++round) {
    const std::string stream = random_stream(rng);
    const std::size_t max = rng() % 3 == 0 ? 16 * 1024 : std::uniform_int_distribution<std::size_t>(1, 40)(rng);
    std::vector<std::string> chunks;
    for (std::size_t at = 0; at < stream.size();) {
      std::size_t size = rng() % 4 == 0 ? stream.size() : std::uniform_int_distribution<std::size_t>(1, 50)(rng);
      size = std::min(size, stream.size() - at);
      chunks.push_back(stream.substr(at, size));
      at += size;
    }
    std::vector<Rec> expected;
    OldSplitter old(max, expected);
    for (const auto& chunk : chunks) old.feed(chunk);
    old.finish();
    ASSERT_EQ(batched(max, chunks), expected) << "round " << round << " max " << max;
  }
}

}  // namespace
