// Helpers for the hostile regression tests (reentry_test.cpp,
// host_safety_test.cpp, child_path_test.cpp; POSIX only): run a scenario in a forked
// "host" process under a watchdog, and sinks and exit logs that let a test act
// from inside a callback.
//
// Why a forked host: the defects these tests pin down hang the caller, kill
// the whole process (std::terminate, a signal with its default action) or need
// process-wide state a test may not leave behind (RLIMIT_NPROC as another uid,
// a seccomp filter, a private mount namespace). So each scenario runs in
//
//   gtest process --fork--> guard --fork--> host (runs the scenario)
//
// The guard is a child subreaper with a watchdog: when the host outlives its
// bound it is killed with SIGKILL and the test fails ("hung"); when the host
// is gone, every process it left behind (its modules, reparented to the guard)
// is killed and reaped, and the live ones fail a test whose host ended
// normally. The host creates its own backend (after
// fork() only the forking thread exists; nothing of the gtest process's other
// threads may be relied on) and reports through a pipe: HOST_CHECK and
// HOST_ASSERT lines become gtest failures at the same file and line.
#pragma once

#ifndef _WIN32

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../reliability/reliability_support.hpp"
#include "modkit/modkit.hpp"
#include "test_support.hpp"

#ifndef MODKIT_HOSTILE_CHILD_PATH
#error "MODKIT_HOSTILE_CHILD_PATH must name the hostile_child program (tests/CMakeLists.txt defines it)"
#endif

namespace modkit::testing::forked {

using Ms = std::chrono::milliseconds;

// ---------------------------------------------------------------------------
// Configs and options
// ---------------------------------------------------------------------------

inline std::string hostile_child_path() { return MODKIT_HOSTILE_CHILD_PATH; }

/// A config that runs hostile_child with `script` (see hostile_child.cpp).
inline OopModuleConfig hostile_config(const std::string& module, std::vector<std::string> script) {
  OopModuleConfig config(module, BackendKind::LocalProcess);
  config.binary = hostile_child_path();
  config.args = std::move(script);
  return config;
}

/// Short graces, drain and kill timeouts: every bound of the contract is then
/// G + K + 2*D = 2 s.
inline LocalProcessOptions short_options() {
  LocalProcessOptions options;
  options.stop_grace = Ms(500);
  options.shutdown_grace = Ms(500);
  options.drain_timeout = Ms(500);
  options.kill_timeout = Ms(500);
  return options;
}

/// The header's bound for stop_instance, wait_for_shutdown and the
/// destructor, G + K + 2*D, plus `slack` for scheduling on a shared machine.
inline double contract_bound_s(const LocalProcessOptions& options, std::chrono::milliseconds grace,
                               Ms slack = Ms(1000)) {
  auto total = grace + options.kill_timeout + 2 * options.drain_timeout + slack;
  return std::chrono::duration<double>(total).count();
}
inline double stop_bound_s(const LocalProcessOptions& options) { return contract_bound_s(options, options.stop_grace); }
inline double shutdown_bound_s(const LocalProcessOptions& options) {
  return contract_bound_s(options, options.shutdown_grace);
}

inline std::string lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// ---------------------------------------------------------------------------
// Host side: reporting
// ---------------------------------------------------------------------------

/// Exit code of a host stopped by a failed HOST_ASSERT.
constexpr int kHostAssertExit = 3;

inline int& host_report_fd() {
  static int fd = -1;
  return fd;
}

/// One report line, written with a single write() (atomic below PIPE_BUF):
/// kind, file, line, text, separated by tabs.
inline void host_send(char kind, const char* file, int line, std::string text) {
  for (auto& c : text) {
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  }
  if (text.size() > 3000) text.resize(3000);
  std::string message;
  message += kind;
  message += '\t';
  message += file ? file : "";
  message += '\t';
  message += std::to_string(line);
  message += '\t';
  message += text;
  message += '\n';
  int fd = host_report_fd();
  if (fd < 0) {
    std::fputs(message.c_str(), stderr);
    return;
  }
  std::size_t done = 0;
  while (done < message.size()) {
    ssize_t count = write(fd, message.data() + done, message.size() - done);
    if (count < 0 && errno == EINTR) continue;
    if (count <= 0) return;
    done += static_cast<std::size_t>(count);
  }
}

/// Collects a message with << and sends it when the statement ends; a fatal
/// one then ends the host (its modules are cleaned up by the guard).
class HostMessage {
 public:
  HostMessage(char kind, const char* file, int line, const char* condition) : kind_(kind), file_(file), line_(line) {
    if (condition != nullptr && *condition != '\0') text_ << "check failed: " << condition << ". ";
  }
  HostMessage(const HostMessage&) = delete;
  HostMessage& operator=(const HostMessage&) = delete;
  ~HostMessage() {
    host_send(kind_ == 'A' ? 'F' : kind_, file_, line_, text_.str());
    if (kind_ == 'A') _exit(kHostAssertExit);
    if (kind_ == 'S') _exit(0);
  }
  template <typename T>
  HostMessage& operator<<(const T& value) {
    text_ << value;
    return *this;
  }

 private:
  char kind_;
  const char* file_;
  int line_;
  std::ostringstream text_;
};

}  // namespace modkit::testing::forked

#define MODKIT_HOST_BLOCKER_ \
  switch (0)                 \
  case 0:                    \
  default:

/// Like EXPECT_TRUE inside a forked host: a failure is reported, the host goes on.
#define HOST_CHECK(condition) \
  MODKIT_HOST_BLOCKER_        \
  if (condition) {            \
  } else                      \
    ::modkit::testing::forked::HostMessage('F', __FILE__, __LINE__, #condition)

/// Like ASSERT_TRUE inside a forked host: a failure is reported and the host
/// exits at once (the guard kills and reaps what it left).
#define HOST_ASSERT(condition) \
  MODKIT_HOST_BLOCKER_         \
  if (condition) {             \
  } else                       \
    ::modkit::testing::forked::HostMessage('A', __FILE__, __LINE__, #condition)

/// An unconditional failure; the host goes on.
#define HOST_FAIL() ::modkit::testing::forked::HostMessage('F', __FILE__, __LINE__, nullptr)

/// An unconditional failure that ends the host.
#define HOST_FATAL() ::modkit::testing::forked::HostMessage('A', __FILE__, __LINE__, nullptr)

/// A note printed by the test (figures, what was observed).
#define HOST_NOTE() ::modkit::testing::forked::HostMessage('N', __FILE__, __LINE__, nullptr)

/// Ends the host and makes the test skip with the message.
#define HOST_SKIP() ::modkit::testing::forked::HostMessage('S', __FILE__, __LINE__, nullptr)

namespace modkit::testing::forked {

// ---------------------------------------------------------------------------
// Host side: waiting and looking at processes
// ---------------------------------------------------------------------------

inline double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

/// Polls `done` every few milliseconds until it holds or `timeout` passed.
inline bool wait_until(const std::function<bool()>& done, Ms timeout) {
  auto until = Clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (Clock::now() >= until) return false;
    std::this_thread::sleep_for(Ms(2));
  }
}

/// The state letter of /proc/PID/stat ('R', 'S', 'T', 'Z', ...), or 0 when gone.
inline char process_state(pid_t pid) {
  ProcInfo info;
  return read_proc(pid, info) ? info.state : 0;
}

/// Waits until this process has `count` threads; false on timeout.
inline bool wait_for_thread_count(int count, Ms timeout) {
  return wait_until([&] { return thread_count() == count; }, timeout);
}

/// Threads of the host before its scenario started: 1, or 2 when a sanitizer
/// runs a thread of its own.
inline int& host_baseline_threads() {
  static int count = 1;
  return count;
}

/// Waits until the host is back to the threads it had before the scenario:
/// every thread modkit started has ended.
inline bool wait_host_threads_back(Ms timeout) { return wait_for_thread_count(host_baseline_threads(), timeout); }

/// Waits (up to `timeout`) until the thread count has held still for 50 ms.
inline int settled_thread_count(Ms timeout) {
  auto until = Clock::now() + timeout;
  int last = thread_count();
  auto since = Clock::now();
  while (Clock::now() < until) {
    std::this_thread::sleep_for(Ms(5));
    int now = thread_count();
    if (now != last) {
      last = now;
      since = Clock::now();
    } else if (Clock::now() - since >= Ms(50)) {
      break;
    }
  }
  return last;
}

/// Waits until this process has no child left, not even a zombie.
inline bool wait_no_children(Ms timeout) {
  return wait_until([] { return children_of_self().empty(); }, timeout);
}

/// Tasks (threads and processes, zombies included) whose real uid is `uid`:
/// what RLIMIT_NPROC counts for that user.
inline int tasks_of_real_uid(uid_t uid) {
  int count = 0;
  DIR* procs = opendir("/proc");
  if (procs == nullptr) return -1;
  while (dirent* proc = readdir(procs)) {
    if (proc->d_name[0] < '0' || proc->d_name[0] > '9') continue;
    std::string task_dir = std::string("/proc/") + proc->d_name + "/task";
    DIR* tasks = opendir(task_dir.c_str());
    if (tasks == nullptr) continue;
    while (dirent* task = readdir(tasks)) {
      if (task->d_name[0] < '0' || task->d_name[0] > '9') continue;
      std::ifstream status(task_dir + "/" + task->d_name + "/status");
      std::string line;
      while (std::getline(status, line)) {
        if (line.compare(0, 4, "Uid:") != 0) continue;
        if (std::strtoul(line.c_str() + 4, nullptr, 10) == uid) ++count;
        break;
      }
    }
    closedir(tasks);
  }
  closedir(procs);
  return count;
}

/// The unprivileged user the thread-limit tests run as (root ignores
/// RLIMIT_NPROC).
constexpr uid_t kNobody = 65534;

/// In a forked host running as root: becomes uid/gid 65534 for good (real,
/// effective and saved), so RLIMIT_NPROC applies. False when not permitted.
inline bool drop_to_nobody() {
  if (setgroups(0, nullptr) != 0) return false;
  if (setresgid(kNobody, kNobody, kNobody) != 0) return false;
  if (setresuid(kNobody, kNobody, kNobody) != 0) return false;
  return getuid() == kNobody && geteuid() == kNobody;
}

/// Sets RLIMIT_NPROC's soft limit (the hard one is left, so it can be raised
/// back); false on failure.
inline bool set_nproc_soft_limit(rlim_t soft) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NPROC, &limit) != 0) return false;
  if (limit.rlim_max != RLIM_INFINITY && soft > limit.rlim_max) return false;
  limit.rlim_cur = soft;
  return setrlimit(RLIMIT_NPROC, &limit) == 0;
}

inline bool restore_nproc_soft_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NPROC, &limit) != 0) return false;
  limit.rlim_cur = limit.rlim_max;
  return setrlimit(RLIMIT_NPROC, &limit) == 0;
}

/// True when no new thread can be started (pthread_create fails with EAGAIN).
inline bool thread_creation_refused() {
  pthread_t thread;
  int error = pthread_create(
      &thread, nullptr, [](void*) -> void* { return nullptr; }, nullptr);
  if (error == 0) {
    pthread_join(thread, nullptr);
    return false;
  }
  return error == EAGAIN;
}

// ---------------------------------------------------------------------------
// Sinks and exit logs usable from any thread of the host
// ---------------------------------------------------------------------------

struct Rec {
  std::string module;
  std::string instance_id;
  LogStream stream;
  LogLevel level;
  std::string line;
};

/// Keeps every record, then hands it to an optional hook (outside its lock),
/// which may block, throw, or call back into the backend.
class RecordingSink : public LogSink {
 public:
  using Hook = std::function<void(const LogRecord&)>;
  RecordingSink() = default;
  explicit RecordingSink(Hook hook) : hook_(std::move(hook)) {}

  void write(const LogRecord& record) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      records_.push_back({std::string(record.module), std::string(record.instance_id), record.stream, record.level,
                          std::string(record.line)});
      changed_.notify_all();
    }
    if (hook_) hook_(record);
  }

  std::vector<Rec> records() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return records_;
  }

  bool wait_for(const std::function<bool(const Rec&)>& match, Ms timeout) const {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return std::any_of(records_.begin(), records_.end(), match); });
  }

  bool wait_for_line(const std::string& instance_id, const std::string& text, Ms timeout) const {
    return wait_for([&](const Rec& r) { return r.instance_id == instance_id && r.line == text; }, timeout);
  }

  /// Library records whose text contains `text`, compared case-insensitively.
  std::vector<std::string> library_lines_containing(const std::string& text) const {
    std::vector<std::string> found;
    std::string wanted = lower(text);
    for (const auto& r : records()) {
      if (r.stream == LogStream::Library && lower(r.line).find(wanted) != std::string::npos) found.push_back(r.line);
    }
    return found;
  }

  bool wait_for_library_containing(const std::string& text, Ms timeout) const {
    std::string wanted = lower(text);
    return wait_for(
        [&](const Rec& r) { return r.stream == LogStream::Library && lower(r.line).find(wanted) != std::string::npos; },
        timeout);
  }

  /// Every library record, one per line, for failure messages.
  std::string library_dump() const {
    std::string text;
    for (const auto& r : records()) {
      if (r.stream != LogStream::Library) continue;
      text += "[" + std::string(to_string(r.level)) + "] " + r.line + " | ";
    }
    return text;
  }

 private:
  Hook hook_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::vector<Rec> records_;
};

/// A sink whose call blocks on one child line (for up to `max_block`, or until
/// released); every other record passes at once.
class BlockingSink final : public LogSink {
 public:
  BlockingSink(std::string block_on, Ms max_block) : block_on_(std::move(block_on)), max_block_(max_block) {}

  void write(const LogRecord& record) override {
    recorder_.write(record);
    if (record.stream == LogStream::Library || record.line != block_on_) return;
    std::unique_lock<std::mutex> lock(mutex_);
    ++entered_;
    changed_.notify_all();
    changed_.wait_for(lock, max_block_, [&] { return released_; });
    ++returned_;
    changed_.notify_all();
  }

  bool wait_entered(Ms timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return entered_ > 0; });
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    changed_.notify_all();
  }
  /// True once every blocked call has returned.
  bool wait_all_returned(Ms timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return returned_ == entered_; });
  }
  const RecordingSink& recorder() const { return recorder_; }

 private:
  RecordingSink recorder_;
  const std::string block_on_;
  const Ms max_block_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int entered_ = 0;
  int returned_ = 0;
  bool released_ = false;
};

/// What on_exit reported, waitable.
class ExitRecorder {
 public:
  void record(const InstanceHandle& handle, const ExitStatus& status) {
    std::lock_guard<std::mutex> lock(mutex_);
    exits_.emplace_back(handle.instance_id, status);
    changed_.notify_all();
  }
  std::function<void(const InstanceHandle&, const ExitStatus&)> callback() {
    return [this](const InstanceHandle& handle, const ExitStatus& status) { record(handle, status); };
  }
  std::optional<ExitStatus> wait_for(const std::string& instance_id, Ms timeout) {
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
  std::vector<std::string> ids() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> result;
    for (const auto& entry : exits_) result.push_back(entry.first);
    return result;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<std::string, ExitStatus>> exits_;
};

/// A one-shot result handed from a callback thread to the host's main thread.
template <typename T>
class Handoff {
 public:
  void set(T value) {
    std::lock_guard<std::mutex> lock(mutex_);
    value_ = std::move(value);
    changed_.notify_all();
  }
  std::optional<T> wait(Ms timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return value_.has_value(); });
    return value_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<T> value_;
};

inline std::string describe(const std::optional<ExitStatus>& status) {
  if (!status) return "no status";
  std::ostringstream text;
  text << *status << (status->forced ? " (forced)" : "");
  return text.str();
}

inline bool is_sigterm_exit(const ExitStatus& status) {
  return status.kind == ExitStatus::Kind::Signaled && status.code == SIGTERM && !status.forced;
}

/// In a host: a backend from LocalProcessBackend::create, or a fatal failure.
inline std::unique_ptr<LocalProcessBackend> create_backend(CancellationToken token, std::shared_ptr<LogSink> sink,
                                                           LocalProcessOptions options) {
  auto created = LocalProcessBackend::create(std::move(token), std::move(sink), std::move(options));
  if (!created) HOST_FATAL() << "LocalProcessBackend::create failed: " << created.error();
  return std::move(*created);
}

/// In a host: the module's pid (modkit's children are ours to signal while
/// they are unreaped).
inline pid_t pid_of(const InstanceHandle& handle) { return handle.pid ? static_cast<pid_t>(*handle.pid) : -1; }

// ---------------------------------------------------------------------------
// The gtest side: fork the guard and the host, collect the outcome
// ---------------------------------------------------------------------------

#if defined(__SANITIZE_THREAD__)
constexpr int kSanitizerThreads = 1;  // ThreadSanitizer's background thread
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr int kSanitizerThreads = 1;
#else
constexpr int kSanitizerThreads = 0;
#endif
#else
constexpr int kSanitizerThreads = 0;
#endif

struct HostOutcome {
  struct Failure {
    std::string file;
    int line = 0;
    std::string text;
  };
  std::vector<Failure> failures;
  std::vector<std::string> notes;
  std::optional<std::string> skipped;
  bool finished = false;   ///< the scenario ran to its end
  bool timed_out = false;  ///< killed by the watchdog
  bool exited = false;
  int exit_code = -1;
  int signal_number = 0;
  double seconds = 0;
  int leftovers = 0;  ///< live processes the host left behind (killed by the guard)
  std::string leftover_text;
  std::string harness_error;
};

namespace detail {

/// Children of `parent` from /proc (zombies included).
inline std::vector<ProcInfo> children_of(pid_t parent) {
  std::vector<ProcInfo> result;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return result;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    ProcInfo info;
    if (read_proc(static_cast<pid_t>(std::atoi(entry->d_name)), info) && info.ppid == parent) result.push_back(info);
  }
  closedir(dir);
  return result;
}

[[noreturn]] inline void guard_main(int report_fd, pid_t gtest_pid, Ms timeout, const std::function<void()>& body) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != gtest_pid) _exit(1);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  host_report_fd() = report_fd;
  pid_t guard_pid = getpid();
  auto start = Clock::now();
  pid_t host = fork();
  if (host < 0) {
    host_send('E', "", 0, std::string("fork of the host failed: ") + std::strerror(errno));
    _exit(0);
  }
  if (host == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != guard_pid) _exit(1);
    // ThreadSanitizer starts a thread of its own at the first pthread_create:
    // get it running before the baseline.
    std::thread([] {}).join();
    host_baseline_threads() = settled_thread_count(Ms(1000));
    body();
    host_send('D', "", 0, "");
    _exit(0);
  }
  int status = 0;
  bool timed_out = false;
  auto deadline = start + timeout;
  for (;;) {
    pid_t got = waitpid(host, &status, WNOHANG);
    if (got == host) break;
    if (got < 0 && errno != EINTR) {
      host_send('E', "", 0, std::string("waitpid on the host failed: ") + std::strerror(errno));
      _exit(0);
    }
    if (Clock::now() >= deadline) {
      kill(host, SIGKILL);  // our own unreaped child
      while (waitpid(host, &status, 0) < 0 && errno == EINTR) {
      }
      timed_out = true;
      break;
    }
    std::this_thread::sleep_for(Ms(2));
  }
  double elapsed = seconds_between(start, Clock::now());
  std::ostringstream verdict;
  if (timed_out) {
    verdict << "timeout " << elapsed;
  } else if (WIFSIGNALED(status)) {
    verdict << "signal " << WTERMSIG(status) << " " << elapsed;
  } else {
    verdict << "exit " << WEXITSTATUS(status) << " " << elapsed;
  }
  host_send('H', "", 0, verdict.str());

  // What the host left: its orphans are ours now (we are their subreaper).
  // All of them were started for this scenario, and an unreaped child's pid
  // cannot be reused, so killing them by pid is safe. Only live ones count as
  // left behind: a module's descendant that died after its parent (a killed
  // grandchild) is a zombie of ours, not of the host.
  std::set<pid_t> alive_seen;
  std::string described;
  for (int round = 0; round < 500; ++round) {
    auto children = children_of(guard_pid);
    if (children.empty()) break;
    for (const auto& child : children) {
      if (child.state == 'Z') continue;
      if (alive_seen.insert(child.pid).second) {
        described += std::to_string(child.pid) + "(" + child.state + ") ";
      }
      kill(child.pid, SIGKILL);
    }
    int ignored;
    while (waitpid(-1, &ignored, WNOHANG) > 0) {
    }
    std::this_thread::sleep_for(Ms(10));
  }
  host_send('L', "", static_cast<int>(alive_seen.size()), described);
  _exit(0);
}

inline void parse_report(const std::string& text, HostOutcome& outcome) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    std::vector<std::string> fields;
    std::size_t begin = 0;
    for (int k = 0; k < 3; ++k) {
      std::size_t tab = line.find('\t', begin);
      if (tab == std::string::npos) break;
      fields.push_back(line.substr(begin, tab - begin));
      begin = tab + 1;
    }
    if (fields.size() != 3) {
      outcome.harness_error += "unparsed report line: " + line + "; ";
      continue;
    }
    std::string message = line.substr(begin);
    char kind = fields[0].empty() ? '?' : fields[0][0];
    int number = std::atoi(fields[2].c_str());
    switch (kind) {
      case 'F':
        outcome.failures.push_back({fields[1], number, message});
        break;
      case 'N':
        outcome.notes.push_back(message);
        break;
      case 'S':
        outcome.skipped = message;
        break;
      case 'D':
        outcome.finished = true;
        break;
      case 'E':
        outcome.harness_error += message + "; ";
        break;
      case 'H': {
        std::istringstream words(message);
        std::string what;
        words >> what;
        if (what == "timeout") {
          outcome.timed_out = true;
          words >> outcome.seconds;
        } else if (what == "signal") {
          words >> outcome.signal_number >> outcome.seconds;
        } else {
          outcome.exited = true;
          words >> outcome.exit_code >> outcome.seconds;
        }
        break;
      }
      case 'L':
        outcome.leftovers = number;
        outcome.leftover_text = message;
        break;
      default:
        outcome.harness_error += "unknown report line: " + line + "; ";
    }
  }
}

}  // namespace detail

/// Runs `body` in a forked host under a watchdog of `timeout` (see the top of
/// this file) and returns what happened. Bounded: the host is killed at
/// `timeout`, the guard a few seconds later if it does not finish by itself.
inline HostOutcome run_in_host(Ms timeout, const std::function<void()>& body) {
  HostOutcome outcome;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    outcome.harness_error = std::string("pipe2: ") + std::strerror(errno);
    return outcome;
  }
  // fork() copies only the calling thread: a lock another thread holds stays
  // held in the copy (and ThreadSanitizer refuses new threads after a
  // multi-threaded fork). Earlier tests' threads normally are gone by now.
  int threads = thread_count();
  wait_until([&] { return (threads = thread_count()) <= kSanitizerThreads + 1; }, Ms(3000));
  if (threads > kSanitizerThreads + 1) {
    outcome.notes.push_back("the test process has " + std::to_string(threads) + " threads at fork()");
  }
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t gtest_pid = getpid();
  pid_t guard = fork();
  if (guard < 0) {
    outcome.harness_error = std::string("fork: ") + std::strerror(errno);
    close(fds[0]);
    close(fds[1]);
    return outcome;
  }
  if (guard == 0) {
    close(fds[0]);
    detail::guard_main(fds[1], gtest_pid, timeout, body);
  }
  close(fds[1]);
  std::string text;
  auto deadline = Clock::now() + timeout + Ms(20000);
  for (;;) {
    auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now()).count();
    if (left <= 0) {
      outcome.harness_error += "the guard did not finish in time; ";
      break;
    }
    pollfd entry{fds[0], POLLIN, 0};
    int ready = poll(&entry, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char buffer[4096];
    ssize_t count = read(fds[0], buffer, sizeof buffer);
    if (count < 0 && errno == EINTR) continue;
    if (count <= 0) break;  // EOF: the guard (and the host) are done
    text.append(buffer, static_cast<std::size_t>(count));
  }
  close(fds[0]);
  int status = 0;
  bool reaped = wait_until(
      [&] {
        pid_t got = waitpid(guard, &status, WNOHANG);
        return got == guard || (got < 0 && errno != EINTR);
      },
      Ms(5000));
  if (!reaped) {
    kill(guard, SIGKILL);  // our own unreaped child: the host dies with it (PDEATHSIG)
    while (waitpid(guard, &status, 0) < 0 && errno == EINTR) {
    }
    outcome.harness_error += "the guard had to be killed; ";
  }
  detail::parse_report(text, outcome);
  return outcome;
}

/// Turns an outcome into gtest failures (and prints the host's notes); what
/// is not tied to a line of the scenario is reported at `file`:`line`.
inline void report_outcome(const HostOutcome& outcome, const char* file, int line) {
  for (const auto& note : outcome.notes) std::printf("[ host     ] %s\n", note.c_str());
  std::fflush(stdout);
  for (const auto& failure : outcome.failures) {
    ADD_FAILURE_AT(failure.file.c_str(), failure.line) << failure.text;
  }
  if (!outcome.harness_error.empty()) {
    ADD_FAILURE_AT(file, line) << "test harness: " << outcome.harness_error;
  }
  if (outcome.timed_out) {
    ADD_FAILURE_AT(file, line) << "the host hung: the watchdog killed it after " << outcome.seconds << " s";
  } else if (outcome.signal_number != 0) {
    ADD_FAILURE_AT(file, line) << "the host was killed by signal " << outcome.signal_number << " ("
                               << strsignal(outcome.signal_number) << ") after " << outcome.seconds << " s";
  } else if (outcome.exited && outcome.exit_code == kHostAssertExit) {
    // Already reported by the failed HOST_ASSERT.
  } else if (!outcome.exited) {
    if (outcome.harness_error.empty()) {
      ADD_FAILURE_AT(file, line) << "the host's end was not reported";
    }
  } else if (outcome.exit_code != 0) {
    ADD_FAILURE_AT(file, line) << "the host exited with code " << outcome.exit_code;
  } else if (!outcome.finished && !outcome.skipped) {
    ADD_FAILURE_AT(file, line) << "the host exited before the end of the scenario";
  }
  bool clean_end = outcome.exited && outcome.exit_code == 0 && !outcome.timed_out;
  if (clean_end && outcome.leftovers > 0) {
    ADD_FAILURE_AT(file, line) << outcome.leftovers
                               << " process(es) outlived the host (pid(state)): " << outcome.leftover_text;
  }
}

}  // namespace modkit::testing::forked

/// Runs the lambda given after `timeout` in a forked host with a watchdog of `timeout`, turns
/// what it reported into gtest failures, and skips the test when it asked to.
#define RUN_IN_HOST(timeout, ...)                                                                              \
  do {                                                                                                         \
    auto modkit_outcome_ = ::modkit::testing::forked::run_in_host((timeout), (__VA_ARGS__));                   \
    ::modkit::testing::forked::report_outcome(modkit_outcome_, __FILE__, __LINE__);                            \
    if (modkit_outcome_.skipped && modkit_outcome_.failures.empty()) GTEST_SKIP() << *modkit_outcome_.skipped; \
  } while (0)

#endif  // !_WIN32
