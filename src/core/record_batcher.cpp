#include "core/record_batcher.hpp"

#include <cstdint>

namespace modkit::core {

RecordBatcher::RecordBatcher(std::size_t max_line_bytes, std::string_view module, std::string_view instance_id,
                             LogStream stream, Output& output)
    : splitter_(max_line_bytes, *this), output_(output) {
  prototype_.module = module;
  prototype_.instance_id = instance_id;
  prototype_.stream = stream;
}

void RecordBatcher::feed(std::string_view chunk, std::chrono::system_clock::time_point received) {
  prototype_.timestamp = received;
  chunk_ = chunk;
  if (watching_ && !output_.wants_lines()) watching_ = false;
  // The usual case inline: whole ASCII lines within the length limit, with
  // nothing held back from the chunk before and no readiness waiting for a
  // line. What else the chunk holds goes through the splitter, which
  // produces the same records (see the differential test).
  const char* p = chunk.data();
  const char* const end = p + chunk.size();
  if (!watching_ && splitter_.idle()) {
    const std::size_t max = splitter_.max_line_bytes();
    while (p < end) {
      unsigned high = 0;
      const char* newline = scan_line(p, end, high);
      if (newline == nullptr || high != 0) break;
      std::size_t length = static_cast<std::size_t>(newline - p);
      if (length > 0 && p[length - 1] == '\r') --length;
      if (length > max) break;
      const std::string_view text(p, length);
      if (records_.size() == kMaxBatch) flush();
      records_.push_back(prototype_);
      LogRecord& record = records_.back();
      record.level = level_ = detect_level(text);
      record.line = text;
      p = newline + 1;
    }
  }
  if (p < end) splitter_.feed(std::string_view(p, static_cast<std::size_t>(end - p)));
  flush();
  chunk_ = {};
}

void RecordBatcher::finish(std::chrono::system_clock::time_point received) {
  prototype_.timestamp = received;
  if (watching_ && !output_.wants_lines()) watching_ = false;
  chunk_ = {};
  splitter_.finish();
  flush();
}

// A continuation keeps the level found at the start of its line: a cut-off
// middle says nothing about severity.
void RecordBatcher::line(std::string_view text, bool continuation) {
  if (!continuation) level_ = detect_level(text);
  records_.push_back(prototype_);
  LogRecord& record = records_.back();
  record.level = level_;
  record.continuation = continuation;
  const auto at = reinterpret_cast<std::uintptr_t>(text.data());
  const auto begin = reinterpret_cast<std::uintptr_t>(chunk_.data());
  if (at >= begin && at + text.size() <= begin + chunk_.size()) {
    record.line = text;
  } else {
    // The splitter reuses the buffer behind `text` for its next line.
    in_arena_.emplace_back(records_.size() - 1, arena_.size());
    arena_.append(text.data(), text.size());
    record.line = std::string_view(nullptr, text.size());
  }
  // The sink sees a line before whatever it makes modkit report ("ready").
  if (!continuation && watching_ && output_.wants_lines()) {
    flush();
    output_.line_seen(text);
  } else if (records_.size() == kMaxBatch) {
    flush();
  }
}

void RecordBatcher::flush() {
  if (records_.empty()) return;
  for (const auto& [index, offset] : in_arena_) {
    records_[index].line = std::string_view(arena_.data() + offset, records_[index].line.size());
  }
  output_.deliver(records_.data(), records_.size());
  records_.clear();
  in_arena_.clear();
  arena_.clear();
}

}  // namespace modkit::core
