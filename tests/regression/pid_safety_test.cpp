// Regression tests: stopping one module must never signal a process modkit
// did not start, nor one it started that is not this module's.
//
// 1. RegressionPidReuse: when the output had not drained by the deadline (a
//    slow sink), the stop path sent kill(-pgid, SIGKILL) after the leader had
//    been reaped; a module given the recycled pid in between was SIGKILLed.
// 2. RegressionHostForkKilled: the search for processes holding the output
//    pipes matched either end, so a worker the host fork()ed after spawning
//    (it inherits modkit's read ends: close-on-exec is not close-on-fork) was
//    SIGKILLed as an "escapee".
#ifndef _WIN32

#include <gtest/gtest.h>
#include <dirent.h>
#include <sys/types.h>

#include <set>

#include "regression_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::regression;
using namespace std::chrono_literals;

namespace {

constexpr auto kGrace = 1000ms;
constexpr auto kDrain = 300ms;
constexpr auto kKill = 1000ms;

LocalProcessOptions bounded_options(StatusLog& exits, std::chrono::milliseconds grace) {
  LocalProcessOptions options;
  options.stop_grace = grace;
  options.shutdown_grace = grace;
  options.drain_timeout = kDrain;
  set_kill_timeout(options, kKill);
  options.on_exit = exits.callback();
  return options;
}

/// What the header promises for stop_instance and the destructor: G + K + 2D,
/// plus room for scheduling on two shared cores.
std::chrono::milliseconds stop_bound(std::chrono::milliseconds grace) { return grace + kKill + 2 * kDrain + 2000ms; }

double as_seconds(std::chrono::milliseconds duration) { return std::chrono::duration<double>(duration).count(); }

/// Makes the next pid the kernel hands out in this pid namespace `pid`, if it is free.
bool set_next_pid(pid_t pid, std::string& error) {
  int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    error = std::string("open /proc/sys/kernel/ns_last_pid: ") + std::strerror(errno);
    return false;
  }
  std::string text = std::to_string(pid - 1);
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (!ok) error = std::string("write /proc/sys/kernel/ns_last_pid: ") + std::strerror(errno);
  close(fd);
  return ok;
}

/// Inodes of the pipes `pid` has open ("self" for this process).
std::set<std::string> pipe_inodes(const std::string& pid) {
  std::set<std::string> result;
  std::string directory = "/proc/" + pid + "/fd";
  DIR* fds = opendir(directory.c_str());
  if (fds == nullptr) return result;
  while (dirent* entry = readdir(fds)) {
    if (entry->d_name[0] == '.') continue;
    char target[128];
    ssize_t length = readlinkat(dirfd(fds), entry->d_name, target, sizeof target - 1);
    if (length <= 0) continue;
    target[length] = 0;
    if (std::strncmp(target, "pipe:[", 6) == 0) result.insert(target);
  }
  closedir(fds);
  return result;
}

// Module A writes far more stdout lines than the gated sink lets through, so
// its output is still undrained when the stop's deadline comes. Its stderr
// line says all its stdout is written (it then waits for the stop).
/// Opens the gate when a scenario ends early, before the backend (declared
/// before it) is destroyed: no teardown waits for the gate's own time-out.
struct OpenGateOnExit {
  GatedSink& sink;
  ~OpenGateOnExit() { sink.open(); }
};

OopModuleConfig slow_module() { return child_config("slow-a", {"lines", "5000", "stderr-lines", "1", "sleep", "30"}); }

// Runs as pid 1 of a fresh pid namespace, so that nothing else takes pids and
// ns_last_pid can hand A's pid to B the moment it is free.
void recycled_pid_scenario(Reporter& report) {
  auto sink = std::make_shared<GatedSink>("slow-a");
  StatusLog exits;
  CancellationToken token;
  auto backend = std::make_unique<LocalProcessBackend>(token, sink, bounded_options(exits, kGrace));
  OpenGateOnExit open_gate_on_exit{*sink};

  auto a = backend->spawn_instance(slow_module());
  if (!report.check(a.has_value(), "spawn A: " + (a ? std::string() : text_of(a.error())))) return;
  const pid_t a_pid = static_cast<pid_t>(a->pid.value_or(0));
  if (!report.check(sink->records().wait_for_line(a->instance_id, "err 1"), "A never wrote its stderr line")) return;
  report.note("A is pid " + std::to_string(a_pid) + "; its stdout waits at the sink's gate");

  Result<std::optional<ExitStatus>> a_stopped = std::optional<ExitStatus>();
  double a_stop_seconds = 0;
  auto start = Clock::now();
  BackgroundCall stop([&] {
    a_stopped = backend->stop_instance(*a);
    a_stop_seconds = seconds_since(start);
  });

  // Watch A's pid; the moment it is free (A reaped), give it to B. The gate
  // opens once the stop is over, or, if the stop waits for the drain, after
  // the deadline at which the old code sent its group kill.
  const auto gate_time = start + kGrace + kDrain + 500ms;
  const auto give_up = start + 20s;
  bool gate_open = false, b_spawned = false, freed_during_stop = false;
  std::optional<Clock::time_point> stop_seen;
  InstanceHandle b;
  for (;;) {
    bool stop_finished = stop.done();
    if (stop_finished && !stop_seen) stop_seen = Clock::now();
    if (!gate_open && (stop_finished || Clock::now() >= gate_time)) {
      int held = sink->held();
      sink->open();
      gate_open = true;
      report.note("gate opened after " + seconds_text(seconds_since(start)) + " (stop " +
                  (stop_finished ? "returned" : "still running") + ", " + std::to_string(held) +
                  " record(s) had reached it)");
    }
    if (!b_spawned && kill(a_pid, 0) != 0 && errno == ESRCH) {
      freed_during_stop = !stop_finished;
      std::string error;
      if (!set_next_pid(a_pid, error)) {
        report.fail(error);
        break;
      }
      auto spawned = backend->spawn_instance(child_config("victim-b", {"say", "up", "sleep", "30"}));
      if (!report.check(spawned.has_value(), "spawn B: " + (spawned ? std::string() : text_of(spawned.error()))))
        break;
      b = *spawned;
      b_spawned = true;
      report.note("A's pid freed after " + seconds_text(seconds_since(start)) + ", " +
                  (freed_during_stop ? "while stop_instance(A) was still running" : "after stop_instance(A) returned") +
                  "; B spawned as pid " + std::to_string(b.pid.value_or(0)));
      if (!report.check(b.pid == a->pid, "setup: B got pid " + std::to_string(b.pid.value_or(0)) + ", not A's pid " +
                                             std::to_string(a_pid)))
        break;
      if (!report.check(sink->records().wait_for_line(b.instance_id, "up", 5000ms), "B never said 'up'")) break;
    }
    if (stop_finished && gate_open && b_spawned) break;
    if (stop_seen && Clock::now() - *stop_seen > 3s) {
      report.fail("A's pid " + std::to_string(a_pid) + " still taken 3 s after stop_instance(A) returned");
      break;
    }
    if (Clock::now() > give_up) report.fail_and_exit("stop_instance(A) did not return within 20 s");
    std::this_thread::sleep_for(1ms);
  }
  sink->open();
  if (!stop.wait_for(20s)) report.fail_and_exit("stop_instance(A) did not return within 20 s");
  report.note("stop_instance(A) returned " + describe(a_stopped) + " after " + seconds_text(a_stop_seconds));
  report.check(a_stopped && a_stopped->has_value(), "stop_instance(A) returned " + describe(a_stopped) +
                                                        ", expected A's exit status");
  report.check(a_stop_seconds < as_seconds(stop_bound(kGrace)),
               "stop_instance(A) took " + seconds_text(a_stop_seconds) + ", bound " +
                   seconds_text(as_seconds(stop_bound(kGrace))));

  if (b_spawned && b.pid == a->pid) {
    // Anything A's stop still had in flight has landed by now.
    std::this_thread::sleep_for(300ms);
    auto b_exit = exits.wait_for(b.instance_id, 0ms);
    report.check(!b_exit, "module B (pid " + std::to_string(b.pid.value_or(0)) +
                              ", A's recycled pid) ended during A's stop: " +
                              (b_exit ? text_of(*b_exit) : std::string()) + " (forced " +
                              (b_exit && b_exit->forced ? "true" : "false") + "): A's stop killed it");
    report.check(alive_not_zombie(static_cast<pid_t>(b.pid.value_or(0))) || b_exit,
                 "module B is not running after A's stop, and no exit was reported for it");
    Result<std::optional<ExitStatus>> b_stopped = std::optional<ExitStatus>();
    if (!run_bounded(stop_bound(kGrace) + 5s, [&] { b_stopped = backend->stop_instance(b); }))
      report.fail_and_exit("stop_instance(B) did not return");
    report.check(b_stopped && b_stopped->has_value() && (*b_stopped)->kind == ExitStatus::Kind::Signaled &&
                     (*b_stopped)->code == SIGTERM && !(*b_stopped)->forced,
                 "stop_instance(B) returned " + describe(b_stopped) +
                     ", expected 'killed by signal 15' (B obeys SIGTERM), i.e. B was still running");
  }
  auto destroy_start = Clock::now();
  if (!run_bounded(stop_bound(kGrace) + 3s, [&] { backend.reset(); }))
    report.fail_and_exit("the backend's destructor did not return within " +
                         seconds_text(as_seconds(stop_bound(kGrace) + 3s)));
  report.note("destructor returned after " + seconds_text(seconds_since(destroy_start)));
}

// Runs in a forked host: spawns A, forks a worker (as a host running a
// pre-fork server would), then stops A while its output waits at the sink.
void host_fork_scenario(Reporter& report) {
  constexpr auto grace = 500ms;
  auto sink = std::make_shared<GatedSink>("slow-a");
  StatusLog exits;
  CancellationToken token;
  auto backend = std::make_unique<LocalProcessBackend>(token, sink, bounded_options(exits, grace));
  OpenGateOnExit open_gate_on_exit{*sink};

  auto before = pipe_inodes("self");
  auto a = backend->spawn_instance(slow_module());
  if (!report.check(a.has_value(), "spawn A: " + (a ? std::string() : text_of(a.error())))) return;
  if (!report.check(sink->records().wait_for_line(a->instance_id, "err 1"), "A never wrote its stderr line")) return;
  std::set<std::string> a_pipes;
  for (const auto& inode : pipe_inodes("self")) {
    if (!before.count(inode)) a_pipes.insert(inode);
  }

  // The worker only sleeps (async-signal-safe calls only: the host has
  // threads), at most 60 s, holding whatever the host held at fork time.
  pid_t worker = fork();
  if (worker < 0) {
    report.fail(std::string("fork the worker: ") + std::strerror(errno));
    return;
  }
  if (worker == 0) {
    for (int i = 0; i < 600; ++i) {
      timespec tenth{0, 100 * 1000 * 1000};
      nanosleep(&tenth, nullptr);
    }
    _exit(0);
  }
  int shared = 0;
  for (const auto& inode : pipe_inodes(std::to_string(worker))) shared += a_pipes.count(inode) ? 1 : 0;
  report.note("worker pid " + std::to_string(worker) + " holds " + std::to_string(shared) +
              " pipe(s) that appeared in the host with A (modkit's read ends)");

  Result<std::optional<ExitStatus>> a_stopped = std::optional<ExitStatus>();
  double a_stop_seconds = 0;
  auto start = Clock::now();
  BackgroundCall stop([&] {
    a_stopped = backend->stop_instance(*a);
    a_stop_seconds = seconds_since(start);
  });
  const auto gate_time = start + grace + kDrain + 500ms;
  bool gate_open = false;
  while (!stop.done()) {
    if (!gate_open && Clock::now() >= gate_time) {
      sink->open();
      gate_open = true;
    }
    if (Clock::now() > start + 20s) {
      kill(worker, SIGKILL);
      report.fail_and_exit("stop_instance(A) did not return within 20 s");
    }
    std::this_thread::sleep_for(5ms);
  }
  sink->open();
  report.note("stop_instance(A) returned " + describe(a_stopped) + " after " + seconds_text(a_stop_seconds));
  std::this_thread::sleep_for(200ms);

  int status = 0;
  pid_t ended = waitpid(worker, &status, WNOHANG);
  if (ended == worker) {
    report.fail("the host's forked worker (pid " + std::to_string(worker) + ", holding " + std::to_string(shared) +
                " read end(s) of A's output pipes) was " +
                (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                     : "ended with code " + std::to_string(WEXITSTATUS(status))) +
                " during stop_instance(A)");
  } else {
    report.check(ended == 0, std::string("waitpid(worker): ") + std::strerror(errno));
    kill(worker, SIGKILL);  // ours, unreaped: the pid cannot have been reused
    while (waitpid(worker, &status, 0) < 0 && errno == EINTR) {
    }
  }
  report.check(a_stopped && a_stopped->has_value(),
               "stop_instance(A) returned " + describe(a_stopped) + ", expected A's exit status");
  report.check(a_stop_seconds < as_seconds(stop_bound(grace)), "stop_instance(A) took " +
                                                                    seconds_text(a_stop_seconds) + ", bound " +
                                                                    seconds_text(as_seconds(stop_bound(grace))));
  if (!run_bounded(stop_bound(grace) + 3s, [&] { backend.reset(); }))
    report.fail_and_exit("the backend's destructor did not return");
}

}  // namespace

// Module B is given the pid (and so the process group id) of module A while
// A's stop is still waiting for A's output; A's stop must not kill B.
TEST(RegressionPidReuse, StopWithUndrainedOutputNeverKillsTheModuleGivenTheRecycledPid) {
  auto run = run_forked(60s, recycled_pid_scenario, HostKind::PidNamespaceInit);
  MODKIT_EXPECT_HOST_PASSED(run);
}

// A process the host forked after spawning holds only read ends of the
// module's pipes: it is the host's, and stop_instance must leave it alone.
TEST(RegressionHostForkKilled, HostForkHoldingReadEndsSurvivesStopWithUndrainedOutput) {
  auto run = run_forked(60s, host_fork_scenario);
  MODKIT_EXPECT_HOST_PASSED(run);
}

#endif  // !_WIN32
