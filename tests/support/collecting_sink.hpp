// A LogSink for tests: keeps every record and lets a test wait for one.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "modkit/modkit.hpp"
#include "modkit/ostream.hpp"  // tests print Errors and statuses in gtest messages

namespace modkit::testing {

struct StoredRecord {
  std::string module;
  std::string instance_id;
  LogStream stream;
  LogLevel level;
  std::string line;
  bool continuation;
};

class CollectingSink final : public LogSink {
 public:
  void write(const LogRecord& record) override {
    std::lock_guard<std::mutex> lock(mutex_);
    records_.push_back({std::string(record.module), std::string(record.instance_id), record.stream, record.level,
                        std::string(record.line), record.continuation});
    changed_.notify_all();
  }

  std::vector<StoredRecord> records() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return records_;
  }

  /// Lines of one stream of one instance, in order.
  std::vector<std::string> lines(const std::string& instance_id, LogStream stream) const {
    std::vector<std::string> result;
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& record : records_) {
      if (record.instance_id == instance_id && record.stream == stream) result.push_back(record.line);
    }
    return result;
  }

  /// Waits until some record satisfies `match`; false on timeout. Each
  /// record is looked at once (a wait over a flood of lines stays linear
  /// and does not hold the sink's lock long: under ThreadSanitizer a
  /// rescan per record starved the readers of a 20000-line module).
  bool wait_for(const std::function<bool(const StoredRecord&)>& match,
                std::chrono::milliseconds timeout = std::chrono::seconds(10)) const {
    std::unique_lock<std::mutex> lock(mutex_);
    std::size_t seen = 0;
    return changed_.wait_for(lock, timeout, [&] {
      for (; seen < records_.size(); ++seen) {
        if (match(records_[seen])) return true;
      }
      return false;
    });
  }

  bool wait_for_line(const std::string& instance_id, const std::string& text,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10)) const {
    return wait_for([&](const StoredRecord& r) { return r.instance_id == instance_id && r.line == text; }, timeout);
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::vector<StoredRecord> records_;
};

}  // namespace modkit::testing
