// Containment (Linux, cgroup v2): the "Done when" of the containment issue.
//
// With containment on, each of these escapes is dead after stop_instance
// returns and after the token was cancelled, measured by looking for the
// processes by the pids (and start times) they recorded themselves; no
// zombie of the host is left; the stop stays within its bound G + K + 2*D:
//
//   (1) setsid       a descendant in its own session that closed the pipes
//   (2) respawn      a setsid daemon that forks to a new pid every 10-20 ms
//   (3) scm-rights   a setsid daemon whose only copies of the output pipes
//                    are in an SCM_RIGHTS message in flight
//   (4) nondumpable  a non-dumpable setsid daemon keeping the pipes (its
//                    /proc/PID/fd is unreadable to an unprivileged host)
//   (5) fork bomb    200 processes, half in sessions of their own
//
// With containment off, the same escapes show what a stop leaves running
// (the README's "What a stop ends without a cgroup"); those tests clean up
// the survivors by their recorded pids (pidfd, start time checked).
//
// The escapees are hostile_child's escape commands (tests/support/
// hostile_child.cpp): they ignore SIGTERM, so only a kill ends them, and
// each ends by itself after kEscapeSeconds should a test fail to.
//
// Every test that needs a cgroup makes a fresh TestCgroupParent
// (tests/support/test_cgroup.hpp) and skips without one (not root, or no
// cgroup v2). Reparented escapees are reaped by init, which may be slow (on
// the project's machines it reaps every second or two): a killed escapee
// may stay a zombie of init for a while; what is asserted is that none is
// alive, and that no zombie of the host (the test process) is left.
#ifndef _WIN32

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "forked_host.hpp"
#include "test_cgroup.hpp"
#include "test_support.hpp"

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

using namespace modkit;
using namespace modkit::testing;
using namespace std::chrono_literals;

namespace {

using Ms = std::chrono::milliseconds;

/// How long an escapee lives if nothing kills it (it then ends by itself).
constexpr const char* kEscapeSeconds = "20";
constexpr int kBombProcesses = 200;

// --- Processes, named by pid and start time ----------------------------------

/// A process an escapee recorded: its pid and its start time (field 22 of
/// /proc/PID/stat), so that a recycled pid is never taken for it.
struct Recorded {
  pid_t pid = 0;
  unsigned long long start = 0;  ///< 0: unknown (then it counts as gone)
};

struct StatFields {
  char state = '?';
  pid_t ppid = 0;
  pid_t pgrp = 0;
  pid_t session = 0;
  unsigned long long start = 0;
};

/// Parses /proc/PID/stat; false when there is no such process.
bool stat_of(pid_t pid, StatFields& fields) {
  std::string text = read_text_file("/proc/" + std::to_string(pid) + "/stat");
  std::size_t close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return false;
  std::istringstream rest(text.substr(close + 2));
  rest >> fields.state >> fields.ppid >> fields.pgrp >> fields.session;
  std::string skipped;
  for (int field = 7; field <= 21; ++field) rest >> skipped;  // tty_nr .. itrealvalue
  rest >> fields.start;
  return static_cast<bool>(rest);
}

enum class Fate { Alive, Zombie, Gone };

/// Alive: a /proc entry with the recorded start time in a state other than
/// Z or X. Zombie: that entry, dead but unreaped. Gone: no such entry (or a
/// different process under the same pid).
Fate fate_of(const Recorded& process) {
  StatFields fields;
  if (process.start == 0 || !stat_of(process.pid, fields) || fields.start != process.start) return Fate::Gone;
  return fields.state == 'Z' || fields.state == 'X' ? Fate::Zombie : Fate::Alive;
}

std::vector<Recorded> alive_among(const std::vector<Recorded>& processes) {
  std::vector<Recorded> alive;
  for (const auto& process : processes) {
    if (fate_of(process) == Fate::Alive) alive.push_back(process);
  }
  return alive;
}

std::size_t zombies_among(const std::vector<Recorded>& processes) {
  std::size_t count = 0;
  for (const auto& process : processes) count += fate_of(process) == Fate::Zombie ? 1 : 0;
  return count;
}

std::string pids_text(const std::vector<Recorded>& processes, std::size_t most = 20) {
  std::string text;
  for (std::size_t i = 0; i < processes.size() && i < most; ++i) {
    StatFields fields;
    char state = stat_of(processes[i].pid, fields) ? fields.state : '-';
    text += std::to_string(processes[i].pid) + "(" + state + ") ";
  }
  if (processes.size() > most) text += "... (" + std::to_string(processes.size()) + " in all)";
  return text;
}

/// Waits (bounded) until none of `processes` is alive (dead ones may stay
/// zombies of init); returns those still alive.
std::vector<Recorded> wait_none_alive(const std::vector<Recorded>& processes, Ms timeout) {
  auto until = Clock::now() + timeout;
  for (;;) {
    auto alive = alive_among(processes);
    if (alive.empty() || Clock::now() >= until) return alive;
    std::this_thread::sleep_for(Ms(5));
  }
}

/// SIGKILL to a recorded process, pinned with a pidfd first and its start
/// time checked after: never a recycled pid. True when the signal was sent.
bool kill_recorded(const Recorded& process) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, process.pid, 0));
  if (pidfd < 0) return false;
  bool sent = fate_of(process) == Fate::Alive && syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0) == 0;
  close(pidfd);
  return sent;
}

/// True when `pid` is no child of ours any more, not even a zombie: waitid
/// finds nothing to wait for (ECHILD).
bool reaped(pid_t pid) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 && errno == ECHILD;
}

/// Zombies whose parent is this process.
std::vector<pid_t> own_zombies() {
  std::vector<pid_t> zombies;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return zombies;
  pid_t self = getpid();
  while (dirent* entry = readdir(proc)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    pid_t pid = static_cast<pid_t>(std::atoi(entry->d_name));
    StatFields fields;
    if (stat_of(pid, fields) && fields.ppid == self && fields.state == 'Z') zombies.push_back(pid);
  }
  closedir(proc);
  return zombies;
}

/// The cgroup v2 path of `pid` (the "0::" line of /proc/PID/cgroup).
std::string cgroup_of(pid_t pid) {
  std::istringstream lines(read_text_file("/proc/" + std::to_string(pid) + "/cgroup"));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  }
  return {};
}

/// Descriptors of `pid` that are pipes; -1 when /proc/PID/fd cannot be read.
int pipe_descriptors(pid_t pid) {
  std::string directory = "/proc/" + std::to_string(pid) + "/fd";
  DIR* fds = opendir(directory.c_str());
  if (fds == nullptr) return -1;
  int pipes = 0;
  while (dirent* entry = readdir(fds)) {
    if (entry->d_name[0] == '.') continue;
    char target[64];
    ssize_t length = readlinkat(dirfd(fds), entry->d_name, target, sizeof target - 1);
    if (length <= 0) continue;
    target[length] = 0;
    pipes += std::strncmp(target, "pipe:", 5) == 0 ? 1 : 0;
  }
  closedir(fds);
  return pipes;
}

// --- The file the escapees record themselves in -----------------------------

/// A temporary file (in /tmp, owned by whoever makes it) to which each
/// escapee appends "PID START\n"; removed with the object.
class PidFile {
 public:
  PidFile() {
    char name[] = "/tmp/modkit-containment-pids-XXXXXX";
    int fd = mkstemp(name);
    if (fd >= 0) {
      close(fd);
      path_ = name;
    }
  }
  ~PidFile() {
    if (!path_.empty()) unlink(path_.c_str());
  }
  PidFile(const PidFile&) = delete;
  PidFile& operator=(const PidFile&) = delete;

  const std::string& path() const { return path_; }

  /// Every complete line so far, in order. A line without a start time (an
  /// escapee that could not read /proc/self/stat) gets the one /proc shows
  /// now, or 0 (gone) when there is none.
  std::vector<Recorded> read() const {
    std::vector<Recorded> found;
    std::string text = read_text_file(path_);
    std::size_t begin = 0;
    for (;;) {
      std::size_t end = text.find('\n', begin);
      if (end == std::string::npos) break;  // an unfinished line is read next time
      std::istringstream line(text.substr(begin, end - begin));
      begin = end + 1;
      Recorded process;
      if (!(line >> process.pid) || process.pid <= 0) continue;
      if (!(line >> process.start)) {
        StatFields fields;
        process.start = stat_of(process.pid, fields) ? fields.start : 0;
      }
      found.push_back(process);
    }
    return found;
  }

  /// Waits (bounded) until at least `count` lines are there.
  bool wait_for(std::size_t count, Ms timeout) const {
    auto until = Clock::now() + timeout;
    for (;;) {
      if (read().size() >= count) return true;
      if (Clock::now() >= until) return false;
      std::this_thread::sleep_for(Ms(5));
    }
  }

 private:
  std::string path_;
};

/// Kills every recorded process still alive, by pid and start time, round
/// after round, until none is alive and the file has not grown for 100 ms
/// (a respawning daemon records each new generation before it can fork
/// again), or `timeout` has passed. Returns how many were killed, or -1 on
/// time-out.
int kill_survivors(const PidFile& file, Ms timeout) {
  auto until = Clock::now() + timeout;
  auto quiet_since = Clock::now();
  std::size_t seen = 0;
  std::set<std::pair<pid_t, unsigned long long>> killed;
  for (;;) {
    auto recorded = file.read();
    if (recorded.size() != seen) {
      seen = recorded.size();
      quiet_since = Clock::now();
    }
    auto alive = alive_among(recorded);
    for (const auto& process : alive) {
      if (kill_recorded(process)) killed.insert({process.pid, process.start});
    }
    if (alive.empty() && Clock::now() - quiet_since >= Ms(100)) return static_cast<int>(killed.size());
    if (Clock::now() >= until) return -1;
    std::this_thread::sleep_for(Ms(2));
  }
}

// --- Escapes --------------------------------------------------------------------

enum class Escape { Setsid, Respawn, ScmRights, NonDumpable, ForkBomb };
enum class StopBy { StopInstance, TokenCancel };

const char* name_of(Escape escape) {
  switch (escape) {
    case Escape::Setsid: return "setsid";
    case Escape::Respawn: return "respawn";
    case Escape::ScmRights: return "scm-rights";
    case Escape::NonDumpable: return "nondumpable";
    case Escape::ForkBomb: return "fork-bomb";
  }
  return "?";
}

/// The module's script: the escape, then "ready" and a long sleep (the
/// module itself obeys SIGTERM).
std::vector<std::string> escape_script(Escape escape, const std::string& file) {
  std::vector<std::string> script;
  switch (escape) {
    case Escape::Setsid: script = {"escape-setsid", file, kEscapeSeconds}; break;
    case Escape::Respawn: script = {"escape-respawn", file, kEscapeSeconds}; break;
    case Escape::ScmRights: script = {"escape-scm-rights", file, kEscapeSeconds}; break;
    case Escape::NonDumpable: script = {"escape-nondumpable", file, kEscapeSeconds}; break;
    case Escape::ForkBomb: script = {"fork-bomb", file, std::to_string(kBombProcesses), kEscapeSeconds}; break;
  }
  script.insert(script.end(), {"out", "ready", "sleep", "30"});
  return script;
}

/// How many records to wait for before the stop: the escapee, three
/// generations of the respawning one (so it is seen respawning), the whole
/// fork bomb.
std::size_t records_expected(Escape escape) {
  switch (escape) {
    case Escape::Respawn: return 3;
    case Escape::ForkBomb: return kBombProcesses;
    default: return 1;
  }
}

OopModuleConfig hostile_module(const std::string& binary, const std::string& module, std::vector<std::string> script) {
  OopModuleConfig config(module, BackendKind::LocalProcess);
  config.binary = binary;
  config.args = std::move(script);
  return config;
}

/// Short bounds: G = 300 ms, K = 1 s, D = 300 ms.
LocalProcessOptions escape_options(Containment containment, const std::string& cgroup_parent) {
  LocalProcessOptions options;
  options.stop_grace = Ms(300);
  options.shutdown_grace = Ms(300);
  options.drain_timeout = Ms(300);
  options.kill_timeout = Ms(1000);
  options.containment = containment;
  options.cgroup_parent = cgroup_parent;
  return options;
}

/// The documented bound G + K + 2*D plus slack for a loaded machine.
constexpr Ms kSlack{1000};
double bound_s(const LocalProcessOptions& options, StopBy by) {
  Ms grace = by == StopBy::StopInstance ? options.stop_grace : options.shutdown_grace;
  return std::chrono::duration<double>(grace + options.kill_timeout + 2 * options.drain_timeout + kSlack).count();
}

std::string library_dump(const CollectingSink& sink, const std::string& instance_id) {
  std::string text;
  for (const auto& line : sink.lines(instance_id, LogStream::Library)) text += "\n    " + line;
  return text;
}

bool library_says(const CollectingSink& sink, const std::string& instance_id, const std::string& text) {
  for (const auto& line : sink.lines(instance_id, LogStream::Library)) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

/// One escape in one backend: a cgroup parent of its own (when contained), the
/// pid file, the backend. Members are destroyed in reverse: the backend
/// first, the cgroup parent last.
class EscapeScenario {
 public:
  /// `module_ignores_term`: the module itself ignores SIGTERM, so a stop
  /// waits out the grace and kills (instead of killing what the module left
  /// once it obeyed SIGTERM).
  EscapeScenario(Escape escape, Containment containment, bool module_ignores_term = false)
      : escape_(escape), containment_(containment), module_ignores_term_(module_ignores_term) {
    if (containment != Containment::Off) parent_ = std::make_unique<TestCgroupParent>();
    options_ = escape_options(containment, parent_ ? parent_->path() : std::string());
    if (containment == Containment::Off || *parent_) fixture_ = std::make_unique<Fixture>(options_);
  }

  /// Uncontained, escapees may outlive the stop: whatever is still alive
  /// (a test that failed half-way) is killed by its recorded pid before the
  /// pid file goes. Contained, the TestCgroupParent ends what is left.
  ~EscapeScenario() {
    if (containment_ == Containment::Off && !file_.path().empty()) (void)kill_survivors(file_, Ms(3000));
  }
  EscapeScenario(const EscapeScenario&) = delete;
  EscapeScenario& operator=(const EscapeScenario&) = delete;

  /// False when a cgroup was wanted and none can be had here (then skip).
  bool ready() const { return fixture_ != nullptr; }
  const LocalProcessOptions& options() const { return options_; }
  Fixture& fixture() { return *fixture_; }
  const CollectingSink& sink() const { return *fixture_->sink; }
  const InstanceHandle& handle() const { return handle_; }
  const PidFile& file() const { return file_; }
  TestCgroupParent& parent() { return *parent_; }
  /// What the escapees had recorded when the stop began.
  const std::vector<Recorded>& recorded() const { return recorded_; }
  std::optional<std::int64_t> listed_processes() const { return listed_processes_; }

  /// Spawns the module and waits until its escapees have recorded
  /// themselves and are in place. Fatal failures on the way.
  void start() {
    ASSERT_FALSE(file_.path().empty()) << "mkstemp: " << std::strerror(errno);
    auto script = escape_script(escape_, file_.path());
    if (module_ignores_term_) script.insert(script.begin(), "ignore-term");
    auto spawned =
        fixture_->backend->spawn_instance(hostile_module(MODKIT_HOSTILE_CHILD_PATH, name_of(escape_), script));
    ASSERT_TRUE(spawned) << spawned.error();
    handle_ = *spawned;
    ASSERT_TRUE(handle_.pid.has_value());
    const std::size_t expected = records_expected(escape_);
    ASSERT_TRUE(file_.wait_for(expected, Ms(10000)))
        << "the escapees recorded " << file_.read().size() << " pid(s) of " << expected
        << " within 10 s; library:" << library_dump(sink(), handle_.instance_id);
    ASSERT_TRUE(sink().wait_for_line(handle_.instance_id, "ready", Ms(5000))) << "the module never said 'ready'";
    // The respawning daemon's latest generation may be between its fork and
    // its record: look again (bounded) until one recorded is alive.
    auto until = Clock::now() + Ms(2000);
    for (;;) {
      recorded_ = file_.read();
      if (!alive_among(recorded_).empty() || Clock::now() >= until) break;
      std::this_thread::sleep_for(Ms(2));
    }
    check_in_place();
    if (::testing::Test::HasFatalFailure()) return;
    if (containment_ != Containment::Off) {
      auto listed = fixture_->backend->list_instances(name_of(escape_));
      ASSERT_TRUE(listed) << listed.error();
      ASSERT_EQ(listed->size(), 1u);
      listed_processes_ = listed->front().processes;
      ASSERT_TRUE(listed_processes_.has_value()) << "list_instances gave no process count for a contained instance";
    }
  }

  /// Stops the instance (or cancels the token); returns how long it took.
  double stop(StopBy by) {
    auto start = Clock::now();
    if (by == StopBy::StopInstance) {
      auto stopped = fixture_->backend->stop_instance(handle_);
      double took = seconds_since(start);
      EXPECT_TRUE(stopped) << stopped.error();
      if (stopped) {
        EXPECT_TRUE(stopped->has_value()) << "stop_instance of a running instance gave no status";
      }
      return took;
    }
    fixture_->token.cancel();
    fixture_->backend->wait_for_shutdown();
    return seconds_since(start);
  }

  /// Everything recorded so far (after the stop: also what came after).
  std::vector<Recorded> all_recorded() const { return file_.read(); }

 private:
  // The escape really happened: each escapee (the respawning one's latest
  // generation may have moved on) is outside the module's process group,
  // in the instance's cgroup when contained, and holds the pipes or not as
  // its command says.
  void check_in_place() {
    const pid_t module = static_cast<pid_t>(*handle_.pid);
    const std::string cell_suffix = "/" + handle_.instance_id;
    int outside_group = 0, in_cell = 0, checked = 0;
    for (const auto& process : recorded_) {
      StatFields fields;
      if (!stat_of(process.pid, fields) || fields.start != process.start) continue;  // a past generation
      if (fields.state == 'Z') continue;
      ++checked;
      outside_group += fields.pgrp != module ? 1 : 0;
      std::string cgroup = cgroup_of(process.pid);
      bool in_own_cell = cgroup.size() > cell_suffix.size() &&
                         cgroup.compare(cgroup.size() - cell_suffix.size(), cell_suffix.size(), cell_suffix) == 0;
      in_cell += in_own_cell ? 1 : 0;
      if (escape_ == Escape::Setsid || escape_ == Escape::ScmRights) {
        EXPECT_EQ(pipe_descriptors(process.pid), 0)
            << name_of(escape_) << " escapee " << process.pid << " still holds a pipe descriptor";
      }
      if (escape_ == Escape::Respawn || (escape_ == Escape::NonDumpable && geteuid() == 0)) {
        EXPECT_GE(pipe_descriptors(process.pid), 2)
            << name_of(escape_) << " escapee " << process.pid << " should keep the output pipes";
      }
      if (escape_ == Escape::NonDumpable && geteuid() != 0) {
        EXPECT_EQ(pipe_descriptors(process.pid), -1)
            << "an unprivileged test can read /proc/" << process.pid << "/fd of the non-dumpable escapee";
      }
    }
    ASSERT_GT(checked, 0) << "no recorded escapee is alive before the stop: " << pids_text(recorded_);
    if (escape_ == Escape::ForkBomb) {
      EXPECT_GE(outside_group, kBombProcesses / 2) << "the fork bomb's odd-indexed processes call setsid()";
    } else {
      EXPECT_EQ(outside_group, checked) << "the escapee is still in the module's process group";
    }
    if (containment_ != Containment::Off) {
      EXPECT_EQ(in_cell, checked) << "escapees outside the instance's cgroup (expected a path ending in " << cell_suffix
                                  << "); first one's: " << cgroup_of(recorded_.front().pid);
    }
  }

  const Escape escape_;
  const Containment containment_;
  const bool module_ignores_term_;
  std::unique_ptr<TestCgroupParent> parent_;
  PidFile file_;
  LocalProcessOptions options_;
  std::unique_ptr<Fixture> fixture_;
  InstanceHandle handle_;
  std::vector<Recorded> recorded_;
  std::optional<std::int64_t> listed_processes_;
};

/// Containment on: spawn the escape, stop it (stop_instance or the token),
/// and check that nothing of it is left.
void contained_escape_ends(Escape escape, StopBy by, bool module_ignores_term = false) {
  EscapeScenario scenario(escape, Containment::Required, module_ignores_term);
  if (!scenario.ready()) GTEST_SKIP() << "no cgroup v2 parent can be made here (needs root and a v2 hierarchy)";
  ASSERT_NO_FATAL_FAILURE(scenario.start());
  const auto& handle = scenario.handle();
  const pid_t module = static_cast<pid_t>(*handle.pid);
  if (escape == Escape::ForkBomb) {
    EXPECT_GE(*scenario.listed_processes(), kBombProcesses + 1)
        << "list_instances must count the module and every process of the bomb";
  } else {
    EXPECT_GE(*scenario.listed_processes(), 2) << "the module and its escapee";
  }

  double took = scenario.stop(by);
  const double bound = bound_s(scenario.options(), by);
  EXPECT_LT(took, bound) << "the stop took longer than G + K + 2*D (+ slack); library:"
                         << library_dump(scenario.sink(), handle.instance_id);
  if (module_ignores_term) {
    const auto& options = scenario.options();
    double grace =
        std::chrono::duration<double>(by == StopBy::StopInstance ? options.stop_grace : options.shutdown_grace).count();
    EXPECT_GE(took, grace * 0.9) << "a module that ignores SIGTERM was not given the grace";
    EXPECT_TRUE(library_says(scenario.sink(), handle.instance_id, "grace period expired"))
        << library_dump(scenario.sink(), handle.instance_id);
  }

  // Every process recorded by the time the stop returned (for the
  // respawning daemon: also the generations after those waited for) is dead,
  // a zombie of init at most. The cgroup reports "populated 0" a moment
  // before its last member turns Z: a short bounded wait.
  const auto at_stop = scenario.all_recorded();
  auto start_wait = Clock::now();
  auto alive = wait_none_alive(at_stop, Ms(1000));
  double dead_after = seconds_since(start_wait);
  EXPECT_TRUE(alive.empty()) << alive.size() << " of " << at_stop.size() << " recorded " << name_of(escape)
                             << " process(es) alive after the stop: " << pids_text(alive)
                             << "; library:" << library_dump(scenario.sink(), handle.instance_id);
  EXPECT_TRUE(reaped(module)) << "the module (pid " << module << ") is not reaped";
  auto zombies = own_zombies();
  EXPECT_TRUE(zombies.empty()) << zombies.size() << " zombie(s) of the test process left, first pid "
                               << (zombies.empty() ? 0 : zombies.front());

  std::size_t later = 0;
  if (escape == Escape::Respawn) {
    // No generation is left to fork another: nothing new is recorded.
    std::this_thread::sleep_for(Ms(200));
    auto after = scenario.all_recorded();
    later = after.size() - at_stop.size();
    EXPECT_EQ(after.size(), at_stop.size())
        << "the respawning daemon recorded " << later << " new generation(s) after the stop: "
        << pids_text(std::vector<Recorded>(after.begin() + at_stop.size(), after.end()));
  }
  if (by == StopBy::StopInstance) {
    auto listed = scenario.fixture().backend->list_instances(name_of(escape));
    ASSERT_TRUE(listed) << listed.error();
    EXPECT_TRUE(listed->empty()) << "the stopped instance is still listed";
  }
  std::size_t zombies_of_init = zombies_among(at_stop);

  auto destroy_start = Clock::now();
  scenario.fixture().backend.reset();
  double destroyed = seconds_since(destroy_start);
  EXPECT_LT(destroyed, bound) << "the destructor took longer than the bound";
  auto left = scenario.parent().descendants();
  EXPECT_TRUE(left.empty()) << "cgroup directories left under the test's parent, first: "
                            << (left.empty() ? std::string() : left.front());
  std::printf(
      "[ figures  ] contained %s%s, %s: took %.3f s (bound %.2f s), %zu process(es) recorded, %lld in the "
      "cgroup before, %zu alive after (all dead within %.3f s), %zu not yet reaped by init, %zu recorded "
      "after the stop, %zu cgroup dir(s) left\n",
      name_of(escape), module_ignores_term ? " (module ignores SIGTERM)" : "",
      by == StopBy::StopInstance ? "stop_instance" : "token cancel", took, bound, at_stop.size(),
      static_cast<long long>(*scenario.listed_processes()), alive.size(), dead_after, zombies_of_init, later,
      left.size());
}

}  // namespace

// --- Containment on: stop_instance ------------------------------------------------

TEST(ContainmentEscapes, SetsidDescendantThatClosedThePipesDiesWithStop) {
  contained_escape_ends(Escape::Setsid, StopBy::StopInstance);
}

TEST(ContainmentEscapes, RespawningDaemonDiesWithStopAndRecordsNoNewPid) {
  contained_escape_ends(Escape::Respawn, StopBy::StopInstance);
}

TEST(ContainmentEscapes, DaemonWithPipesParkedInScmRightsDiesWithStop) {
  contained_escape_ends(Escape::ScmRights, StopBy::StopInstance);
}

TEST(ContainmentEscapes, NonDumpableDaemonDiesWithStop) {
  contained_escape_ends(Escape::NonDumpable, StopBy::StopInstance);
}

TEST(ContainmentEscapes, ForkBombOf200DiesWithStop) { contained_escape_ends(Escape::ForkBomb, StopBy::StopInstance); }

// The other path: the module ignores SIGTERM too, so the whole cgroup is
// killed when the grace runs out, while the module is still alive.
TEST(ContainmentEscapes, ForkBombOf200WithAModuleIgnoringSigtermDiesAfterTheGrace) {
  contained_escape_ends(Escape::ForkBomb, StopBy::StopInstance, true);
}

TEST(ContainmentEscapes, RespawningDaemonWithAModuleIgnoringSigtermDiesAfterTheGrace) {
  contained_escape_ends(Escape::Respawn, StopBy::StopInstance, true);
}

// --- Containment on: token cancellation -----------------------------------------

TEST(ContainmentCancel, SetsidDescendantThatClosedThePipesDiesWithTheToken) {
  contained_escape_ends(Escape::Setsid, StopBy::TokenCancel);
}

TEST(ContainmentCancel, RespawningDaemonDiesWithTheTokenAndRecordsNoNewPid) {
  contained_escape_ends(Escape::Respawn, StopBy::TokenCancel);
}

TEST(ContainmentCancel, DaemonWithPipesParkedInScmRightsDiesWithTheToken) {
  contained_escape_ends(Escape::ScmRights, StopBy::TokenCancel);
}

TEST(ContainmentCancel, NonDumpableDaemonDiesWithTheToken) {
  contained_escape_ends(Escape::NonDumpable, StopBy::TokenCancel);
}

TEST(ContainmentCancel, ForkBombOf200DiesWithTheToken) { contained_escape_ends(Escape::ForkBomb, StopBy::TokenCancel); }

TEST(ContainmentCancel, ForkBombOf200WithAModuleIgnoringSigtermDiesAfterTheGrace) {
  contained_escape_ends(Escape::ForkBomb, StopBy::TokenCancel, true);
}

// --- Containment off: what escapes a stop today ------------------------------------
//
// No cgroup: the stop ends the module's process group and whatever holds the
// write end of its output pipes (README, "What a stop ends without a
// cgroup"). Each test asserts what survives, then kills the survivors by their
// recorded pids.

namespace {

struct Uncontained {
  double took = 0;
  double bound = 0;
  std::size_t recorded = 0;   ///< recorded when the stop began
  std::size_t survivors = 0;  ///< of those, alive 300 ms after the stop
  std::size_t new_after = 0;  ///< records added after the stop returned
  int cleaned = 0;            ///< killed by the test afterwards
  std::string instance_id;
};

/// Spawns the escape uncontained, stops it, waits 300 ms and counts what is
/// alive; leaves the survivors to the caller's assertions, then kills them.
void run_uncontained(Escape escape, Uncontained& result,
                     const std::function<void(EscapeScenario&, const Uncontained&)>& assertions) {
  EscapeScenario scenario(escape, Containment::Off);
  ASSERT_NO_FATAL_FAILURE(scenario.start());
  result.instance_id = scenario.handle().instance_id;
  result.took = scenario.stop(StopBy::StopInstance);
  result.bound = bound_s(scenario.options(), StopBy::StopInstance);
  EXPECT_LT(result.took, result.bound) << "the uncontained stop took longer than G + K + 2*D (+ slack); library:"
                                       << library_dump(scenario.sink(), result.instance_id);
  EXPECT_TRUE(reaped(static_cast<pid_t>(*scenario.handle().pid))) << "the module is not reaped";
  auto before = scenario.all_recorded();
  // Whatever was killed is dead (not necessarily reaped by init) by now.
  std::this_thread::sleep_for(Ms(300));
  result.recorded = scenario.recorded().size();
  auto survivors = alive_among(scenario.recorded());
  result.survivors = survivors.size();
  auto after = scenario.all_recorded();
  result.new_after = after.size() - before.size();
  if (escape == Escape::Respawn) result.survivors = alive_among(after).size();
  assertions(scenario, result);
  result.cleaned = kill_survivors(scenario.file(), Ms(5000));
  EXPECT_GE(result.cleaned, 0) << "the survivors could not all be killed within 5 s: "
                               << pids_text(alive_among(scenario.all_recorded()));
  auto left = wait_none_alive(scenario.all_recorded(), Ms(1000));
  EXPECT_TRUE(left.empty()) << "still alive after the clean-up: " << pids_text(left);
  scenario.fixture().backend.reset();
  EXPECT_TRUE(own_zombies().empty()) << "zombies of the test process left";
}

void print_uncontained(Escape escape, const Uncontained& result) {
  std::printf(
      "[ figures  ] uncontained %s, stop_instance: took %.3f s (bound %.2f s), %zu process(es) recorded, "
      "%zu alive after the stop, %zu new record(s) after it, %d killed by the test's clean-up\n",
      name_of(escape), result.took, result.bound, result.recorded, result.survivors, result.new_after, result.cleaned);
}

}  // namespace

TEST(ContainmentOff, SetsidDescendantThatClosedThePipesSurvivesStop) {
  Uncontained result;
  run_uncontained(Escape::Setsid, result, [](EscapeScenario& scenario, const Uncontained& r) {
    // Outside the group and holding no pipe: nothing finds it.
    EXPECT_EQ(r.survivors, 1u) << "expected the setsid escapee to outlive the uncontained stop; library:"
                               << library_dump(scenario.sink(), r.instance_id);
  });
  print_uncontained(Escape::Setsid, result);
}

// A race, not a certainty: the holder search lists /proc once per round and
// then looks at each pid in turn, and it stops after a round that killed
// nobody (at most 8 rounds). The daemon escapes when the generation the list
// caught has forked on and exited by the time the search gets to it; when
// the search gets there first it kills it (and the generation it may just
// have forked, which the next round finds). With a 10-20 ms generation it
// escaped in about a third of the stops on the project's 2-core machine.
// So each trial asserts that only the holder search stood in its way (it
// either went on recording generations after the stop, or the library
// reports the holder it killed), and the figures say how often it escaped.
TEST(ContainmentOff, RespawningDaemonRacesTheHolderSearch) {
  constexpr int kTrials = 5;
  int escaped = 0, caught = 0;
  double slowest = 0, bound = 0;
  int cleaned = 0;
  for (int trial = 0; trial < kTrials && !::testing::Test::HasFailure(); ++trial) {
    Uncontained result;
    run_uncontained(Escape::Respawn, result, [&](EscapeScenario& scenario, const Uncontained& r) {
      bool lived_on = r.new_after > 0 || r.survivors > 0;
      bool search_killed = library_says(scenario.sink(), r.instance_id, "outside it holding the output");
      EXPECT_TRUE(lived_on || search_killed)
          << "trial " << trial << ": the respawning daemon neither lived on nor was killed as a pipe holder; "
          << "library:" << library_dump(scenario.sink(), r.instance_id);
      (lived_on ? escaped : caught) += 1;
    });
    slowest = std::max(slowest, result.took);
    bound = result.bound;
    cleaned += std::max(result.cleaned, 0);
  }
  std::printf(
      "[ figures  ] uncontained respawn, stop_instance: escaped the stop in %d of %d trials (killed by the "
      "holder search in %d), slowest stop %.3f s (bound %.2f s), %d generation(s) killed by the test's "
      "clean-up\n",
      escaped, escaped + caught, caught, slowest, bound, cleaned);
}

TEST(ContainmentOff, DaemonWithPipesParkedInScmRightsSurvivesStop) {
  Uncontained result;
  run_uncontained(Escape::ScmRights, result, [](EscapeScenario& scenario, const Uncontained& r) {
    EXPECT_EQ(r.survivors, 1u) << "expected the SCM_RIGHTS daemon to outlive the uncontained stop; library:"
                               << library_dump(scenario.sink(), r.instance_id);
    // The pipes stayed open with no holder to kill: modkit stopped reading.
    EXPECT_TRUE(library_says(scenario.sink(), r.instance_id, "output still held open by a process modkit cannot kill"))
        << library_dump(scenario.sink(), r.instance_id);
  });
  print_uncontained(Escape::ScmRights, result);
}

TEST(ContainmentOff, NonDumpableDaemonIsFoundByTheHolderSearchOnlyAsRoot) {
  Uncontained result;
  run_uncontained(Escape::NonDumpable, result, [](EscapeScenario& scenario, const Uncontained& r) {
    if (geteuid() == 0) {
      // Root reads /proc/PID/fd of a non-dumpable process (CAP_SYS_PTRACE):
      // the holder search finds the daemon and kills it. The unprivileged
      // case is ContainmentUnprivileged below.
      EXPECT_EQ(r.survivors, 0u) << "as root the holder search should kill the non-dumpable daemon; library:"
                                 << library_dump(scenario.sink(), r.instance_id);
      EXPECT_TRUE(library_says(scenario.sink(), r.instance_id, "outside it holding the output"))
          << library_dump(scenario.sink(), r.instance_id);
    } else {
      // A host of the same uid may not read its descriptors.
      EXPECT_EQ(r.survivors, 1u) << "an unprivileged holder search cannot see the non-dumpable daemon; library:"
                                 << library_dump(scenario.sink(), r.instance_id);
    }
  });
  print_uncontained(Escape::NonDumpable, result);
}

TEST(ContainmentOff, ForkBombLeavesItsSetsidMembersThatClosedThePipes) {
  Uncontained result;
  run_uncontained(Escape::ForkBomb, result, [](EscapeScenario& scenario, const Uncontained& r) {
    // The bomb's group members die with the group, the pipe holders outside
    // it by the holder search; the quarter in sessions of their own that
    // closed the pipes (index 3 modulo 4) is found by neither.
    EXPECT_EQ(r.survivors, static_cast<std::size_t>(kBombProcesses / 4))
        << "library:" << library_dump(scenario.sink(), r.instance_id);
  });
  print_uncontained(Escape::ForkBomb, result);
}

// --- An unprivileged host (uid 65534) with a delegated cgroup ---------------------
//
// The holder search of an unprivileged host cannot read /proc/PID/fd of a
// non-dumpable process, so without containment escape (4) survives; with it,
// the cgroup ends it. The forked host (root) makes the test cgroup parent,
// delegates it to uid 65534 (the directory, cgroup.procs, cgroup.threads and
// cgroup.subtree_control chowned), makes "host" below it (delegated too) and
// forks a worker that moves itself there, drops to uid 65534 and runs the
// escape. The worker, not the forked host, leaves the root cgroup: the host
// stays root outside the parent, so the TestCgroupParent's clean-up (as
// root) can end and remove all of it afterwards.

namespace {

using forked::kNobody;

bool chown_to_nobody(const std::string& path) { return chown(path.c_str(), kNobody, kNobody) == 0; }

/// Delegates cgroup `directory` to uid 65534, as cgroup-v2.rst describes.
bool delegate(const std::string& directory) {
  return chown_to_nobody(directory) && chown_to_nobody(directory + "/cgroup.procs") &&
         chown_to_nobody(directory + "/cgroup.threads") && chown_to_nobody(directory + "/cgroup.subtree_control");
}

/// A copy of hostile_child in a directory of its own that uid 65534 may
/// enter (the build tree may be under a 0700 directory); removed with the object.
class ReachableHostileChild {
 public:
  ReachableHostileChild() {
    char name[] = "/tmp/modkit-containment-bin-XXXXXX";
    if (mkdtemp(name) == nullptr) return;
    directory_ = name;
    std::string binary = directory_ + "/hostile_child";
    std::string bytes = read_text_file(MODKIT_HOSTILE_CHILD_PATH);
    int fd = open(binary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
    if (fd < 0) return;
    bool written = write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
    close(fd);
    if (written && !bytes.empty() && chmod(binary.c_str(), 0755) == 0 && chmod(name, 0755) == 0) path_ = binary;
  }
  ~ReachableHostileChild() {
    if (directory_.empty()) return;
    unlink((directory_ + "/hostile_child").c_str());
    rmdir(directory_.c_str());
  }
  ReachableHostileChild(const ReachableHostileChild&) = delete;
  ReachableHostileChild& operator=(const ReachableHostileChild&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string directory_, path_;
};

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f s", seconds);
  return text;
}

/// In the worker, as uid 65534: the non-dumpable escape with `containment`.
void nondumpable_as_nobody(const std::string& binary, const std::string& cgroup_parent, Containment containment) {
  const bool contained = containment != Containment::Off;
  const char* label = contained ? "contained" : "uncontained";
  PidFile file;
  HOST_ASSERT(!file.path().empty()) << "mkstemp as uid 65534: " << std::strerror(errno);
  LocalProcessOptions options = escape_options(containment, contained ? cgroup_parent : std::string());
  auto sink = std::make_shared<CollectingSink>();
  CancellationToken token;
  auto created = LocalProcessBackend::create(token, sink, options);
  HOST_ASSERT(created) << label << ": create as uid 65534 failed: " << created.error();
  auto backend = std::move(*created);
  auto handle =
      backend->spawn_instance(hostile_module(binary, "nondumpable", escape_script(Escape::NonDumpable, file.path())));
  HOST_ASSERT(handle) << label << ": " << handle.error();
  HOST_ASSERT(file.wait_for(1, Ms(10000))) << label << ": the escapee never recorded its pid";
  HOST_ASSERT(sink->wait_for_line(handle->instance_id, "ready", Ms(5000))) << label << ": no 'ready'";
  auto recorded = file.read();
  const Recorded daemon = recorded.front();
  HOST_ASSERT(fate_of(daemon) == Fate::Alive) << label << ": the escapee is not alive before the stop";
  // What the holder search is up against: uid 65534 cannot list its descriptors.
  HOST_CHECK(pipe_descriptors(daemon.pid) == -1)
      << label << ": uid 65534 can read /proc/" << daemon.pid << "/fd of the non-dumpable daemon";
  StatFields fields;
  HOST_CHECK(stat_of(daemon.pid, fields) && fields.pgrp != static_cast<pid_t>(*handle->pid))
      << label << ": the escapee did not leave the module's process group";
  std::optional<std::int64_t> in_cgroup;
  if (contained) {
    auto listed = backend->list_instances("nondumpable");
    HOST_ASSERT(listed && listed->size() == 1u);
    in_cgroup = listed->front().processes;
    HOST_CHECK(in_cgroup && *in_cgroup >= 2) << "list_instances: " << (in_cgroup ? *in_cgroup : -1) << " process(es)";
  }

  auto start = Clock::now();
  auto stopped = backend->stop_instance(*handle);
  double took = seconds_since(start);
  double bound = bound_s(options, StopBy::StopInstance);
  HOST_CHECK(stopped && stopped->has_value())
      << label << ": stop_instance: " << (stopped ? std::string("no status") : stopped.error().message);
  HOST_CHECK(took < bound) << label << ": the stop took " << took << " s; the bound is " << bound << " s";
  HOST_CHECK(reaped(static_cast<pid_t>(*handle->pid))) << label << ": the module is not reaped";
  std::size_t alive_after = 0;
  int cleaned = 0;
  if (contained) {
    auto alive = wait_none_alive(recorded, Ms(1000));
    alive_after = alive.size();
    HOST_CHECK(alive.empty()) << "contained: the non-dumpable daemon " << daemon.pid << " outlived the stop";
  } else {
    std::this_thread::sleep_for(Ms(300));
    alive_after = alive_among(recorded).size();
    // The unprivileged holder search could not see it: it survives (the
    // README lists this escape).
    HOST_CHECK(alive_after == 1u) << "uncontained: expected the non-dumpable daemon to outlive the stop of an "
                                     "unprivileged host";
    bool stopped_reading = false;
    for (const auto& line : sink->lines(handle->instance_id, LogStream::Library)) {
      stopped_reading = stopped_reading || line.find("output still held open") != std::string::npos;
    }
    HOST_CHECK(stopped_reading) << "uncontained: modkit should have given up reading the pipes the daemon holds";
    cleaned = kill_survivors(file, Ms(5000));
    HOST_CHECK(cleaned >= 0) << "uncontained: the survivor could not be killed";
    HOST_CHECK(wait_none_alive(recorded, Ms(1000)).empty()) << "uncontained: still alive after the clean-up";
  }
  backend.reset();
  if (contained) {
    // Only the worker's own "host" cgroup may be left.
    std::vector<std::string> left;
    for (const auto& name : subdirectories(cgroup_parent)) {
      if (name != "host") left.push_back(name);
    }
    HOST_CHECK(left.empty()) << "contained: modkit left cgroup directory " << (left.empty() ? "" : left.front());
  }
  HOST_NOTE() << "figures: unprivileged (uid 65534) " << label << " nondumpable, stop_instance: took "
              << seconds_text(took) << " (bound " << seconds_text(bound) << "), 1 process recorded"
              << (in_cgroup ? ", " + std::to_string(*in_cgroup) + " in the cgroup before" : std::string()) << ", "
              << alive_after << " alive after the stop"
              << (contained ? "" : ", " + std::to_string(cleaned) + " killed by the test's clean-up");
}

/// The forked host: delegated cgroup, worker as uid 65534, bounded wait.
/// Failures here return (HOST_FAIL, not HOST_ASSERT), so that `parent`'s
/// destructor still removes the test cgroup.
void run_as_delegated_nobody(Containment containment) {
  TestCgroupParent parent;
  if (!parent) HOST_SKIP() << "no cgroup v2 parent can be made here";
  const std::string host_cgroup = parent.path() + "/host";
  if (!delegate(parent.path())) {
    HOST_FAIL() << "chown of " << parent.path() << ": " << std::strerror(errno);
    return;
  }
  if (mkdir(host_cgroup.c_str(), 0755) != 0 || !delegate(host_cgroup)) {
    HOST_FAIL() << "mkdir or chown of " << host_cgroup << ": " << std::strerror(errno);
    return;
  }
  ReachableHostileChild binary;
  if (binary.path().empty()) {
    HOST_FAIL() << "cannot copy hostile_child where uid 65534 may run it: " << std::strerror(errno);
    return;
  }

  pid_t worker = fork();
  if (worker < 0) {
    HOST_FAIL() << "fork: " << std::strerror(errno);
    return;
  }
  if (worker == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!write_text_file(host_cgroup + "/cgroup.procs", "0")) {
      HOST_FAIL() << "cannot move the worker into " << host_cgroup << ": " << std::strerror(errno);
      _exit(1);
    }
    if (chdir("/") != 0 || !forked::drop_to_nobody()) HOST_SKIP() << "cannot switch to uid 65534";
    nondumpable_as_nobody(binary.path(), parent.path(), containment);
    _exit(0);
  }
  int status = 0;
  bool ended = forked::wait_until(
      [&] {
        pid_t got = waitpid(worker, &status, WNOHANG);
        return got == worker || (got < 0 && errno != EINTR);
      },
      Ms(40000));
  if (!ended) {
    kill(worker, SIGKILL);  // our own unreaped child
    while (waitpid(worker, &status, 0) < 0 && errno == EINTR) {
    }
    HOST_FAIL() << "the worker (uid 65534) did not finish within 40 s";
  } else if (WIFSIGNALED(status)) {
    HOST_FAIL() << "the worker was killed by signal " << WTERMSIG(status);
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != forked::kHostAssertExit) {
    HOST_FAIL() << "the worker exited with code " << WEXITSTATUS(status);
  }
  // The parent (and the worker's "host" cgroup) go with `parent`, as root.
}

}  // namespace

TEST(ContainmentUnprivileged, NonDumpableDaemonDiesWithStopWhenContained) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (to delegate a cgroup to uid 65534 and become it)";
  RUN_IN_HOST(Ms(60000), [] { run_as_delegated_nobody(Containment::Required); });
}

TEST(ContainmentUnprivileged, NonDumpableDaemonSurvivesStopWhenUncontained) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (to become uid 65534)";
  RUN_IN_HOST(Ms(60000), [] { run_as_delegated_nobody(Containment::Off); });
}

#endif  // !_WIN32
