// Regression tests: exit statuses that someone else takes, and stops of
// instances that have already finished.
//
// 12. RegressionStolenExit: a host that reaps with waitpid(-1) in a SIGCHLD
//     handler took the status of modkit's children; modkit reported
//     "exited with code -1" (39 of 40). Each exit must be the true code, or
//     Kind::Unknown (code -1) with a Warn library record saying it was
//     "reaped by someone else"; stop and the destructor stay bounded.
// 14. RegressionSecondStop: a second stop_instance of a finished instance
//     returned its status again (19 of 20 right after the first stop, 20 of
//     20 from inside on_exit); the header promises an empty result.
// 15. RegressionSigchldIgnored: with SIGCHLD set to SIG_IGN, a child that
//     exits at once is gone before its pidfd is opened (ESRCH, 1 run in 5),
//     and spawn_instance failed, without naming the module. A program that
//     ran is a successful spawn; its exit is reported (Unknown or the code).
//
// Each runs in a forked host: SIGCHLD dispositions and handlers are
// process-wide, and a hang must not stall the suite.
#ifndef _WIN32

#include <gtest/gtest.h>

#include <map>

#include "regression_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::regression;
using namespace std::chrono_literals;

namespace {

constexpr auto kGrace = 500ms;
constexpr auto kKill = 1000ms;
constexpr auto kDrain = 300ms;
// The header's bound G + K + 2D, and room for scheduling on two shared cores.
constexpr auto kAllowed = kGrace + kKill + 2 * kDrain + 1500ms;

double as_seconds(std::chrono::milliseconds duration) { return std::chrono::duration<double>(duration).count(); }

LocalProcessOptions options_for(StatusLog* exits, bool use_pidfd) {
  LocalProcessOptions options;
  options.stop_grace = kGrace;
  options.shutdown_grace = kGrace;
  options.drain_timeout = kDrain;
  set_kill_timeout(options, kKill);
  if (exits) options.on_exit = exits->callback();
  options.use_pidfd = use_pidfd;
  return options;
}

/// Reports the first few failures of a loop in full, then only counts them.
class LoopFailures {
 public:
  LoopFailures(Reporter& report, const char* what) : report_(report), what_(what) {}
  void add(const std::string& text) {
    if (++count_ <= 5) report_.fail(text);
  }
  void finish(int rounds) {
    if (count_ > 0) {
      report_.fail(std::to_string(count_) + " failure(s) in " + std::to_string(rounds) + " rounds of " + what_);
    }
  }

 private:
  Reporter& report_;
  const char* what_;
  int count_ = 0;
};

/// Stops `handle` within a bound (else ends the host); returns the result and its duration.
Result<std::optional<ExitStatus>> bounded_stop(Reporter& report, LocalProcessBackend& backend,
                                               const InstanceHandle& handle, double& seconds) {
  Result<std::optional<ExitStatus>> result = std::optional<ExitStatus>();
  auto start = Clock::now();
  if (!run_bounded(20s, [&] { result = backend.stop_instance(handle); })) {
    report.fail_and_exit("stop_instance(" + handle.module + ") did not return within 20 s");
  }
  seconds = seconds_since(start);
  return result;
}

void bounded_destroy(Reporter& report, std::unique_ptr<LocalProcessBackend>& backend) {
  auto start = Clock::now();
  if (!run_bounded(2 * kAllowed, [&] { backend.reset(); })) {
    report.fail_and_exit("the backend's destructor did not return within " + seconds_text(as_seconds(2 * kAllowed)));
  }
  double seconds = seconds_since(start);
  report.check(seconds < as_seconds(kAllowed), "the destructor took " + seconds_text(seconds));
}

/// True once a Warn library record says that `handle`'s child was reaped by
/// someone else (tied to the instance, or naming its pid).
bool warned_reaped_elsewhere(const CollectingSink& sink, const InstanceHandle& handle) {
  const std::string pid = std::to_string(handle.pid.value_or(-1));
  return sink.wait_for(
      [&](const StoredRecord& r) {
        return r.stream == LogStream::Library && r.level == LogLevel::Warn &&
               r.line.find("reaped by someone else") != std::string::npos &&
               (r.instance_id == handle.instance_id || (r.instance_id.empty() && r.line.find(pid) != std::string::npos));
      },
      2000ms);
}

std::string kind_text(ExitStatus::Kind kind) {
  switch (kind) {
    case ExitStatus::Kind::Exited:
      return "Exited";
    case ExitStatus::Kind::Signaled:
      return "Signaled";
    default:
      return kind == kUnknownKind ? "Unknown" : "?";
  }
}

std::string full_text(const ExitStatus& status) {
  return "'" + text_of(status) + "' (kind " + kind_text(status.kind) + ", code " + std::to_string(status.code) + ")";
}

// --- 12. A host that reaps with waitpid(-1) ------------------------------------

std::atomic<int> g_stolen{0};

extern "C" void reap_everything(int) {
  int saved = errno;
  int status;
  while (waitpid(-1, &status, WNOHANG) > 0) g_stolen.fetch_add(1, std::memory_order_relaxed);
  errno = saved;
}

void stolen_exit_scenario(Reporter& report, bool use_pidfd) {
  struct sigaction handler {};
  handler.sa_handler = reap_everything;
  sigemptyset(&handler.sa_mask);
  handler.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  if (!report.check(sigaction(SIGCHLD, &handler, nullptr) == 0, "sigaction(SIGCHLD)")) return;

  auto sink = std::make_shared<CollectingSink>();
  StatusLog exits;
  CancellationToken token;
  auto backend = std::make_unique<LocalProcessBackend>(token, sink, options_for(&exits, use_pidfd));

  // Children that exit by themselves.
  constexpr int kRounds = 40;
  int true_codes = 0, unknown = 0;
  LoopFailures failures(report, "self-exiting children");
  for (int round = 0; round < kRounds; ++round) {
    const int code = 3 + round % 5;
    auto handle = backend->spawn_instance(child_config("stolen", {"exit", std::to_string(code)}));
    if (!handle) {
      failures.add("#" + std::to_string(round) + ": spawn_instance failed: " + text_of(handle.error()));
      continue;
    }
    auto status = exits.wait_for(handle->instance_id, 10s);
    if (!status) {
      failures.add("#" + std::to_string(round) + ": no exit reported within 10 s");
      continue;
    }
    if (status->kind == ExitStatus::Kind::Exited && status->code == code) {
      ++true_codes;
    } else if (status->kind == kUnknownKind && status->code == -1) {
      ++unknown;
      if (!warned_reaped_elsewhere(*sink, *handle)) {
        failures.add("#" + std::to_string(round) +
                     ": exit reported as Unknown, but no Warn library record says 'reaped by someone else'");
      }
    } else {
      failures.add("#" + std::to_string(round) + ": exit reported as " + full_text(*status) +
                   ", expected 'exited with code " + std::to_string(code) + "' or Kind::Unknown with code -1");
    }
    double seconds = 0;
    auto stopped = bounded_stop(report, *backend, *handle, seconds);
    if (!stopped) failures.add("#" + std::to_string(round) + ": stop_instance failed: " + text_of(stopped.error()));
  }
  failures.finish(kRounds);

  // Children that are stopped.
  constexpr int kStops = 10;
  LoopFailures stop_failures(report, "stops");
  for (int round = 0; round < kStops; ++round) {
    auto handle = backend->spawn_instance(child_config("stolen-stop", {"say", "up", "sleep", "30"}));
    if (!handle) {
      stop_failures.add("stop #" + std::to_string(round) + ": spawn_instance failed: " + text_of(handle.error()));
      continue;
    }
    if (!sink->wait_for_line(handle->instance_id, "up", 10s)) {
      stop_failures.add("stop #" + std::to_string(round) + ": the child never said 'up'");
    }
    double seconds = 0;
    auto stopped = bounded_stop(report, *backend, *handle, seconds);
    bool terminated = stopped && stopped->has_value() && (*stopped)->kind == ExitStatus::Kind::Signaled &&
                      (*stopped)->code == SIGTERM;
    bool unknown_stop = stopped && stopped->has_value() && (*stopped)->kind == kUnknownKind && (*stopped)->code == -1;
    if (unknown_stop && !warned_reaped_elsewhere(*sink, *handle)) {
      stop_failures.add("stop #" + std::to_string(round) +
                        ": status Unknown, but no Warn library record says 'reaped by someone else'");
    } else if (!terminated && !unknown_stop) {
      stop_failures.add("stop #" + std::to_string(round) + ": stop_instance returned " +
                        (stopped && stopped->has_value() ? full_text(**stopped) : describe(stopped)) +
                        ", expected 'killed by signal 15' or Kind::Unknown with code -1");
    }
    if (seconds >= as_seconds(kAllowed)) {
      stop_failures.add("stop #" + std::to_string(round) + ": stop_instance took " + seconds_text(seconds));
    }
  }
  stop_failures.finish(kStops);
  report.note("exits: " + std::to_string(true_codes) + " true code(s), " + std::to_string(unknown) +
              " Unknown; the host's handler reaped " + std::to_string(g_stolen.load()) + " child(ren)");
  bounded_destroy(report, backend);
}

// --- 14. A second stop of a finished instance ---------------------------------

enum class SecondStop { AfterFirstStop, FromOnExit };

void second_stop_scenario(Reporter& report, SecondStop part) {
  struct InsideResult {
    bool empty = false;
    std::string text;
  };
  std::mutex mutex;
  std::condition_variable changed;
  std::map<std::string, InsideResult> inside;  // by instance id
  std::atomic<LocalProcessBackend*> backend_pointer{nullptr};

  auto sink = std::make_shared<CollectingSink>();
  LocalProcessOptions options = options_for(nullptr, true);
  options.on_exit = [&](const InstanceHandle& handle, const ExitStatus&) {
    // An on_exit that takes a moment (logging, a restart decision) keeps the
    // thread that reports exits busy: what a second stop returns must not
    // depend on when that thread gets round to the finished instance.
    if (handle.module == "twice") std::this_thread::sleep_for(50ms);
    if (handle.module != "self-exit") return;
    LocalProcessBackend* backend = backend_pointer.load();
    if (backend == nullptr) return;
    auto again = backend->stop_instance(handle);
    std::lock_guard<std::mutex> lock(mutex);
    inside[handle.instance_id] = InsideResult{again && !again->has_value(), describe(again)};
    changed.notify_all();
  };
  CancellationToken token;
  auto backend = std::make_unique<LocalProcessBackend>(token, sink, options);
  backend_pointer = backend.get();

  constexpr int kRounds = 20;
  // Right after a stop that returned a status.
  int right = 0;
  LoopFailures failures(report, "second stops after a first stop");
  for (int round = 0; part == SecondStop::AfterFirstStop && round < kRounds; ++round) {
    auto handle = backend->spawn_instance(child_config("twice", {"say", "up", "sleep", "30"}));
    if (!handle) {
      failures.add("#" + std::to_string(round) + ": spawn_instance failed: " + text_of(handle.error()));
      continue;
    }
    sink->wait_for_line(handle->instance_id, "up", 10s);
    double seconds = 0;
    auto first = bounded_stop(report, *backend, *handle, seconds);
    auto second = bounded_stop(report, *backend, *handle, seconds);
    if (!(first && first->has_value())) {
      failures.add("#" + std::to_string(round) + ": the first stop returned " + describe(first));
      continue;
    }
    if (second && !second->has_value()) {
      ++right;
    } else {
      failures.add("#" + std::to_string(round) + ": the second stop_instance of a stopped instance returned " +
                   describe(second) + ", expected an empty optional");
    }
  }
  failures.finish(kRounds);
  if (part == SecondStop::AfterFirstStop) {
    report.note("second stop empty in " + std::to_string(right) + " of " + std::to_string(kRounds));
  }

  // From inside on_exit, for an instance that exited by itself.
  int inside_right = 0;
  LoopFailures inside_failures(report, "stops from inside on_exit");
  for (int round = 0; part == SecondStop::FromOnExit && round < kRounds; ++round) {
    auto handle = backend->spawn_instance(child_config("self-exit", {"say", "bye", "exit", "0"}));
    if (!handle) {
      inside_failures.add("#" + std::to_string(round) + ": spawn_instance failed: " + text_of(handle.error()));
      continue;
    }
    std::unique_lock<std::mutex> lock(mutex);
    if (!changed.wait_for(lock, 10s, [&] { return inside.count(handle->instance_id) > 0; })) {
      inside_failures.add("#" + std::to_string(round) +
                          ": on_exit did not run (or its stop_instance did not return) within 10 s");
      continue;
    }
    const InsideResult& result = inside[handle->instance_id];
    if (result.empty) {
      ++inside_right;
    } else {
      inside_failures.add("#" + std::to_string(round) + ": stop_instance from inside on_exit returned " + result.text +
                          ", expected an empty optional");
    }
  }
  inside_failures.finish(kRounds);
  if (part == SecondStop::FromOnExit) {
    report.note("stop from inside on_exit empty in " + std::to_string(inside_right) + " of " +
                std::to_string(kRounds));
  }
  backend_pointer = nullptr;
  bounded_destroy(report, backend);
}

// --- 15. SIGCHLD ignored ---------------------------------------------------------

void sigchld_ignored_scenario(Reporter& report, bool use_pidfd) {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  if (!report.check(sigaction(SIGCHLD, &ignore, nullptr) == 0, "sigaction(SIGCHLD, SIG_IGN)")) return;

  auto sink = std::make_shared<CollectingSink>();
  StatusLog exits;
  CancellationToken token;
  auto backend = std::make_unique<LocalProcessBackend>(token, sink, options_for(&exits, use_pidfd));

  constexpr int kRounds = 50;
  int spawned = 0, true_codes = 0, unknown = 0;
  LoopFailures failures(report, "spawns of a program that exits at once");
  for (int round = 0; round < kRounds; ++round) {
    auto handle = backend->spawn_instance(child_config("sigign", {"exit", "3"}));
    if (!handle) {
      bool names_module = handle.error().message.find("sigign") != std::string::npos;
      failures.add("#" + std::to_string(round) + ": spawn_instance failed for a program that ran: " +
                   text_of(handle.error()) + (names_module ? "" : " (and the message does not name the module 'sigign')"));
      continue;
    }
    ++spawned;
    auto status = exits.wait_for(handle->instance_id, 10s);
    if (!status) {
      failures.add("#" + std::to_string(round) + ": no exit reported within 10 s");
    } else if (status->kind == ExitStatus::Kind::Exited && status->code == 3) {
      ++true_codes;
    } else if (status->kind == kUnknownKind && status->code == -1) {
      ++unknown;
    } else {
      failures.add("#" + std::to_string(round) + ": exit reported as " + full_text(*status) +
                   ", expected 'exited with code 3' or Kind::Unknown with code -1");
    }
    double seconds = 0;
    auto stopped = bounded_stop(report, *backend, *handle, seconds);
    if (!stopped) failures.add("#" + std::to_string(round) + ": stop_instance failed: " + text_of(stopped.error()));
  }
  failures.finish(kRounds);
  report.note(std::to_string(spawned) + " of " + std::to_string(kRounds) + " spawns succeeded; exits: " +
              std::to_string(true_codes) + " true code(s), " + std::to_string(unknown) + " Unknown");
  bounded_destroy(report, backend);
}

}  // namespace

TEST(RegressionStolenExit, HostReapingWithWaitpidMinusOneGetsTrueCodeOrUnknownWithWarning) {
  auto run = run_forked(90s, [](Reporter& report) { stolen_exit_scenario(report, true); });
  MODKIT_EXPECT_HOST_PASSED(run);
}

TEST(RegressionStolenExit, HostReapingWithWaitpidMinusOneGetsTrueCodeOrUnknownWithWarningWaiterThreads) {
  auto run = run_forked(90s, [](Reporter& report) { stolen_exit_scenario(report, false); });
  MODKIT_EXPECT_HOST_PASSED(run);
}

// After stop_instance returned a status, the instance is finished: stopping
// it again is not an error and returns nothing.
TEST(RegressionSecondStop, SecondStopOfAStoppedInstanceReturnsEmpty) {
  auto run = run_forked(90s, [](Reporter& report) { second_stop_scenario(report, SecondStop::AfterFirstStop); });
  MODKIT_EXPECT_HOST_PASSED(run);
}

// on_exit reports an instance that exited by itself: it is finished, and a
// stop_instance of it from inside on_exit returns nothing.
TEST(RegressionSecondStop, StopFromOnExitOfAnInstanceThatExitedReturnsEmpty) {
  auto run = run_forked(90s, [](Reporter& report) { second_stop_scenario(report, SecondStop::FromOnExit); });
  MODKIT_EXPECT_HOST_PASSED(run);
}

TEST(RegressionSigchldIgnored, ProgramThatRanIsASuccessfulSpawnWithItsExitReported) {
  auto run = run_forked(90s, [](Reporter& report) { sigchld_ignored_scenario(report, true); });
  MODKIT_EXPECT_HOST_PASSED(run);
}

TEST(RegressionSigchldIgnored, ProgramThatRanIsASuccessfulSpawnWithItsExitReportedWaiterThreads) {
  auto run = run_forked(90s, [](Reporter& report) { sigchld_ignored_scenario(report, false); });
  MODKIT_EXPECT_HOST_PASSED(run);
}

#endif  // !_WIN32
