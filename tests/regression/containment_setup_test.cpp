// Containment's set-up, in forked hosts (each needs process-wide state a test
// may not leave behind: the host moved into a cgroup, a read-only mount in a
// private namespace, a seccomp filter, another uid):
//  - the automatic mode uses the host's own cgroup when it may write there,
//    and stays uncontained, saying why, when it may not (a read-only one);
//  - a child joins its cgroup from inside when clone3 is hidden (a seccomp
//    filter, as Docker's default profile has);
//  - a cgroup the child may not enter is a spawn error that names it, on both
//    paths, and leaves nothing behind.
// Every cgroup is made under a parent of the test's own (test_cgroup.hpp).
#ifndef _WIN32

#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "forked_host.hpp"
#include "test_cgroup.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::forked;

namespace {

#if defined(__x86_64__)
constexpr std::uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr std::uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
constexpr std::uint32_t kAuditArch = 0;
#endif

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/// In this process from now on: clone3 fails with ENOSYS.
bool hide_clone3() {
  if (kAuditArch == 0) return false;
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program) != 0) return false;
  errno = 0;
  return syscall(SYS_clone3, nullptr, 0) == -1 && errno == ENOSYS;
}

/// The v2 cgroup of `pid`, as /proc/<pid>/cgroup gives it ("/a/b").
std::string cgroup_of(pid_t pid) {
  std::string text = read_text_file("/proc/" + std::to_string(pid) + "/cgroup");
  std::size_t at = text.find("0::");
  if (at == std::string::npos) return {};
  std::size_t end = text.find('\n', at);
  return text.substr(at + 3, end == std::string::npos ? std::string::npos : end - at - 3);
}

/// `path` relative to the v2 mount ("/modkit-test-1-1/host").
std::string in_hierarchy(const std::string& path) { return path.substr(cgroup2_mount().size()); }

/// Makes `parent`/host and moves the calling (host) process into it.
void enter_host_cgroup(const TestCgroupParent& parent) {
  std::string host = parent.path() + "/host";
  HOST_ASSERT(mkdir(host.c_str(), 0755) == 0 || errno == EEXIST) << std::strerror(errno);
  HOST_ASSERT(write_text_file(host + "/cgroup.procs", "0")) << std::strerror(errno);
  HOST_ASSERT(cgroup_of(getpid()) == in_hierarchy(host)) << cgroup_of(getpid());
}

bool said(const RecordingSink& sink, const std::string& text) {
  for (const auto& record : sink.records()) {
    if (record.line.find(text) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST(ContainmentSetup, AutomaticModeUsesTheHostsOwnCgroupWhenWritable) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  RUN_IN_HOST(Ms(20000), [&] {
    enter_host_cgroup(parent);
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    auto backend = create_backend(token, sink, short_options());  // Automatic, no cgroup_parent
    HOST_CHECK(!said(*sink, "not contained")) << "the host's cgroup is writable";
    auto handle = backend->spawn_instance(hostile_config("contained", {"sleep", "30"}));
    HOST_ASSERT(handle) << handle.error();
    std::string expected = in_hierarchy(parent.path()) + "/host/modkit-" + std::to_string(getpid()) + "-";
    std::string actual = cgroup_of(pid_of(*handle));
    HOST_CHECK(actual.rfind(expected, 0) == 0 && actual.size() > handle->instance_id.size() &&
               actual.compare(actual.size() - handle->instance_id.size(), std::string::npos, handle->instance_id) == 0)
        << "the module runs in " << actual << ", not in <host's cgroup>/modkit-<pid>-.../<instance id>";
    auto listed = backend->list_instances("contained");
    HOST_ASSERT(listed && listed->size() == 1);
    HOST_CHECK(listed->front().processes == std::optional<std::int64_t>(1));
    HOST_ASSERT(backend->stop_instance(*handle));
    backend.reset();
    HOST_CHECK(subdirectories(parent.path() + "/host").empty()) << "the backend's directories outlived it";
    HOST_CHECK(cgroup_of(getpid()) == in_hierarchy(parent.path() + "/host")) << "modkit moved the host";
  });
  EXPECT_EQ(parent.descendants(), std::vector<std::string>{parent.path() + "/host"});
}

TEST(ContainmentSetup, AutomaticModeStaysUncontainedWhenTheHostsCgroupIsReadOnly) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  RUN_IN_HOST(Ms(20000), [&] {
    enter_host_cgroup(parent);
    // Read-only in a private mount namespace only: nobody else sees it.
    if (unshare(CLONE_NEWNS) != 0) HOST_SKIP() << "unshare(CLONE_NEWNS): " << std::strerror(errno);
    HOST_ASSERT(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) << std::strerror(errno);
    HOST_ASSERT(mount(nullptr, cgroup2_mount().c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) == 0)
        << std::strerror(errno);
    HOST_ASSERT(mkdir((parent.path() + "/host/probe").c_str(), 0755) != 0 && errno == EROFS);

    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    auto backend = create_backend(token, sink, short_options());
    HOST_CHECK(said(*sink, "instances are not contained: the host's cgroup '" + parent.path() + "/host' is not writable"))
        << "the automatic mode must say once why it runs uncontained";
    auto handle = backend->spawn_instance(hostile_config("uncontained", {"sleep", "30"}));
    HOST_ASSERT(handle) << handle.error();
    HOST_CHECK(cgroup_of(pid_of(*handle)) == in_hierarchy(parent.path() + "/host")) << "runs beside the host";
    auto listed = backend->list_instances("uncontained");
    HOST_ASSERT(listed && listed->size() == 1);
    HOST_CHECK(!listed->front().processes) << "no count without a cgroup of its own";
    HOST_ASSERT(backend->stop_instance(*handle));
    backend.reset();

    LocalProcessOptions required = short_options();
    required.containment = Containment::Required;
    auto refused = LocalProcessBackend::create(token, sink, required);
    HOST_CHECK(!refused) << "Required must not run uncontained";
    if (!refused) {
      HOST_CHECK(refused.error().message.find("not writable") != std::string::npos) << refused.error();
    }

    LocalProcessOptions named = short_options();
    named.cgroup_parent = parent.path();
    auto read_only = LocalProcessBackend::create(token, sink, named);
    HOST_ASSERT(!read_only) << "a cgroup_parent that cannot be used is an error, not a silent fallback";
    HOST_CHECK(read_only.error().code == std::errc::read_only_file_system) << read_only.error();
    HOST_CHECK(read_only.error().message.find(parent.path()) != std::string::npos) << read_only.error();
  });
  EXPECT_EQ(parent.descendants(), std::vector<std::string>{parent.path() + "/host"}) << "nothing was made";
}

TEST(ContainmentSetup, ChildJoinsItsCgroupFromInsideWhenClone3IsHidden) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  RUN_IN_HOST(Ms(20000), [&] {
    if (!hide_clone3()) HOST_SKIP() << "cannot install a seccomp filter: " << std::strerror(errno);
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    LocalProcessOptions options = short_options();
    options.cgroup_parent = parent.path();
    auto backend = create_backend(token, sink, options);
    for (int round = 0; round < 3; ++round) {  // the fallback is remembered: the later spawns take it at once
      auto handle = backend->spawn_instance(hostile_config("joined", {"out", "up", "sleep", "30"}));
      HOST_ASSERT(handle) << handle.error();
      HOST_ASSERT(sink->wait_for_line(handle->instance_id, "up", Ms(5000)));
      std::string actual = cgroup_of(pid_of(*handle));
      HOST_CHECK(actual.rfind(in_hierarchy(parent.path()) + "/modkit-", 0) == 0 &&
                 actual.find(handle->instance_id) != std::string::npos)
          << "the module runs in " << actual;
      auto stopped = backend->stop_instance(*handle);
      HOST_ASSERT(stopped && stopped->has_value()) << (stopped ? "no status" : stopped.error().message);
    }
    backend.reset();
  });
  EXPECT_TRUE(parent.descendants().empty());
}

TEST(ContainmentSetup, CgroupTheChildMayNotEnterIsASpawnErrorNamingIt) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  // Delegated to uid 65534 (its directory and cgroup.procs), while the host
  // stays in a cgroup it does not own: moving a process needs write access to
  // the common ancestor's cgroup.procs too, so every spawn must fail.
  ASSERT_EQ(chown(parent.path().c_str(), kNobody, kNobody), 0);
  ASSERT_EQ(chown((parent.path() + "/cgroup.procs").c_str(), kNobody, kNobody), 0);
  RUN_IN_HOST(Ms(20000), [&] {
    if (!drop_to_nobody()) HOST_SKIP() << "cannot become uid 65534";
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    LocalProcessOptions options = short_options();
    options.cgroup_parent = parent.path();
    auto backend = create_backend(token, sink, options);
    for (bool hidden : {false, true}) {
      if (hidden && !hide_clone3()) HOST_SKIP() << "cannot install a seccomp filter";
      auto handle = backend->spawn_instance(hostile_config("refused", {"sleep", "30"}));
      HOST_ASSERT(!handle) << (hidden ? "(clone3 hidden) " : "(clone3) ") << "the spawn succeeded";
      HOST_CHECK(handle.error().code == std::errc::permission_denied) << handle.error();
      HOST_CHECK(handle.error().message.find("cgroup '" + parent.path() + "/modkit-") != std::string::npos)
          << "the error must name the cgroup: " << handle.error();
      if (hidden) {
        HOST_CHECK(handle.error().message.find("cannot enter cgroup") != std::string::npos) << handle.error();
      }
      HOST_CHECK(wait_no_children(Ms(2000))) << "the failed child was left unreaped";
      for (const auto& backend_directory : subdirectories(parent.path())) {
        HOST_CHECK(subdirectories(parent.path() + "/" + backend_directory).empty())
            << "the failed spawn's cgroup was left behind";
      }
    }
    backend.reset();
  });
  EXPECT_TRUE(parent.descendants().empty());
}

// Without /proc the backend cannot read its start time; its directory must
// still carry a name a later backend recognises, so that what a crashed host
// left is cleaned.
TEST(ContainmentSetup, DirectoryOfABackendMadeWithoutProcIsCleanedAfterItsHostDied) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  RUN_IN_HOST(Ms(20000), [&] {
    if (unshare(CLONE_NEWNS) != 0) HOST_SKIP() << "unshare(CLONE_NEWNS): " << std::strerror(errno);
    HOST_ASSERT(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) << std::strerror(errno);
    HOST_ASSERT(mount("none", "/proc", "tmpfs", 0, "size=16k") == 0) << std::strerror(errno);
    LocalProcessOptions options = short_options();
    options.cgroup_parent = parent.path();
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    auto backend = create_backend(token, sink, options);
    auto made = subdirectories(parent.path());
    HOST_ASSERT(made.size() == 1);
    HOST_CHECK(made[0] == "modkit-" + std::to_string(getpid()) + "-0-1") << made[0];
    // The host "crashes": nothing is torn down, and the lock dies with the
    // host process when the scenario ends.
    (void)backend.release();
  });
  auto sink = std::make_shared<RecordingSink>();
  LocalProcessOptions options = short_options();
  options.cgroup_parent = parent.path();
  {
    auto later = LocalProcessBackend::create(CancellationToken(), sink, options);
    ASSERT_TRUE(later) << later.error();
    EXPECT_EQ(subdirectories(parent.path()).size(), 1u) << "only the later backend's own directory";
  }
  EXPECT_TRUE(parent.descendants().empty());
}

// With SIGCHLD ignored the kernel reaps the module itself; what it left in
// its cgroup must still get the graceful step of a stop, not just the kill.
TEST(ContainmentSetup, RemnantsOfAChildReapedBySigchldIgnoredStillGetTheGracefulStep) {
  TestCgroupParent parent;
  if (!parent) GTEST_SKIP() << "needs root and a cgroup v2 hierarchy";
  char directory_template[] = "/tmp/modkit-remnant-XXXXXX";
  ASSERT_NE(mkdtemp(directory_template), nullptr);
  std::string marks = directory_template;
  RUN_IN_HOST(Ms(20000), [&] {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    HOST_ASSERT(sigaction(SIGCHLD, &ignore, nullptr) == 0);
    LocalProcessOptions options = short_options();
    options.cgroup_parent = parent.path();
    options.stop_grace = Ms(3000);
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    auto backend = create_backend(token, sink, options);
    OopModuleConfig config("remnant", BackendKind::LocalProcess);
    config.binary = "/bin/sh";
    config.env["MARKS"] = marks;
    config.args = {"-c",
                   "setsid sh -c 'trap \"echo term > $MARKS/got; exit 0\" TERM; echo up > $MARKS/up; "
                   "while :; do sleep 0.05; done' </dev/null >/dev/null 2>&1 & exit 0"};
    auto handle = backend->spawn_instance(config);
    HOST_ASSERT(handle) << handle.error();
    HOST_ASSERT(wait_until([&] { return access((marks + "/up").c_str(), F_OK) == 0; }, Ms(5000)));
    auto start = Clock::now();
    auto stopped = backend->stop_instance(*handle);
    double took = seconds_between(start, Clock::now());
    HOST_ASSERT(stopped) << stopped.error();
    HOST_CHECK(read_text_file(marks + "/got") == "term\n") << "the remnant was killed without its SIGTERM";
    HOST_CHECK(took < 2.0) << "the remnant obeyed SIGTERM at once, yet the stop took " << took << " s";
  });
  unlink((marks + "/up").c_str());
  unlink((marks + "/got").c_str());
  rmdir(marks.c_str());
  EXPECT_TRUE(parent.descendants().empty());
}

#endif  // !_WIN32
