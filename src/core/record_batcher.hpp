// Turns one output stream of one instance into LogRecords, and hands the
// lines of each read() chunk to the sink as one batch (LogSink::write_batch).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/line_splitter.hpp"
#include "modkit/modkit.hpp"

namespace modkit::core {

class RecordBatcher final : private LineSplitter::Sink {
 public:
  /// Where batches go; called on the thread that feeds the batcher.
  class Output {
   public:
    virtual ~Output() = default;
    virtual void deliver(const LogRecord* records, std::size_t count) = 0;
    /// Whether a complete line (not a continuation) must be shown to
    /// line_seen(). Once false, false for good: it is not asked again.
    virtual bool wants_lines() = 0;
    /// Called after the sink has had the line (its batch is flushed first).
    virtual void line_seen(std::string_view line) = 0;
  };

  /// Most records in one batch: a chunk of shorter lines goes in several,
  /// so what a reader keeps allocated stays bounded (~150 KiB).
  static constexpr std::size_t kMaxBatch = 2048;

  /// `module` and `instance_id` must outlive the batcher.
  RecordBatcher(std::size_t max_line_bytes, std::string_view module, std::string_view instance_id, LogStream stream,
                Output& output);

  /// One read() chunk, read at `received`: its complete lines go out as one
  /// batch before this returns.
  void feed(std::string_view chunk, std::chrono::system_clock::time_point received);
  /// End of stream: a last line without '\n' goes out.
  void finish(std::chrono::system_clock::time_point received);

 private:
  void line(std::string_view text, bool continuation) override;
  void flush();

  LineSplitter splitter_;
  Output& output_;
  LogRecord prototype_;
  LogLevel level_ = LogLevel::Info;  // of the line the next continuation belongs to
  bool watching_ = true;             // output_.wants_lines() may still say yes
  std::string_view chunk_;           // lines inside it are used in place
  std::vector<LogRecord> records_;
  // Lines the splitter built outside the chunk (joined across chunks, or
  // repaired UTF-8), copied here; their views are set at the flush, since
  // the arena may move while it grows.
  std::string arena_;
  std::vector<std::pair<std::size_t, std::size_t>> in_arena_;  // record index, arena offset
};

}  // namespace modkit::core
