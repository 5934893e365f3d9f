// Helpers for the reliability tests: a counting sink that keeps no lines, and
// (Linux) views of the host process from /proc: descriptors, threads, memory,
// children and zombies.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"

#ifndef _WIN32
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#endif

namespace modkit::testing {

/// Number of cycles for the stress tests: MODKIT_STRESS_CYCLES, else `fallback`.
inline long stress_cycles(long fallback = 2000) {
  const char* text = std::getenv("MODKIT_STRESS_CYCLES");
  if (text == nullptr || *text == '\0') return fallback;
  long value = std::strtol(text, nullptr, 10);
  return value > 0 ? value : fallback;
}

/// `base` rounds for a test that repeats a scenario, scaled like the stress
/// cycles (MODKIT_STRESS_CYCLES / 2000, at least a tenth of `base`): the
/// sanitizer runs in CI lower the cycles, and so these rounds too.
inline int scaled_rounds(int base) {
  long scaled = static_cast<long>(base) * stress_cycles(2000) / 2000;
  long floor = base / 10 > 0 ? base / 10 : 1;
  return static_cast<int>(scaled < floor ? floor : (scaled > base * 10L ? base * 10L : scaled));
}

/// True for a well-formed UTF-8 string (Unicode table 3-7), written
/// independently of src/core/utf8.cpp.
inline bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  while (i < text.size()) {
    unsigned char c = at(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t need;
    std::uint32_t code;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
      code = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      code = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      code = c & 0x07;
    } else {
      return false;
    }
    if (i + need >= text.size()) return false;  // truncated
    for (std::size_t k = 1; k <= need; ++k) {
      if ((at(i + k) & 0xC0) != 0x80) return false;
      code = (code << 6) | (at(i + k) & 0x3F);
    }
    if ((need == 2 && code < 0x800) || (need == 3 && code < 0x10000)) return false;  // overlong
    if (code >= 0xD800 && code <= 0xDFFF) return false;                                // surrogate
    if (code > 0x10FFFF) return false;
    i += need + 1;
  }
  return true;
}

/// Counts what it receives and keeps only a bounded sample of library events,
/// so a flood of output costs no memory in the test itself.
class CountingSink final : public LogSink {
 public:
  void write(const LogRecord& record) override {
    if (record.stream == LogStream::Library) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (events_.size() < 10000) events_.push_back(std::string(record.line));
      library_records_.fetch_add(1, std::memory_order_relaxed);
      changed_.notify_all();
      return;
    }
    auto& counters = record.stream == LogStream::Stdout ? stdout_ : stderr_;
    counters.records.fetch_add(1, std::memory_order_relaxed);
    counters.bytes.fetch_add(record.line.size(), std::memory_order_relaxed);
    if (!record.continuation) counters.lines.fetch_add(1, std::memory_order_relaxed);
    std::size_t longest = counters.longest.load(std::memory_order_relaxed);
    while (record.line.size() > longest &&
           !counters.longest.compare_exchange_weak(longest, record.line.size(), std::memory_order_relaxed)) {
    }
    if (check_utf8_ && !is_valid_utf8(record.line)) invalid_utf8_.fetch_add(1, std::memory_order_relaxed);
    if (record.line.find('\n') != std::string_view::npos) with_newline_.fetch_add(1, std::memory_order_relaxed);
  }

  struct Counters {
    std::atomic<std::uint64_t> records{0};  ///< records, continuations included
    std::atomic<std::uint64_t> lines{0};    ///< records that start a line
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::size_t> longest{0};
  };

  const Counters& out() const { return stdout_; }
  const Counters& err() const { return stderr_; }
  std::uint64_t invalid_utf8() const { return invalid_utf8_.load(); }
  std::uint64_t with_newline() const { return with_newline_.load(); }
  void set_check_utf8(bool check) { check_utf8_ = check; }

  std::vector<std::string> events() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }
  bool has_event_containing(std::string_view text) const {
    for (const auto& event : events()) {
      if (event.find(text) != std::string::npos) return true;
    }
    return false;
  }

 private:
  Counters stdout_, stderr_;
  std::atomic<std::uint64_t> invalid_utf8_{0}, with_newline_{0}, library_records_{0};
  bool check_utf8_ = true;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> events_;
};

/// Collects on_exit calls so a test can wait for one instance's exit.
class ExitLog {
 public:
  std::function<void(const InstanceHandle&, const ExitStatus&)> callback() {
    return [this](const InstanceHandle& handle, const ExitStatus& status) {
      std::lock_guard<std::mutex> lock(mutex_);
      exits_.emplace_back(handle.instance_id, status);
      changed_.notify_all();
    };
  }
  std::optional<ExitStatus> wait_for(const std::string& instance_id,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    std::unique_lock<std::mutex> lock(mutex_);
    std::optional<ExitStatus> found;
    changed_.wait_for(lock, timeout, [&] {
      for (const auto& [id, status] : exits_) {
        if (id == instance_id) found = status;
      }
      return found.has_value();
    });
    return found;
  }
  std::size_t count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return exits_.size();
  }
  std::size_t count_for(const std::string& instance_id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t n = 0;
    for (const auto& entry : exits_) n += entry.first == instance_id;
    return n;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<std::string, ExitStatus>> exits_;
};

#ifndef _WIN32

/// Open descriptors of this process (the directory's own excluded).
inline int open_descriptor_count() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int own = dirfd(dir);
  int count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    if (std::atoi(entry->d_name) == own) continue;
    ++count;
  }
  closedir(dir);
  return count;
}

/// A field of /proc/self/status ("Threads", "VmRSS", "VmHWM"; kB for sizes).
inline long self_status_field(const std::string& name) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.compare(0, name.size() + 1, name + ":") == 0) return std::strtol(line.c_str() + name.size() + 1, nullptr, 10);
  }
  return -1;
}

inline int thread_count() { return static_cast<int>(self_status_field("Threads")); }

/// Resets VmHWM to the current RSS (Linux 4.0+); false if not permitted.
inline bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

struct ProcInfo {
  pid_t pid = 0;
  pid_t ppid = 0;
  pid_t pgrp = 0;
  pid_t session = 0;
  char state = '?';
};

/// Parses /proc/PID/stat; false if the process is gone.
inline bool read_proc(pid_t pid, ProcInfo& info) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(file, text)) return false;
  std::size_t close = text.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(text.substr(close + 1));
  info.pid = pid;
  rest >> info.state >> info.ppid >> info.pgrp >> info.session;
  return static_cast<bool>(rest);
}

/// Every process whose parent is this process, zombies included.
inline std::vector<ProcInfo> children_of_self() {
  std::vector<ProcInfo> result;
  pid_t self = getpid();
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return result;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    ProcInfo info;
    if (read_proc(static_cast<pid_t>(std::atoi(entry->d_name)), info) && info.ppid == self) result.push_back(info);
  }
  closedir(dir);
  return result;
}

inline int zombie_children() {
  int count = 0;
  for (const auto& child : children_of_self()) count += child.state == 'Z';
  return count;
}

/// True while `pid` exists and is not a zombie.
inline bool process_alive(pid_t pid) {
  ProcInfo info;
  return read_proc(pid, info) && info.state != 'Z' && info.state != 'X';
}

/// Waits up to `timeout` for `pid` to be gone (or a zombie).
inline bool wait_gone(pid_t pid, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (process_alive(pid)) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

/// Host counters that must come back after a backend is gone.
struct HostSnapshot {
  int descriptors = open_descriptor_count();
  int threads = thread_count();
};

/// A snapshot once the counts have stopped moving (reader threads of stopped
/// instances are joined by the backend's supervisor shortly after stop returns).
inline HostSnapshot quiescent_snapshot(std::chrono::milliseconds timeout = std::chrono::seconds(3)) {
  // ThreadSanitizer starts a background thread of its own at the first
  // pthread_create: get it running before the baseline.
  std::thread([] {}).join();
  auto until = std::chrono::steady_clock::now() + timeout;
  HostSnapshot last;
  int stable = 0;
  while (stable < 10 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    HostSnapshot now;
    stable = (now.descriptors == last.descriptors && now.threads == last.threads) ? stable + 1 : 0;
    last = now;
  }
  return last;
}

/// Threads end asynchronously after join (the kernel updates the count a
/// moment later); wait briefly for the counts to settle back.
inline HostSnapshot settle_to(const HostSnapshot& baseline, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  HostSnapshot now;
  while ((now.descriptors != baseline.descriptors || now.threads != baseline.threads || zombie_children() != 0) &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    now = HostSnapshot();
  }
  return now;
}

#endif  // !_WIN32

}  // namespace modkit::testing
