// Helpers for the regression tests (Linux): each scenario runs in a forked
// process (the "host") under a watchdog, so that a hang, a stray kill or a
// process-wide setting (SIGCHLD disposition, uid, pid namespace) cannot reach
// the test executable. The host reports through a pipe, one line at a time:
// "note: ..." (shown), "FAIL: ..." (a failed expectation), "SKIP: ...".
//
// After fork() the host is single-threaded and may create a backend; it never
// returns into GoogleTest: it ends with _exit().
#pragma once

#ifndef _WIN32

#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "collecting_sink.hpp"
#include "modkit/modkit.hpp"
#include "test_support.hpp"

namespace modkit::testing::regression {

// --- What the new API has and c31190c lacked (the only lines to adapt there) --

/// ExitStatus::Kind::Unknown (an exit whose status someone else took).
constexpr ExitStatus::Kind kUnknownKind = ExitStatus::Kind::Unknown;
inline void set_kill_timeout(LocalProcessOptions& options, std::chrono::milliseconds timeout) {
  options.kill_timeout = timeout;
}

// --- Reporting from the forked host -----------------------------------------

constexpr int kSkipExitCode = 77;

/// Writes report lines to the pipe the test reads. Thread-safe (one write()
/// per line, shorter than PIPE_BUF).
class Reporter {
 public:
  explicit Reporter(int fd) : fd_(fd) {}
  int fd() const { return fd_; }
  void note(const std::string& text) { write_line("note: " + text); }
  void fail(const std::string& text) {
    failed_ = true;
    write_line("FAIL: " + text);
  }
  /// fail(text) unless `condition`; returns `condition`.
  bool check(bool condition, const std::string& text) {
    if (!condition) fail(text);
    return condition;
  }
  void skip(const std::string& reason) {
    skipped_ = true;
    write_line("SKIP: " + reason);
  }
  bool failed() const { return failed_; }
  int exit_code() const { return failed_ ? 1 : skipped_ ? kSkipExitCode : 0; }
  /// A bound was exceeded: report it and end the host now (modkit's threads
  /// may still use what the scenario's stack holds, so it cannot unwind).
  [[noreturn]] void fail_and_exit(const std::string& text) {
    fail(text);
    _exit(1);
  }

 private:
  void write_line(std::string text) {
    if (text.size() > 3000) text = text.substr(0, 3000) + "...";
    text.push_back('\n');
    std::size_t done = 0;
    while (done < text.size()) {
      ssize_t count = ::write(fd_, text.data() + done, text.size() - done);
      if (count < 0 && errno == EINTR) continue;
      if (count <= 0) return;
      done += static_cast<std::size_t>(count);
    }
  }
  int fd_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> skipped_{false};
};

template <typename T>
std::string text_of(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

inline std::string describe(const Result<std::optional<ExitStatus>>& result) {
  if (!result) return "error: " + text_of(result.error());
  if (!result->has_value()) return "an empty optional";
  return "status '" + text_of(**result) + "' (forced " + (((*result)->forced) ? "true" : "false") + ")";
}

inline std::string seconds_text(double seconds) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f s", seconds);
  return buffer;
}

/// A call running on a detached thread of its own, waited for with a bound.
/// After a time-out the host must end (Reporter::fail_and_exit): the call may
/// still be using what the scenario's stack holds.
class BackgroundCall {
 public:
  template <typename Work>
  explicit BackgroundCall(Work work) : state_(std::make_shared<State>()) {
    std::thread([state = state_, work = std::move(work)]() mutable {
      work();
      std::lock_guard<std::mutex> lock(state->mutex);
      state->done = true;
      state->done_changed.notify_all();
    }).detach();
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->done;
  }
  bool wait_for(std::chrono::milliseconds timeout) const {
    std::unique_lock<std::mutex> lock(state_->mutex);
    return state_->done_changed.wait_for(lock, timeout, [&] { return state_->done; });
  }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable done_changed;
    bool done = false;
  };
  std::shared_ptr<State> state_;
};

/// Runs `work` on its own thread and waits up to `timeout` for it; false on
/// time-out (then see BackgroundCall).
template <typename Work>
bool run_bounded(std::chrono::milliseconds timeout, Work work) {
  return BackgroundCall(std::move(work)).wait_for(timeout);
}

// --- Sinks and exit logs ------------------------------------------------------

/// Keeps every record (a CollectingSink), but holds each stdout record of one
/// module until open() is called (or `max_hold` has passed, so a scenario can
/// never hang on it): a slow sink whose slowness the test controls. The
/// module's output then cannot drain by the stop's deadline.
class GatedSink final : public LogSink {
 public:
  explicit GatedSink(std::string gated_module, std::chrono::milliseconds max_hold = std::chrono::seconds(20))
      : gated_module_(std::move(gated_module)), max_hold_(max_hold) {}

  void write(const LogRecord& record) override {
    if (record.stream == LogStream::Stdout && record.module == gated_module_) {
      std::unique_lock<std::mutex> lock(mutex_);
      ++held_;
      gate_.wait_for(lock, max_hold_, [&] { return open_; });
    }
    records_.write(record);
  }

  void open() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
    gate_.notify_all();
  }
  /// How many records have reached the gate so far.
  int held() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }
  const CollectingSink& records() const { return records_; }

 private:
  const std::string gated_module_;
  const std::chrono::milliseconds max_hold_;
  mutable std::mutex mutex_;
  std::condition_variable gate_;
  bool open_ = false;
  int held_ = 0;
  CollectingSink records_;
};

/// Collects what on_exit reports; must outlive the backend.
class StatusLog {
 public:
  std::function<void(const InstanceHandle&, const ExitStatus&)> callback() {
    return [this](const InstanceHandle& handle, const ExitStatus& status) {
      std::lock_guard<std::mutex> lock(mutex_);
      exits_.emplace_back(handle.instance_id, status);
      changed_.notify_all();
    };
  }
  std::optional<ExitStatus> wait_for(const std::string& instance_id,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
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
  std::size_t count_for(const std::string& instance_id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t n = 0;
    for (const auto& entry : exits_) n += entry.first == instance_id ? 1 : 0;
    return n;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<std::string, ExitStatus>> exits_;
};

/// True while `pid` exists and is not a zombie (from /proc/PID/stat).
inline bool alive_not_zombie(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(file, text)) return false;
  auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return false;
  char state = text[close + 2];
  return state != 'Z' && state != 'X';
}

// --- Running a scenario in a forked host ------------------------------------

struct ForkedRun {
  bool forked = false;
  bool timed_out = false;
  int exit_code = -1;  ///< when it exited
  int signal = 0;      ///< when a signal ended it
  std::string report;
  double seconds = 0;

  bool skipped() const { return !timed_out && exit_code == kSkipExitCode; }
  std::string skip_reason() const {
    auto at = report.find("SKIP: ");
    return at == std::string::npos ? "skipped" : report.substr(at + 6, report.find('\n', at) - at - 6);
  }
  std::string failures() const {
    std::string result;
    std::istringstream lines(report);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("FAIL: ", 0) == 0) result += "  " + line + "\n";
    }
    return result;
  }
};

enum class HostKind {
  Plain,              ///< a fork of the test process
  PidNamespaceInit,   ///< pid 1 of a new pid namespace, with its own mount namespace and /proc
};

namespace detail {

inline int run_body(int report_fd, const std::function<void(Reporter&)>& body) {
  Reporter reporter(report_fd);
  body(reporter);
  return reporter.exit_code();
}

// In the forked child: enter new pid and mount namespaces, fork their init,
// which mounts a private /proc and runs the body; this process only waits for
// it. If this process is killed (the watchdog), the init gets SIGKILL (parent
// death signal), and with it every process of the namespace.
inline int run_in_pid_namespace(int report_fd, const std::function<void(Reporter&)>& body) {
  Reporter reporter(report_fd);
  if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0) {
    reporter.skip(std::string("cannot create a pid namespace (unshare: ") + std::strerror(errno) + ")");
    return kSkipExitCode;
  }
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) != 0) {
    reporter.fail(std::string("pipe2: ") + std::strerror(errno));
    return 1;
  }
  pid_t init = fork();
  if (init < 0) {
    reporter.fail(std::string("fork into the pid namespace: ") + std::strerror(errno));
    return 1;
  }
  if (init == 0) {
    close(alive[1]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    pollfd parent{alive[0], POLLIN, 0};
    if (poll(&parent, 1, 0) != 0) _exit(1);  // the waiting parent is already gone
    if (getpid() != 1) {
      reporter.fail("not pid 1 of the new namespace: " + std::to_string(getpid()));
      _exit(1);
    }
    if (mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
      reporter.skip(std::string("cannot mount a private /proc in the pid namespace: ") + std::strerror(errno));
      _exit(kSkipExitCode);
    }
    _exit(run_body(report_fd, body));
  }
  close(alive[0]);
  int status = 0;
  while (waitpid(init, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  reporter.fail("the namespace's init was killed by signal " + std::to_string(WTERMSIG(status)));
  return 1;
}

}  // namespace detail

/// Forks a host that runs `body`, and waits up to `timeout` for it (then kills
/// it with SIGKILL and reaps it). Returns what it reported and how it ended.
inline ForkedRun run_forked(std::chrono::milliseconds timeout, std::function<void(Reporter&)> body,
                            HostKind kind = HostKind::Plain) {
  ForkedRun run;
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    run.report = std::string("FAIL: pipe2: ") + std::strerror(errno) + "\n";
    return run;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  auto start = Clock::now();
  pid_t pid = fork();
  if (pid < 0) {
    run.report = std::string("FAIL: fork: ") + std::strerror(errno) + "\n";
    close(report[0]);
    close(report[1]);
    return run;
  }
  if (pid == 0) {
    close(report[0]);
    int code = kind == HostKind::Plain ? detail::run_body(report[1], body)
                                       : detail::run_in_pid_namespace(report[1], body);
    _exit(code);
  }
  close(report[1]);
  run.forked = true;
  // The report pipe may stay open in processes the host forked (they inherit
  // it), so the end of the host, not EOF, ends the wait.
  auto deadline = start + timeout;
  bool eof = false;
  int status = 0;
  char buffer[4096];
  for (;;) {
    if (!eof) {
      pollfd readable{report[0], POLLIN, 0};
      if (poll(&readable, 1, 20) > 0) {
        ssize_t count = read(report[0], buffer, sizeof buffer);
        if (count > 0) run.report.append(buffer, static_cast<std::size_t>(count));
        if (count == 0) eof = true;
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (Clock::now() > deadline) {
      run.timed_out = true;
      kill(pid, SIGKILL);  // our own child, unreaped: its pid cannot have been reused
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
  }
  fcntl(report[0], F_SETFL, O_NONBLOCK);
  for (;;) {
    ssize_t count = read(report[0], buffer, sizeof buffer);
    if (count <= 0) break;
    run.report.append(buffer, static_cast<std::size_t>(count));
  }
  close(report[0]);
  run.seconds = seconds_since(start);
  if (WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) run.signal = WTERMSIG(status);
  return run;
}

/// Prints what the host reported, prefixed, for the test log.
inline void print_report(const ForkedRun& run) {
  std::istringstream lines(run.report);
  std::string line;
  while (std::getline(lines, line)) std::printf("[ host     ] %s\n", line.c_str());
  std::printf("[ host     ] ended after %.2f s: %s\n", run.seconds,
              run.timed_out ? "TIMED OUT, killed"
              : run.signal   ? ("killed by signal " + std::to_string(run.signal)).c_str()
                             : ("exit code " + std::to_string(run.exit_code)).c_str());
  std::fflush(stdout);
}

}  // namespace modkit::testing::regression

/// In a TEST body: prints the host's report, skips if it skipped, and fails
/// with its FAIL lines, a time-out or an unexpected end.
#define MODKIT_EXPECT_HOST_PASSED(run)                                                                     \
  do {                                                                                                     \
    const auto& modkit_run_ = (run);                                                                       \
    ::modkit::testing::regression::print_report(modkit_run_);                                              \
    ASSERT_TRUE(modkit_run_.forked) << modkit_run_.report;                                                 \
    if (modkit_run_.skipped()) GTEST_SKIP() << modkit_run_.skip_reason();                                  \
    EXPECT_EQ(modkit_run_.failures(), "") << "the host reported failures";                                \
    EXPECT_FALSE(modkit_run_.timed_out) << "the host did not finish within " << modkit_run_.seconds       \
                                        << " s and was killed (report above)";                            \
    EXPECT_EQ(modkit_run_.signal, 0) << "the host was killed by signal " << modkit_run_.signal             \
                                     << " (report above)";                                                 \
    if (!modkit_run_.timed_out && modkit_run_.signal == 0 && modkit_run_.failures().empty()) {             \
      EXPECT_EQ(modkit_run_.exit_code, 0) << "the host reported no failure but ended with this code: a "     \
                                          << "sanitizer report (TSan: 66) or a crash? See its stderr above";  \
    }                                                                                                      \
  } while (0)

#endif  // !_WIN32
