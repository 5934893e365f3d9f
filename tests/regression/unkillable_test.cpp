// Regression test: a child the host may not signal.
//
// 3. RegressionUnkillableChild: an unprivileged host runs a module that
//    execs a setuid-root program, which sets all its uids to 0 (and ignores
//    SIGTERM): every kill() of it fails with EPERM. stop_instance returned an
//    empty optional after 10.5 s, and the destructor never returned. It must
//    return operation_not_permitted naming the pid within the header's bound
//    (stop_grace + kill_timeout + 2 * drain_timeout), and so must the
//    destructor.
//
// Needs root (to make the setuid helper and drop to uid 65534); skips
// otherwise, and where setuid cannot work (/tmp mounted nosuid, NoNewPrivs).
#ifndef _WIN32

#include <gtest/gtest.h>
#include <dirent.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>

#include "regression_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::regression;
using namespace std::chrono_literals;

namespace {

constexpr uid_t kNobody = 65534;
constexpr auto kGrace = 500ms;
constexpr auto kKill = 1000ms;
constexpr auto kDrain = 300ms;
// The header's bound, G + K + 2D, and one second for scheduling on two
// shared cores (c31190c took 10.5 s, then hung).
constexpr auto kBound = kGrace + kKill + 2 * kDrain;
constexpr auto kAllowed = kBound + 1000ms;

double as_seconds(std::chrono::milliseconds duration) { return std::chrono::duration<double>(duration).count(); }

std::string no_new_privs() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("NoNewPrivs:", 0) == 0) return line.substr(line.find_first_not_of(" \t", 11));
  }
  return "?";
}

bool copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  out << in.rdbuf();
  return in.good() && out.good();
}

// Runs as uid/gid 65534: spawn the setuid helper, stop it, destroy the backend.
void unprivileged_host(Reporter& report, const std::string& helper) {
  auto sink = std::make_shared<CollectingSink>();
  LocalProcessOptions options;
  options.stop_grace = kGrace;
  options.shutdown_grace = kGrace;
  options.drain_timeout = kDrain;
  set_kill_timeout(options, kKill);
  CancellationToken token;
  auto backend = std::make_unique<LocalProcessBackend>(token, sink, options);

  OopModuleConfig config("unkillable", BackendKind::LocalProcess);
  config.binary = helper;
  config.args = {"become-root-and-sleep", "30"};
  auto handle = backend->spawn_instance(config);
  if (!report.check(handle.has_value(), "spawn: " + (handle ? std::string() : text_of(handle.error())))) return;
  const pid_t pid = static_cast<pid_t>(handle->pid.value_or(0));
  report.note("module pid " + std::to_string(pid));

  std::string said;
  sink->wait_for(
      [&](const StoredRecord& r) {
        if (r.instance_id != handle->instance_id || r.stream != LogStream::Stdout) return false;
        said = r.line;
        return true;
      },
      5000ms);
  if (said != "uids 0 0 0") {
    std::string errors;
    for (const auto& line : sink->lines(handle->instance_id, LogStream::Stderr)) errors += " " + line;
    report.skip("the setuid helper did not become root (it said '" + said + "'; on stderr:" + errors.substr(0, 500) +
                ")");
    return;
  }
  if (kill(pid, 0) == 0 || errno != EPERM) {
    report.skip("the unprivileged host may signal the setuid helper: the scenario does not apply");
    return;
  }

  Result<std::optional<ExitStatus>> stopped = std::optional<ExitStatus>();
  auto start = Clock::now();
  double stop_seconds = 0;
  if (!run_bounded(20s, [&] {
        stopped = backend->stop_instance(*handle);
        stop_seconds = seconds_since(start);
      })) {
    report.fail_and_exit("stop_instance did not return within 20 s");
  }
  report.note("stop_instance returned " + describe(stopped) + " after " + seconds_text(stop_seconds));
  bool refused = !stopped && stopped.error().code == std::errc::operation_not_permitted;
  report.check(refused, "stop_instance returned " + describe(stopped) +
                            ", expected the error operation_not_permitted (the host may not signal pid " +
                            std::to_string(pid) + ")");
  if (refused) {
    report.check(stopped.error().message.find(std::to_string(pid)) != std::string::npos,
                 "the error message does not name the pid " + std::to_string(pid) + ": " + stopped.error().message);
  }
  report.check(stop_seconds < as_seconds(kAllowed), "stop_instance took " + seconds_text(stop_seconds) +
                                                        ", more than stop_grace + kill_timeout + 2 * drain_timeout (" +
                                                        seconds_text(as_seconds(kBound)) + ") + 1 s");

  auto destroy_start = Clock::now();
  // Twice the allowance, so the report says how late it was before giving up.
  if (!run_bounded(2 * kAllowed, [&] { backend.reset(); })) {
    report.fail_and_exit("the destructor did not return within " + seconds_text(as_seconds(2 * kAllowed)) +
                         " (bound " + seconds_text(as_seconds(kBound)) + ")");
  }
  double destroy_seconds = seconds_since(destroy_start);
  report.note("destructor returned after " + seconds_text(destroy_seconds));
  report.check(destroy_seconds < as_seconds(kAllowed),
               "the destructor took " + seconds_text(destroy_seconds) + ", more than shutdown_grace + kill_timeout + 2 * "
               "drain_timeout (" + seconds_text(as_seconds(kBound)) + ") + 1 s");
}

// Runs as root in the forked test process: becomes the subreaper of what the
// unprivileged host leaves behind, runs the host (uid 65534) under a
// watchdog, then kills and reaps every process left (all of them ours).
void root_keeper(Reporter& report, const std::string& helper) {
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  const pid_t keeper = getpid();
  pid_t host = fork();
  if (host < 0) {
    report.fail(std::string("fork: ") + std::strerror(errno));
    return;
  }
  if (host == 0) {
    Reporter host_report(report.fd());
    if (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) != 0 ||
        setresuid(kNobody, kNobody, kNobody) != 0) {
      host_report.fail(std::string("cannot drop to uid/gid 65534: ") + std::strerror(errno));
      _exit(1);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // after the uid change, which clears it
    if (getppid() != keeper) _exit(1);
    if (chdir("/") != 0) _exit(1);
    unprivileged_host(host_report, helper);
    _exit(host_report.exit_code());
  }
  int status = 0;
  auto deadline = Clock::now() + 40s;
  for (;;) {
    pid_t done = waitpid(host, &status, WNOHANG);
    if (done == host) break;
    if (Clock::now() > deadline) {
      kill(host, SIGKILL);  // our unreaped child
      while (waitpid(host, &status, 0) < 0 && errno == EINTR) {
      }
      report.fail("the unprivileged host did not finish within 40 s (killed)");
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == kSkipExitCode) report.skip("(see above)");
  if (WIFEXITED(status) && WEXITSTATUS(status) == 1) report.fail("the unprivileged host reported failures (above)");
  if (WIFSIGNALED(status)) report.fail("the unprivileged host was killed by signal " + std::to_string(WTERMSIG(status)));

  // What the host left (the setuid helper) was re-parented to us when it
  // ended: our children now, unreaped, so their pids are safe to signal.
  int left = 0;
  auto reap_deadline = Clock::now() + 10s;
  for (;;) {
    std::vector<pid_t> children;
    if (DIR* proc = opendir("/proc")) {
      while (dirent* entry = readdir(proc)) {
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') continue;
        std::ifstream stat_file(std::string("/proc/") + entry->d_name + "/stat");
        std::string text;
        if (!std::getline(stat_file, text)) continue;
        auto close = text.rfind(')');
        if (close == std::string::npos) continue;
        std::istringstream rest(text.substr(close + 1));
        char state;
        pid_t parent = 0;
        rest >> state >> parent;
        if (parent == keeper) children.push_back(static_cast<pid_t>(std::atoi(entry->d_name)));
      }
      closedir(proc);
    }
    for (pid_t child : children) kill(child, SIGKILL);
    left += static_cast<int>(children.size());
    pid_t reaped;
    while ((reaped = waitpid(-1, &status, WNOHANG)) > 0) {
    }
    if (reaped < 0 && errno == ECHILD) break;
    if (Clock::now() > reap_deadline) {
      report.fail("leftover processes could not be reaped within 10 s");
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  report.note("cleaned up after the host: " + std::to_string(left) + " SIGKILL(s) sent to leftovers");
}

}  // namespace

TEST(RegressionUnkillableChild, StopReturnsOperationNotPermittedNamingThePidAndDestructorReturns) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: makes a setuid-root helper and drops to uid 65534";
  struct statvfs tmp_fs {};
  ASSERT_EQ(statvfs("/tmp", &tmp_fs), 0) << std::strerror(errno);
  if (tmp_fs.f_flag & ST_NOSUID) GTEST_SKIP() << "/tmp is mounted nosuid: a setuid helper cannot work there";
  if (no_new_privs() != "0") GTEST_SKIP() << "NoNewPrivs is " << no_new_privs() << ": setuid has no effect";

  char directory[] = "/tmp/modkit-unkillable-XXXXXX";
  ASSERT_NE(mkdtemp(directory), nullptr) << std::strerror(errno);
  const std::string helper = std::string(directory) + "/test_child_setuid";
  auto cleanup = [&] {
    unlink(helper.c_str());
    rmdir(directory);
  };
  bool prepared = chmod(directory, 0755) == 0 && copy_file(test_child_path(), helper) &&
                  chown(helper.c_str(), 0, 0) == 0 && chmod(helper.c_str(), 04755) == 0;
  if (!prepared) {
    int error = errno;
    cleanup();
    FAIL() << "cannot prepare the setuid helper " << helper << ": " << std::strerror(error);
  }

  auto run = run_forked(60s, [&](Reporter& report) { root_keeper(report, helper); });

  // Last line of defence, in case the keeper itself was killed: the helper
  // (ours: it runs the copy made above, which nothing else uses) is killed
  // through a pidfd after checking what it runs.
  std::istringstream lines(run.report);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("note: module pid ", 0) != 0) continue;
    pid_t pid = static_cast<pid_t>(std::atoi(line.c_str() + 17));
    int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) continue;
    char exe[4096];
    ssize_t length = readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), exe, sizeof exe - 1);
    if (length > 0 && std::string(exe, static_cast<std::size_t>(length)) == helper) {
      syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
      ADD_FAILURE() << "the setuid helper (pid " << pid << ") outlived the test's keeper";
    }
    close(pidfd);
  }
  cleanup();
  MODKIT_EXPECT_HOST_PASSED(run);
}

#endif  // !_WIN32
