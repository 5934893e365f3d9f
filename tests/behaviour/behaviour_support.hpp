// Helpers shared by the behaviour tests: run a child to its end and collect
// what it wrote, find library events.
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"

// A namespace of its own: other test headers define similar helpers in
// modkit::testing, and inline functions of one name must not differ (ODR).
namespace modkit::testing::behaviour {

/// True for the library's "exited with code N" / "killed by signal N" event.
inline bool is_exit_event(const StoredRecord& record) {
  return record.stream == LogStream::Library &&
         (record.line.rfind("exited with code", 0) == 0 || record.line.rfind("killed by signal", 0) == 0);
}

/// Waits until the library reported the exit of `id`.
inline bool wait_for_exit_event(const CollectingSink& sink, const std::string& id,
                                std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  return sink.wait_for([&](const StoredRecord& r) { return r.instance_id == id && is_exit_event(r); }, timeout);
}

/// The library events of one instance, in order.
inline std::vector<std::string> library_events(const CollectingSink& sink, const std::string& id) {
  return sink.lines(id, LogStream::Library);
}

inline bool contains(const std::vector<std::string>& lines, const std::string& text) {
  for (const auto& line : lines) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

/// What a child that ran to its end left behind.
struct ChildRun {
  InstanceHandle handle;
  std::vector<std::string> out, err;
  bool ok = false;
};

/// Spawns `config`, waits for its exit, waits until its output is drained
/// (stop_instance on an exited instance returns once the readers are done),
/// and returns its stdout and stderr lines.
inline ChildRun run_to_end(Fixture& f, const OopModuleConfig& config) {
  ChildRun run;
  auto handle = f.backend->spawn_instance(config);
  if (!handle) {
    ADD_FAILURE() << "spawn failed: " << handle.error();
    return run;
  }
  run.handle = *handle;
  if (!wait_for_exit_event(*f.sink, handle->instance_id)) {
    ADD_FAILURE() << "no exit event for " << *handle;
    return run;
  }
  auto stopped = f.backend->stop_instance(*handle);
  if (!stopped) {
    ADD_FAILURE() << "stop failed: " << stopped.error();
    return run;
  }
  run.out = f.sink->lines(handle->instance_id, LogStream::Stdout);
  run.err = f.sink->lines(handle->instance_id, LogStream::Stderr);
  run.ok = true;
  return run;
}

}  // namespace modkit::testing::behaviour

namespace modkit::testing::behaviour {

/// Records what LocalProcessOptions::on_exit reports.
class ExitLog {
 public:
  /// A callback for LocalProcessOptions::on_exit; the log must outlive the backend.
  std::function<void(const InstanceHandle&, const ExitStatus&)> callback() {
    return [this](const InstanceHandle& handle, const ExitStatus& status) {
      std::lock_guard<std::mutex> lock(mutex_);
      exits_.emplace_back(handle, status);
      changed_.notify_all();
    };
  }

  /// The status reported for `id`, waiting for it up to `timeout`.
  std::optional<ExitStatus> wait_for(const std::string& id,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mutex_);
    std::optional<ExitStatus> found;
    changed_.wait_for(lock, timeout, [&] {
      for (const auto& [handle, status] : exits_) {
        if (handle.instance_id == id) found = status;
      }
      return found.has_value();
    });
    return found;
  }

  /// The first status reported for any instance, waiting up to `timeout`.
  std::optional<ExitStatus> wait_for_any(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!changed_.wait_for(lock, timeout, [&] { return !exits_.empty(); })) return std::nullopt;
    return exits_.front().second;
  }

  std::size_t count(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t n = 0;
    for (const auto& entry : exits_) n += entry.first.instance_id == id ? 1 : 0;
    return n;
  }

  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return exits_.size();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<InstanceHandle, ExitStatus>> exits_;
};

/// Options with short graces and `log` as the exit callback.
inline LocalProcessOptions options_with(ExitLog& log, bool use_pidfd = true) {
  LocalProcessOptions options = Fixture::fast_options();
  options.on_exit = log.callback();
  options.use_pidfd = use_pidfd;
  return options;
}

/// Waits until `id` wrote `text` on stdout (e.g. "ignoring SIGTERM").
inline bool wait_until_said(const CollectingSink& sink, const std::string& id, const std::string& text) {
  return sink.wait_for_line(id, text);
}

}  // namespace modkit::testing::behaviour
