// POSIX (Linux) process creation: clone(CLONE_VM | CLONE_VFORK), the same
// technique glibc's posix_spawn uses, so the cost does not grow with the
// host's memory the way fork() page-table copies do.
//
// Between clone and execve the child shares the parent's memory and TLS, so
// it runs only raw system calls on data prepared before the clone: no malloc,
// no locks, no libc wrappers that sanitizers intercept (TSan's close() and
// sigaction() interceptors would touch the parent's shadow state).
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "platform/process.hpp"
#include "platform/system.hpp"
#include "posix/cgroup_containment.hpp"
#include "posix/cgroup_limits.hpp"
#include "core/text.hpp"
#include "posix/environment.hpp"
#include "posix/pidfd.hpp"
#include "posix/pipe_holders.hpp"
#include "posix/pipe_reader.hpp"
#include "posix/unique_fd.hpp"

extern char** environ;

namespace modkit::platform {
namespace {

using posix::UniqueFd;

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// What the child reports through the error pipe when a step fails.
enum class ChildStage : int {
  ProcessGroup = 1,
  Descriptors,
  WorkingDirectory,
  CloseDescriptors,
  Exec,
  Cgroup,
  Rlimit,  // detail: the index in ChildPlan::rlimits
  SupplementaryGroups,
  GroupId,
  UserId,
  IdentityCheck,
  NoNewPrivileges,
  ParentDeathSignal,
};

struct ChildFailure {
  ChildStage stage;
  int error;
  int detail;
};

struct KernelRlimit {
  unsigned long long current, maximum;
};

// The rlimits ResourceLimits can set, in the order the child sets them.
constexpr int kMaxChildRlimits = 7;
struct ChildRlimit {
  int resource;
  KernelRlimit value;
};

// Everything the child touches, prepared by the parent before the clone.
struct ChildPlan {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* working_directory;  // or nullptr
  int stdin_fd, stdout_fd, stderr_fd;  // all >= 3
  int error_fd;                        // >= 3 (>= 4 with notify_fd), O_CLOEXEC
  int cgroup_procs_fd;                 // -1, or the cgroup.procs to join (when clone3 could not)
  int notify_fd;                       // -1, or the notification pipe's write end (>= 4), for descriptor 3
  int first_closed;                    // 3, or 4 when descriptor 3 is the notification pipe
  ChildRlimit rlimits[kMaxChildRlimits];
  int rlimit_count;
  long umask_value;  // -1: keep
  // Identity, in the order the child applies it (each -1 / false: keep).
  bool set_groups;
  const unsigned int* groups;
  long group_count;
  long group_id, user_id;
  bool no_new_privileges;
  bool die_with_host;
  long parent_pid;  // getpid() before the clone, for the parent-death check
};

// The kernel's struct sigaction for rt_sigaction (not glibc's, whose layout differs).
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  unsigned long mask;
};

struct KernelTimespec {
  long long seconds, nanoseconds;
};

struct LinuxDirent64 {
  unsigned long long d_ino;
  long long d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

#define MODKIT_CHILD_CODE __attribute__((no_sanitize_address, no_sanitize_thread, no_sanitize_undefined, noinline))

// The child runs on the parent thread's TLS (CLONE_VM without CLONE_SETTLS),
// so libc's syscall() would write the *parent's* errno on every failure. These
// return -errno instead and touch no memory but their arguments.
// Five arguments, all always passed: prctl(PR_SET_NO_NEW_PRIVS) fails with
// EINVAL unless the unused ones are zero.
#if defined(__x86_64__)
MODKIT_CHILD_CODE long raw_syscall(long number, long a, long b, long c, long d, long e) {
  long result;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  __asm__ volatile("syscall"
                   : "=a"(result)
                   : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                   : "rcx", "r11", "memory");
  return result;
}
#elif defined(__aarch64__)
MODKIT_CHILD_CODE long raw_syscall(long number, long a, long b, long c, long d, long e) {
  register long x8 __asm__("x8") = number;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
  return x0;
}
#else
// Other architectures: libc's syscall(); spawn() restores the parent's errno.
MODKIT_CHILD_CODE long raw_syscall(long number, long a, long b, long c, long d, long e) {
  long result = syscall(number, a, b, c, d, e);
  return result == -1 ? -errno : result;
}
#endif

template <typename A = long, typename B = long, typename C = long, typename D = long, typename E = long>
MODKIT_CHILD_CODE long sys(long number, A a = 0, B b = 0, C c = 0, D d = 0, E e = 0) {
  return raw_syscall(number, (long)a, (long)b, (long)c, (long)d, (long)e);  // NOLINT: raw register values
}

// The 32-bit identity calls where the plain ones take 16-bit ids (i386, arm).
#ifdef SYS_setresuid32
constexpr long kSetresuid = SYS_setresuid32, kSetresgid = SYS_setresgid32, kGetresuid = SYS_getresuid32,
               kGetresgid = SYS_getresgid32, kSetgroups = SYS_setgroups32;
#else
constexpr long kSetresuid = SYS_setresuid, kSetresgid = SYS_setresgid, kGetresuid = SYS_getresuid,
               kGetresgid = SYS_getresgid, kSetgroups = SYS_setgroups;
#endif

MODKIT_CHILD_CODE void child_fail(const ChildPlan& plan, ChildStage stage, long negative_error, int detail = 0) {
  ChildFailure failure{stage, static_cast<int>(-negative_error), detail};
  sys(SYS_write, plan.error_fd, &failure, sizeof failure);
  sys(SYS_exit, 127);
}

// Closes every descriptor from plan.first_closed on but the error pipe. Tried
// in order: mark all close-on-exec (Linux 5.11), close two ranges (5.9), list
// /proc/self/fd, and finally a loop to the descriptor limit.
MODKIT_CHILD_CODE bool child_close_descriptors(const ChildPlan& plan) {
  const auto first = static_cast<unsigned>(plan.first_closed);
  if (sys(SYS_close_range, first, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return true;
  if (sys(SYS_close_range, first, static_cast<unsigned>(plan.error_fd - 1), 0U) == 0 &&
      sys(SYS_close_range, static_cast<unsigned>(plan.error_fd + 1), ~0U, 0U) == 0) {
    return true;
  }
  long dir = sys(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    alignas(8) char buffer[1024];
    for (;;) {
      long size = sys(SYS_getdents64, dir, buffer, sizeof buffer);
      if (size <= 0) break;
      for (long offset = 0; offset < size;) {
        auto* entry = reinterpret_cast<LinuxDirent64*>(buffer + offset);
        offset += entry->d_reclen;
        int fd = 0;
        const char* digit = entry->d_name;
        if (*digit < '0' || *digit > '9') continue;
        for (; *digit >= '0' && *digit <= '9'; ++digit) fd = fd * 10 + (*digit - '0');
        if (fd >= plan.first_closed && fd != plan.error_fd && fd != dir) sys(SYS_close, fd);
      }
    }
    sys(SYS_close, dir);
    return true;
  }
  // Kernels before 5.9 without a usable /proc: ask poll() which descriptors
  // are open (a closed one comes back POLLNVAL), a chunk at a time up to
  // RLIMIT_NOFILE (capped), and close only those: a plain loop to the limit
  // could run for seconds with a huge RLIMIT_NOFILE.
  KernelRlimit limit{65536, 65536};
  sys(SYS_prlimit64, 0, RLIMIT_NOFILE, nullptr, &limit);
  constexpr unsigned long long kScanCap = 1ULL << 20;
  unsigned long long end = limit.current < kScanCap ? limit.current : kScanCap;
  constexpr int kChunk = 128;
  pollfd chunk[kChunk];
  KernelTimespec zero{0, 0};
  for (unsigned long long base = first; base < end; base += kChunk) {
    int count = end - base < kChunk ? static_cast<int>(end - base) : kChunk;
    for (int i = 0; i < count; ++i) {
      chunk[i].fd = static_cast<int>(base) + i;
      chunk[i].events = 0;
      chunk[i].revents = 0;
    }
    if (sys(SYS_ppoll, chunk, count, &zero, nullptr) < 0) continue;
    for (int i = 0; i < count; ++i) {
      if (!(chunk[i].revents & POLLNVAL) && chunk[i].fd != plan.error_fd) sys(SYS_close, chunk[i].fd);
    }
  }
  return true;
}

// Limits first (raising a hard limit above the host's needs the privilege
// the identity change drops), then the identity: groups before the user id,
// which gives up the right to change them. Every step is checked; the first
// failure ends the child before exec, so nothing runs half-configured.
MODKIT_CHILD_CODE void child_limit_and_drop(const ChildPlan& plan) {
  for (int i = 0; i < plan.rlimit_count; ++i) {
    if (long error = sys(SYS_prlimit64, 0, plan.rlimits[i].resource, &plan.rlimits[i].value, nullptr); error != 0) {
      child_fail(plan, ChildStage::Rlimit, error, i);
    }
  }
  if (plan.umask_value >= 0) sys(SYS_umask, plan.umask_value);
  if (plan.set_groups) {
    if (long error = sys(kSetgroups, plan.group_count, plan.groups); error != 0) {
      child_fail(plan, ChildStage::SupplementaryGroups, error);
    }
  }
  if (plan.group_id >= 0) {
    if (long error = sys(kSetresgid, plan.group_id, plan.group_id, plan.group_id); error != 0) {
      child_fail(plan, ChildStage::GroupId, error);
    }
  }
  if (plan.user_id >= 0) {
    if (long error = sys(kSetresuid, plan.user_id, plan.user_id, plan.user_id); error != 0) {
      child_fail(plan, ChildStage::UserId, error);
    }
  }
  if (plan.group_id >= 0 || plan.user_id >= 0) {
    unsigned int ids[3] = {0, 0, 0};
    if (plan.group_id >= 0) {
      sys(kGetresgid, &ids[0], &ids[1], &ids[2]);
      for (unsigned int id : ids) {
        if (id != static_cast<unsigned int>(plan.group_id)) child_fail(plan, ChildStage::IdentityCheck, -EPERM);
      }
    }
    if (plan.user_id >= 0) {
      sys(kGetresuid, &ids[0], &ids[1], &ids[2]);
      for (unsigned int id : ids) {
        if (id != static_cast<unsigned int>(plan.user_id)) child_fail(plan, ChildStage::IdentityCheck, -EPERM);
      }
    }
  }
  if (plan.no_new_privileges) {
    if (long error = sys(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); error != 0) {
      child_fail(plan, ChildStage::NoNewPrivileges, error);
    }
  }
  // After the identity change, which clears the parent-death signal. It
  // fires when the thread that cloned us ends (prctl(2)); should the host
  // have died already we were reparented and nobody would send it.
  if (plan.die_with_host) {
    if (long error = sys(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); error != 0) {
      child_fail(plan, ChildStage::ParentDeathSignal, error);
    }
    if (sys(SYS_getppid) != plan.parent_pid) sys(SYS_exit, 127);
  }
}

MODKIT_CHILD_CODE int child_main(void* argument) {
  const ChildPlan& plan = *static_cast<const ChildPlan*>(argument);

  // Into the instance's cgroup first, so that whatever it starts is inside.
  if (plan.cgroup_procs_fd >= 0) {
    if (long error = sys(SYS_write, plan.cgroup_procs_fd, "0", 1); error < 0) {
      child_fail(plan, ChildStage::Cgroup, error);
    }
  }

  // Lead a new process group, so stopping reaches every descendant.
  if (long error = sys(SYS_setpgid, 0, 0); error != 0) child_fail(plan, ChildStage::ProcessGroup, error);

  // Default dispositions for 1..64, real-time signals included (an ignored
  // signal would survive exec; CLONE_VM without CLONE_SIGHAND, so this is the
  // child's own table), then an empty mask (the parent blocked everything
  // around the clone).
  KernelSigaction default_action{};
  default_action.handler = SIG_DFL;
  for (int signal_number = 1; signal_number <= 64; ++signal_number) {
    if (signal_number == SIGKILL || signal_number == SIGSTOP) continue;
    sys(SYS_rt_sigaction, signal_number, &default_action, nullptr, sizeof(unsigned long));
  }
  unsigned long empty_mask = 0;
  sys(SYS_rt_sigprocmask, SIG_SETMASK, &empty_mask, nullptr, sizeof empty_mask);

  // All sources are >= 3, so dup3 never sees equal descriptors; the copies
  // on 0, 1 and 2 are not close-on-exec.
  for (int target = 0; target < 3; ++target) {
    int source = target == 0 ? plan.stdin_fd : target == 1 ? plan.stdout_fd : plan.stderr_fd;
    if (long error = sys(SYS_dup3, source, target, 0); error < 0) child_fail(plan, ChildStage::Descriptors, error);
  }
  // The notification pipe on 3 (its source is >= 4, so never equal), not
  // close-on-exec; the close step below starts at 4.
  if (plan.notify_fd >= 0) {
    if (long error = sys(SYS_dup3, plan.notify_fd, 3, 0); error < 0) child_fail(plan, ChildStage::Descriptors, error);
  }
  // Before the limits and the identity change: the fallbacks read
  // RLIMIT_NOFILE (which open_files lowers) and /proc/self/fd (which a
  // process that changed its user may no longer open: it is not dumpable).
  child_close_descriptors(plan);
  child_limit_and_drop(plan);
  // After the identity change, so that the module's user must be able to
  // enter it (as systemd does with WorkingDirectory=).
  if (plan.working_directory != nullptr) {
    if (long error = sys(SYS_chdir, plan.working_directory); error != 0) {
      child_fail(plan, ChildStage::WorkingDirectory, error);
    }
  }
  long error = sys(SYS_execve, plan.path, plan.argv, plan.envp);
  child_fail(plan, ChildStage::Exec, error);
  return 127;
}

// clone3(2) (Linux 5.3; CLONE_INTO_CGROUP 5.7), which glibc does not export:
// the child starts in its cgroup, so not even its first instruction runs
// outside it. The child begins on `stack` with nothing to return to, so the
// trampoline calls child_main itself and exits with its result. x86-64 only;
// elsewhere the child joins by writing to cgroup.procs (ChildPlan).
struct CloneArgs {
  unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
      cgroup;
};
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#if defined(__x86_64__) && defined(SYS_clone3)
#define MODKIT_HAVE_CLONE3 1
MODKIT_CHILD_CODE long clone3_call(CloneArgs* args, int (*function)(void*), void* argument) {
  long result;
  // syscall keeps every register but rax, rcx and r11, in both processes.
  register long function_register __asm__("r8") = reinterpret_cast<long>(function);
  register long argument_register __asm__("r9") = reinterpret_cast<long>(argument);
  __asm__ volatile(
      "syscall\n\t"
      "test %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "xor %%ebp, %%ebp\n\t"
      "mov %%r9, %%rdi\n\t"
      "call *%%r8\n\t"
      "mov %%eax, %%edi\n\t"
      "mov $60, %%eax\n\t"
      "syscall\n\t"
      "ud2\n"
      "1:\n\t"
      : "=a"(result)
      : "a"(SYS_clone3), "D"(args), "S"(sizeof(CloneArgs)), "r"(function_register), "r"(argument_register)
      : "rcx", "r11", "memory");
  return result;
}
#endif

// --- Parent side helpers ---------------------------------------------------

#if defined(__SANITIZE_THREAD__)
#define MODKIT_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MODKIT_UNDER_TSAN 1
#endif
#endif

using CloneFunction = int (*)(int (*)(void*), void*, int, void*, ...);

#ifdef MODKIT_HAVE_CLONE3
std::atomic<bool> clone3_unusable{false};  // learnt once per process
#endif

// ThreadSanitizer intercepts clone() and handles every call as a fork: it runs
// its after-fork hooks in the child, which here shares our memory, and then
// aborts the parent ("starting new threads after multi-threaded fork"). Its
// builds call libc's clone directly; the child runs no instrumented code.
CloneFunction libc_clone() {
#ifdef MODKIT_UNDER_TSAN
  static CloneFunction function = [] {
    void* libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void* symbol = libc ? dlsym(libc, "clone") : nullptr;
    return symbol ? reinterpret_cast<CloneFunction>(symbol) : &::clone;
  }();
  return function;
#else
  return &::clone;
#endif
}

// Out of line and with the pieces unjoined: spawn has many error returns,
// and each is then one call rather than a chain of string temporaries.
Error module_error(std::error_code code, const std::string& module, std::initializer_list<std::string_view> what) {
  std::string text = core::concat({"module '", module, "': "});
  core::append(text, what);
  return Error{code, std::move(text)};
}

Error spawn_error(const SpawnRequest& request, std::initializer_list<std::string_view> what, int error) {
  std::error_code code(error, std::generic_category());
  Error result = module_error(code, request.module, what);
  core::append(result.message, {": ", code.message()});
  return result;
}

Error spawn_error(const SpawnRequest& request, std::string_view what, int error) {
  return spawn_error(request, {what}, error);
}

// Moves a descriptor to >= 3 (keeping O_CLOEXEC), so that dup3 onto 0..2 in
// the child can never clobber a source. Matters when the host closed stdin.
bool lift_above_stdio(UniqueFd& fd, int lowest = 3) {
  if (fd.get() >= lowest) return true;
  int lifted = fcntl(fd.get(), F_DUPFD_CLOEXEC, lowest);
  if (lifted < 0) return false;
  fd.reset(lifted);
  return true;
}

struct Pipe {
  UniqueFd read_end, write_end;
};

bool make_pipe(Pipe& pipe) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return false;
  pipe.read_end.reset(fds[0]);
  pipe.write_end.reset(fds[1]);
  return lift_above_stdio(pipe.read_end) && lift_above_stdio(pipe.write_end);
}

bool is_executable_file(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && access(path.c_str(), X_OK) == 0;
}

// A name without '/' is looked up on the PATH the child will have, else the
// host's, else the POSIX default.
Result<std::string> resolve_binary(const SpawnRequest& request, const std::vector<std::string>& environment) {
  if (request.binary.find('/') != std::string::npos) return request.binary;
  const char* search = posix::find_in_environment(environment, "PATH");
  if (search == nullptr) search = getenv("PATH");
  if (search == nullptr) search = "/usr/local/bin:/usr/bin:/bin";
  std::string_view rest(search);
  for (;;) {
    std::size_t colon = rest.find(':');
    std::string_view directory = rest.substr(0, colon);
    std::string candidate = directory.empty() ? std::string(".") : std::string(directory);
    candidate += '/';
    candidate += request.binary;
    if (is_executable_file(candidate)) return candidate;
    if (colon == std::string_view::npos) break;
    rest.remove_prefix(colon + 1);
  }
  return module_error(std::make_error_code(std::errc::no_such_file_or_directory), request.module,
                      {"'", request.binary, "' not found on PATH (", search, ")"});
}

Result<void> check_working_directory(const SpawnRequest& request) {
  if (!request.working_directory) return {};
  struct stat info;
  if (stat(request.working_directory->c_str(), &info) != 0) {
    return spawn_error(request, {"working directory '", *request.working_directory, "' is not usable"}, errno);
  }
  if (!S_ISDIR(info.st_mode)) {
    return spawn_error(request, {"working directory '", *request.working_directory, "' is not a directory"}, ENOTDIR);
  }
  return {};
}

ExitStatus decode_siginfo(const siginfo_t& info) {
  ExitStatus result;
  if (info.si_code == CLD_EXITED) {
    result.kind = ExitStatus::Kind::Exited;
  } else {
    result.kind = ExitStatus::Kind::Signaled;
  }
  result.code = info.si_status;
  return result;
}


#ifndef P_PIDFD
#define P_PIDFD 3
#endif

// --- Limits and identity, parent side ---------------------------------------

struct RlimitField {
  const char* field;
  int resource;
};

// What the child's rlimits[] hold, by index (for the error message).
struct PlannedLimits {
  const char* fields[kMaxChildRlimits] = {};
  std::vector<std::string> not_applied;  // BestEffort: "limits.x (why)"
};

// Soft and hard alike, so the module cannot raise a limit again; but for CPU
// time, whose soft limit sends SIGXCPU (which a module may catch to save its
// work) and whose hard limit, a second later, SIGKILL.
void plan_rlimits(const ResourceLimits& limits, ChildPlan& plan, PlannedLimits& planned) {
  auto add = [&](const char* field, int resource, std::uint64_t soft, std::uint64_t hard) {
    planned.fields[plan.rlimit_count] = field;
    plan.rlimits[plan.rlimit_count++] = ChildRlimit{resource, KernelRlimit{soft, hard}};
  };
  if (limits.address_space) add("limits.address_space", RLIMIT_AS, *limits.address_space, *limits.address_space);
  if (limits.data_size) add("limits.data_size", RLIMIT_DATA, *limits.data_size, *limits.data_size);
  if (limits.cpu_time) {
    auto seconds = static_cast<std::uint64_t>(limits.cpu_time->count());
    // The grace second only where the host's own hard limit leaves room for
    // it: a cpu_time equal to that limit is within it, and is honoured.
    struct rlimit own {};
    std::uint64_t hard = seconds + 1;
    if (getrlimit(RLIMIT_CPU, &own) == 0 && own.rlim_max != RLIM_INFINITY && hard > own.rlim_max && seconds <= own.rlim_max) {
      hard = seconds;
    }
    add("limits.cpu_time", RLIMIT_CPU, seconds, hard);
  }
  if (limits.open_files) add("limits.open_files", RLIMIT_NOFILE, *limits.open_files, *limits.open_files);
  if (limits.file_size) add("limits.file_size", RLIMIT_FSIZE, *limits.file_size, *limits.file_size);
  if (limits.core_size) add("limits.core_size", RLIMIT_CORE, *limits.core_size, *limits.core_size);
  if (limits.user_processes) add("limits.user_processes", RLIMIT_NPROC, *limits.user_processes, *limits.user_processes);
}

// The limits this spawn cannot enforce (the group limits without their
// controller, RLIMIT_NPROC for root): an error under Required; under
// BestEffort they are cleared from `limits` and listed.
Result<void> settle_group_limits(const SpawnRequest& request, const posix::CgroupCell* cell, ResourceLimits& limits,
                                 PlannedLimits& planned) {
  std::vector<std::string> missing;
  // RLIMIT_NPROC binds no process with CAP_SYS_RESOURCE or CAP_SYS_ADMIN
  // (kernel/fork.c): a module that runs as root would not feel it.
  const bool runs_as_root = request.privileges.user ? *request.privileges.user == 0 : geteuid() == 0;
  if (limits.user_processes && runs_as_root) {
    missing.push_back("limits.user_processes (the module runs as root, which RLIMIT_NPROC does not bind: set "
                      "privileges.user)");
  }
  if (cell) {
    auto group = posix::unenforceable_cgroup_limits(cell->directory_fd(), cell->path(), limits);
    missing.insert(missing.end(), group.begin(), group.end());
  } else {
    const char* why = " (no cgroup for this instance: see Containment)";
    if (limits.memory_max) missing.push_back(core::concat({"limits.memory_max", why}));
    if (limits.memory_high) missing.push_back(core::concat({"limits.memory_high", why}));
    if (limits.cpu_percent) missing.push_back(core::concat({"limits.cpu_percent", why}));
    if (limits.max_processes) missing.push_back(core::concat({"limits.max_processes", why}));
  }
  if (missing.empty()) return {};
  if (limits.enforcement == ResourceLimits::Enforcement::Required) {
    Error error = module_error(std::make_error_code(std::errc::not_supported), request.module, {"cannot enforce "});
    for (std::size_t i = 0; i < missing.size(); ++i) core::append(error.message, {i ? "; " : "", missing[i]});
    error.message += " (limits.enforcement is Required)";
    return error;
  }
  for (const auto& entry : missing) {
    if (entry.rfind("limits.memory_max", 0) == 0) limits.memory_max.reset();
    if (entry.rfind("limits.memory_high", 0) == 0) limits.memory_high.reset();
    if (entry.rfind("limits.cpu_percent", 0) == 0) limits.cpu_percent.reset();
    if (entry.rfind("limits.max_processes", 0) == 0) limits.max_processes.reset();
    if (entry.rfind("limits.user_processes", 0) == 0) limits.user_processes.reset();
  }
  planned.not_applied = std::move(missing);
  return {};
}

void plan_identity(const Privileges& privileges, ChildPlan& plan) {
  plan.umask_value = privileges.umask ? static_cast<long>(*privileges.umask) : -1;
  plan.group_id = privileges.group ? static_cast<long>(*privileges.group) : -1;
  plan.user_id = privileges.user ? static_cast<long>(*privileges.user) : -1;
  // A new identity drops the host's supplementary groups unless some are given.
  plan.set_groups = privileges.supplementary_groups || privileges.user || privileges.group;
  if (privileges.supplementary_groups && !privileges.supplementary_groups->empty()) {
    static_assert(sizeof(std::uint32_t) == sizeof(unsigned int), "gid list layout");
    plan.groups = reinterpret_cast<const unsigned int*>(privileges.supplementary_groups->data());
    plan.group_count = static_cast<long>(privileges.supplementary_groups->size());
  }
  plan.no_new_privileges = privileges.no_new_privileges;
  plan.die_with_host = privileges.die_with_host;
  plan.parent_pid = getpid();
}

// The kernel clears the parent-death signal when execve raises privilege (a
// set-user-id or set-group-id file, or file capabilities: prctl(2)), so such
// a module would outlive the host in silence. Under no_new_privs nothing is
// raised and the signal holds. The file may change before the exec; this
// catches the configuration mistake, not a race with the file's owner.
Result<void> check_parent_death(const SpawnRequest& request, const std::string& path) {
  const Privileges& privileges = request.privileges;
  if (!privileges.die_with_host || privileges.no_new_privileges) return {};
  struct stat info;
  bool raises = stat(path.c_str(), &info) == 0 && (info.st_mode & (S_ISUID | S_ISGID)) != 0;
  raises = raises || getxattr(path.c_str(), "security.capability", nullptr, 0) > 0;
  if (!raises) return {};
  return module_error(std::make_error_code(std::errc::invalid_argument), request.module,
                      {"privileges.die_with_host cannot hold for '", path,
                       "', which is set-user-id, set-group-id or has file capabilities (the kernel clears the "
                       "parent-death signal when it runs): set privileges.no_new_privileges too"});
}

std::string describe_child_failure(const SpawnRequest& request, const ChildFailure& report,
                                   const PlannedLimits& planned) {
  const Privileges& privileges = request.privileges;
  switch (report.stage) {
    case ChildStage::Rlimit:
      if (report.detail >= 0 && report.detail < kMaxChildRlimits && planned.fields[report.detail]) {
        return std::string("cannot set ") + planned.fields[report.detail] +
               (report.error == EPERM ? " above the host's own hard limit" : "");
      }
      return "cannot set a resource limit";
    case ChildStage::SupplementaryGroups: {
      std::string text = privileges.supplementary_groups
                             ? "cannot set the supplementary groups (privileges.supplementary_groups)"
                             : "cannot drop the host's supplementary groups, which a new privileges.user or "
                               "privileges.group needs";
      // In a user namespace whose setgroups is denied no identity change can drop them.
      if (posix::read_text(AT_FDCWD, "/proc/self/setgroups").rfind("deny", 0) == 0) {
        text += " (setgroups is denied in this user namespace)";
      }
      return text;
    }
    case ChildStage::GroupId:
      return core::concat({"cannot switch to group id ", core::Decimal(privileges.group.value_or(0)), " (privileges.group)"});
    case ChildStage::UserId:
      return core::concat({"cannot switch to user id ", core::Decimal(privileges.user.value_or(0)), " (privileges.user)"});
    case ChildStage::IdentityCheck: return "the identity change did not hold (privileges.user, privileges.group)";
    case ChildStage::NoNewPrivileges: return "cannot set no_new_privs (privileges.no_new_privileges)";
    case ChildStage::ParentDeathSignal: return "cannot set the parent-death signal (privileges.die_with_host)";
    default: return "cannot prepare the child process";
  }
}

// --- The process ------------------------------------------------------------

class PosixProcess final : public Process {
 public:
  PosixProcess(std::string module, pid_t pid, UniqueFd pidfd, GracefulStop graceful_stop, UniqueFd stdin_write,
               std::unique_ptr<PipeReader> out, std::unique_ptr<PipeReader> err, std::vector<ino_t> pipe_inodes,
               std::unique_ptr<posix::CgroupCell> cell, UniqueFd notify_read, std::optional<std::chrono::seconds> cpu_time,
               std::vector<std::string> limits_not_applied, bool memory_limited, std::uint64_t host_peak_kib)
      : module_(std::move(module)),
        pid_(pid),
        pidfd_(std::move(pidfd)),
        graceful_stop_(graceful_stop),
        pipe_inodes_(std::move(pipe_inodes)),
        cell_(std::move(cell)),
        stdin_write_(std::move(stdin_write)),
        stdout_(std::move(out)),
        stderr_(std::move(err)),
        notify_read_(std::move(notify_read)),
        cpu_time_(cpu_time),
        limits_not_applied_(std::move(limits_not_applied)),
        memory_limited_(memory_limited),
        host_peak_kib_(host_peak_kib) {}

  std::vector<std::string> limits_not_applied() const override { return limits_not_applied_; }

  std::optional<ExitStatus::Reason> limit_end() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!peek_locked() || status_->kind != ExitStatus::Kind::Signaled) return std::nullopt;
    // memory.oom.group kills the whole cell with SIGKILL; an oom_kill count
    // alone could be a descendant's while the module itself exited.
    // Only with the module's own memory.max: the count also holds kills by a
    // parent's limit or the global OOM killer.
    if (status_->code == SIGKILL && memory_limited_ && cell_ && posix::read_oom_kills(cell_->directory_fd()) > 0) {
      return ExitStatus::Reason::MemoryLimit;
    }
    if (cpu_time_ && own_cpu_) {
      // RLIMIT_CPU counts the module's own time (not its children's). The
      // kernel checks it against tick-charged time, which on a loaded CPU
      // runs ahead of the runtime /proc reports (a task running when the
      // tick fires is charged the whole tick): seen as a module killed at
      // its 2 s hard limit with 1.9 s in /proc, under a parallel test run.
      // Hence a slack of a tenth. A SIGXCPU or SIGKILL from elsewhere well
      // before the limit is still not the limit.
      const auto slack = [](std::chrono::microseconds limit) {
        return std::max<std::chrono::microseconds>(std::chrono::milliseconds(50), limit / 10);
      };
      const auto used = *own_cpu_;
      if (status_->code == SIGXCPU && used + slack(*cpu_time_) >= *cpu_time_) return ExitStatus::Reason::CpuLimit;
      // The hard limit's SIGKILL, a second after a SIGXCPU the module caught.
      const auto hard = *cpu_time_ + std::chrono::seconds(1);
      if (status_->code == SIGKILL && !killed_ && used + slack(hard) >= hard) return ExitStatus::Reason::CpuLimit;
    }
    return std::nullopt;
  }

  std::int64_t pid() const override { return pid_; }
  std::unique_ptr<PipeReader> take_stdout() override { return std::move(stdout_); }
  std::unique_ptr<PipeReader> take_stderr() override { return std::move(stderr_); }
  std::intptr_t exit_handle() const override { return pidfd_ ? pidfd_.get() : -1; }
  bool exit_waitable() const override { return static_cast<bool>(pidfd_); }
  std::intptr_t notify_handle() const override { return notify_read_ ? notify_read_.get() : -1; }

  Result<bool> request_stop() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reaped_) {
      // Reaped by someone else (SIGCHLD ignored): its group id may be
      // anyone's now, but the cgroup's members are still the instance's.
      if (!cell_ || graceful_stop_ != GracefulStop::Signal) return false;
      return cell_->signal_members({SIGTERM, SIGCONT}, 0) > 0;
    }
    switch (graceful_stop_) {
      case GracefulStop::Signal: {
        auto sent = signal_group(SIGTERM);
        // A stopped (SIGSTOP, SIGTSTP) member would sit on its SIGTERM until
        // the kill: wake it so the graceful step can work.
        ::kill(-pid_, SIGCONT);
        // Members that left the group get both one by one from the cgroup.
        int members = cell_ ? cell_->signal_members({SIGTERM, SIGCONT}, pid_) : 0;
        if (!sent && members == 0) return std::move(sent).error();
        return true;
      }
      case GracefulStop::CloseStdin:
        stdin_write_.reset();
        return true;
      case GracefulStop::None:
        return false;
    }
    return false;
  }

  Result<void> kill_tree() override {
    std::lock_guard<std::mutex> lock(mutex_);
    killed_ = true;
    // The cgroup holds only what this child started, reaped or not; writing
    // its cgroup.kill needs no right to signal its members.
    // An empty one needs nothing (the common case at the end of a stop).
    bool cell_killed = cell_ && (!cell_->populated() || cell_->kill_all());
    if (reaped_) return {};
    auto group = signal_group(SIGKILL);
    if (cell_killed) return {};
    return group;
  }

  std::intptr_t contents_handle() const override { return cell_ ? cell_->events_fd() : -1; }
  bool contents_empty() override { return !cell_ || !cell_->populated(); }
  bool wait_for_contents_empty(std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      // Reading cgroup.events re-arms its poll: it then wakes only on a change.
      if (contents_empty()) return true;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd changed{cell_->events_fd(), POLLPRI, 0};
      ::poll(&changed, 1, static_cast<int>(left.count()) + 1);
    }
  }
  std::optional<std::int64_t> process_count() override {
    if (!cell_) return std::nullopt;
    return cell_->count();
  }

  int kill_output_holders() override {
    if (cell_) return 0;
    int total = 0;
    // A holder may have forked another before it died: search again until
    // a round finds none (bounded, so a fork bomb cannot keep us here).
    for (int round = 0; round < 8; ++round) {
      int killed = posix::kill_write_end_holders(pipe_inodes_, pid_);
      total += killed;
      if (killed == 0) break;
    }
    return total;
  }

  std::optional<ExitStatus> peek_exit() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return peek_locked();
  }

  std::optional<ExitStatus> wait_for_exit(std::chrono::milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto status = peek_exit()) return status;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      if (pidfd_) {
        pollfd ready{pidfd_.get(), POLLIN, 0};
        ::poll(&ready, 1, static_cast<int>(left.count()) + 1);
      } else {
        ::usleep(1000);  // no pidfd (kernel < 5.2): a short sleep, error paths only
      }
    }
  }

  void reap() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reaped_) return;
    siginfo_t info{};
    (void)wait_for_child(info, WEXITED | WNOHANG);
    reaped_ = true;
    stdin_write_.reset();
  }

 private:
  // With mutex_ held and the child unreaped: its pid is reserved, and so is
  // its group id (a zombie leader keeps it).
  Result<void> signal_group(int signal_number) {
    // The leader through its pidfd as well: a module that moved itself to
    // another group (setpgid) would otherwise get nothing, and the stop would
    // wait out the kill bound for a child that never heard of it.
    int leader_error = ESRCH;
#ifdef SYS_pidfd_send_signal
    if (pidfd_ && !status_) {  // an exited leader needs no signal, only its group does
      leader_error = syscall(SYS_pidfd_send_signal, pidfd_.get(), signal_number, nullptr, 0) == 0 ? 0 : errno;
    }
#endif
    if (::kill(-pid_, signal_number) == 0 || leader_error == 0) return {};
    int group_error = errno;
    // Nobody there at all (an empty group, the leader gone): nothing to stop.
    if (group_error == ESRCH && leader_error == ESRCH) return {};
    int error = group_error == EPERM || leader_error == EPERM ? EPERM : group_error;
    const core::Decimal pid(pid_);
    return module_error(std::make_error_code(error == EPERM ? std::errc::operation_not_permitted : std::errc::io_error),
                        module_, {"cannot signal pid ", pid, " (process group ", pid, "): ",
                                  std::generic_category().message(error)});
  }

  // waitid on our child, through P_PIDFD (Linux 5.4) where we can: should
  // the host have reaped it behind our back and the pid been reused, P_PID
  // could wait for (or reap) one of the host's children. Retries EINTR.
  // The system call rather than libc's waitid, for its fifth argument: the
  // child's rusage, filled for a zombie even with WNOWAIT.
  int wait_for_child(siginfo_t& info, int options, struct rusage* usage = nullptr) {
    long result;
    do {
      result = pidfd_ ? syscall(SYS_waitid, P_PIDFD, pidfd_.get(), &info, options, usage) : -1;
      if (result != 0 && (!pidfd_ || errno == EINVAL)) {
        result = syscall(SYS_waitid, P_PID, pid_, &info, options, usage);
      }
    } while (result != 0 && errno == EINTR);
    return static_cast<int>(result);
  }

  // Fields 14 and 15 of /proc/<pid>/stat: the process's own user and system
  // time, without its children's. Unreaped, the pid is still the module's.
  std::optional<std::chrono::microseconds> zombie_cpu_time() const {
    std::string stat = posix::read_text(AT_FDCWD, core::concat({"/proc/", core::Decimal(pid_), "/stat"}).c_str());
    std::size_t paren = stat.rfind(')');
    if (paren == std::string::npos) return std::nullopt;
    std::vector<long long> fields;
    const char* cursor = stat.c_str() + paren + 2;
    for (int field = 3; field <= 15 && *cursor; ++field) {
      char* end = nullptr;
      long long value = std::strtoll(cursor, &end, 10);
      fields.push_back(end == cursor ? 0 : value);
      cursor = std::strchr(cursor, ' ');
      if (!cursor) break;
      ++cursor;
    }
    long ticks = sysconf(_SC_CLK_TCK);
    if (fields.size() < 13 || ticks <= 0) return std::nullopt;
    return std::chrono::microseconds((fields[11] + fields[12]) * 1000000 / ticks);
  }

  ResourceUsage usage_of(const struct rusage& usage) const {
    ResourceUsage result;
    auto micros = [](const timeval& time) {
      return std::chrono::seconds(time.tv_sec) + std::chrono::microseconds(time.tv_usec);
    };
    result.user_cpu = micros(usage.ru_utime);
    result.system_cpu = micros(usage.ru_stime);
    if (static_cast<std::uint64_t>(usage.ru_maxrss) > host_peak_kib_) {
      result.peak_memory = static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;  // KiB on Linux
    }
    if (cell_) {
      // So far: members other than the module may still be running.
      posix::CgroupUsage group = posix::read_cgroup_usage(cell_->directory_fd());
      result.group_user_cpu = group.user;
      result.group_system_cpu = group.system;
      result.group_peak_memory = group.peak_memory;
    }
    return result;
  }

  std::optional<ExitStatus> peek_locked() {
    if (status_) return status_;
    siginfo_t info{};
    struct rusage usage {};
    if (wait_for_child(info, WEXITED | WNOHANG | WNOWAIT, &usage) != 0) {
      // ECHILD: someone else reaped it (waitpid(-1) in the host, or SIGCHLD
      // ignored). Its pid may be anyone's now: no signal from here on.
      reaped_ = true;
      stdin_write_.reset();
      status_ = ExitStatus{ExitStatus::Kind::Unknown, -1, false};
      return status_;
    }
    if (info.si_pid == 0) return std::nullopt;  // still running (or traced and not yet released)
    status_ = decode_siginfo(info);
    status_->usage = usage_of(usage);
    if (cpu_time_) own_cpu_ = zombie_cpu_time();
    return status_;
  }

  const std::string module_;
  const pid_t pid_;
  const UniqueFd pidfd_;
  const GracefulStop graceful_stop_;
  const std::vector<ino_t> pipe_inodes_;  // of the stdout and stderr pipes
  const std::unique_ptr<posix::CgroupCell> cell_;  // or none (not contained)
  std::mutex mutex_;
  bool reaped_ = false;
  std::optional<ExitStatus> status_;
  UniqueFd stdin_write_;
  std::unique_ptr<PipeReader> stdout_, stderr_;
  const UniqueFd notify_read_;  // non-blocking; read only by the exit monitor
  const std::optional<std::chrono::seconds> cpu_time_;
  const std::vector<std::string> limits_not_applied_;
  const bool memory_limited_;         // memory.max (with memory.oom.group) was written
  const std::uint64_t host_peak_kib_;  // the host's ru_maxrss just after the spawn
  std::optional<std::chrono::microseconds> own_cpu_;  // of the module alone, read while it was a zombie
  bool killed_ = false;  // kill_tree was called (a SIGKILL is then ours)
};

// A mapping for the child's stack with an inaccessible guard page below it,
// released when spawn returns (the child has exec'd or exited by then:
// CLONE_VFORK suspends us until it does). An overflow faults instead of
// silently writing over whatever the host mapped below.
class ChildStack {
 public:
  static constexpr std::size_t kSize = 64 * 1024;
  ChildStack() {
    page_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* memory = mmap(nullptr, kSize + page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (memory == MAP_FAILED) return;
    base_ = static_cast<char*>(memory);
    if (mprotect(base_, page_, PROT_NONE) != 0) {
      munmap(base_, kSize + page_);
      base_ = nullptr;
    }
  }
  ~ChildStack() {
    if (base_) munmap(base_, kSize + page_);
  }
  ChildStack(const ChildStack&) = delete;
  ChildStack& operator=(const ChildStack&) = delete;
  char* top() const { return base_ ? base_ + page_ + kSize : nullptr; }

 private:
  char* base_ = nullptr;
  std::size_t page_ = 4096;
};

// glibc's sigfillset/pthread_sigmask leave out the two signals it uses
// itself (32: thread cancellation, 33: setxid broadcast); a handler for
// either must not run in the child either, so the raw call blocks all 64.
struct AllSignalsBlocked {
  AllSignalsBlocked() {
    unsigned long all = ~0UL;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &previous, sizeof previous);
  }
  ~AllSignalsBlocked() { syscall(SYS_rt_sigprocmask, SIG_SETMASK, &previous, nullptr, sizeof previous); }
  unsigned long previous = 0;
};

}  // namespace

Result<std::unique_ptr<Process>> spawn(const SpawnRequest& request) {
  // 1. Everything the child will need, built now (it may not allocate).
  auto check = check_working_directory(request);
  if (!check) return std::move(check).error();
  std::vector<std::string> environment = posix::build_environment(environ, request.env, request.clear_environment);
  // Only modkit names the notification descriptor: a host that is itself a
  // module must not hand its own (or a stale watchdog interval) on.
  bool watchdog_given = false;
  for (const auto& entry : request.env) watchdog_given = watchdog_given || entry.first == "MODKIT_WATCHDOG_MS";
  environment.erase(std::remove_if(environment.begin(), environment.end(),
                                   [&](const std::string& entry) {
                                     return entry.rfind("MODKIT_NOTIFY_FD=", 0) == 0 ||
                                            (!(request.notify && watchdog_given) &&
                                             entry.rfind("MODKIT_WATCHDOG_MS=", 0) == 0);
                                   }),
                    environment.end());
  if (request.notify) environment.push_back("MODKIT_NOTIFY_FD=3");
  auto path = resolve_binary(request, environment);
  if (!path) return std::move(path).error();
  if (auto refused = check_parent_death(request, *path); !refused) return std::move(refused).error();

  std::vector<char*> argv;
  argv.reserve(request.args.size() + 2);
  argv.push_back(const_cast<char*>(request.binary.c_str()));
  for (const auto& arg : request.args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  envp.reserve(environment.size() + 1);
  for (auto& entry : environment) envp.push_back(entry.data());
  envp.push_back(nullptr);

  Pipe out, err, failure;
  Pipe stdin_pipe;  // only for GracefulStop::CloseStdin
  UniqueFd stdin_source;
  if (!make_pipe(out) || !make_pipe(err) || !make_pipe(failure)) {
    return spawn_error(request, "cannot create pipes", errno);
  }
  if (request.graceful_stop == GracefulStop::CloseStdin) {
    if (!make_pipe(stdin_pipe)) return spawn_error(request, "cannot create pipes", errno);
    stdin_source = std::move(stdin_pipe.read_end);
  } else {
    stdin_source.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!stdin_source || !lift_above_stdio(stdin_source)) return spawn_error(request, "cannot open /dev/null", errno);
  }
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake || !lift_above_stdio(wake)) return spawn_error(request, "cannot create an eventfd", errno);
  // The notification pipe: the child's end goes to descriptor 3, so it and
  // the error pipe (used after that step) must not be 3 themselves. The
  // parent's end is read by the exit monitor, never blocking.
  Pipe notify;
  if (request.notify) {
    if (!make_pipe(notify) || !lift_above_stdio(notify.write_end, 4) || !lift_above_stdio(failure.write_end, 4) ||
        fcntl(notify.read_end.get(), F_SETFL, O_NONBLOCK) != 0) {
      return spawn_error(request, "cannot create the notification pipe", errno);
    }
  }
  // The parent's read ends never block: the reader polls them with the eventfd.
  if (fcntl(out.read_end.get(), F_SETFL, O_NONBLOCK) != 0 || fcntl(err.read_end.get(), F_SETFL, O_NONBLOCK) != 0) {
    return spawn_error(request, "cannot configure pipes", errno);
  }

  // The instance's cgroup, made before the child exists.
  std::unique_ptr<posix::CgroupCell> cell;
  if (request.containment != nullptr && request.containment->active()) {
    // The build pairs the POSIX process code with the POSIX containment.
    auto made = static_cast<posix::CgroupContainment*>(request.containment)->create_cell(request.instance_id);
    if (!made) {
      Error error = std::move(made).error();
      return module_error(error.code, request.module, {error.message});
    }
    cell = std::move(*made);
  }
  // Its limits, written before any process is in it.
  ResourceLimits limits = request.limits;
  PlannedLimits planned;
  if (auto settled = settle_group_limits(request, cell.get(), limits, planned); !settled) {
    return std::move(settled).error();
  }
  if (cell) {
    // A child entering a frozen cgroup (its parent was frozen) stops at once,
    // and the clone, which waits for its exec, would never return.
    if (cell->frozen()) {
      return module_error(std::make_error_code(std::errc::resource_unavailable_try_again), request.module,
                          {"cgroup '", cell->path(), "' is frozen (a parent of it was frozen): nothing could run in it"});
    }
    if (auto written = posix::write_cgroup_limits(cell->directory_fd(), cell->path(), limits); !written) {
      Error error = std::move(written).error();
      return module_error(error.code, request.module, {error.message});
    }
  }

  ChildPlan plan{};
  plan.path = path->c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.working_directory = request.working_directory ? request.working_directory->c_str() : nullptr;
  plan.stdin_fd = stdin_source.get();
  plan.stdout_fd = out.write_end.get();
  plan.stderr_fd = err.write_end.get();
  plan.error_fd = failure.write_end.get();
  plan.cgroup_procs_fd = -1;
  plan.notify_fd = request.notify ? notify.write_end.get() : -1;
  plan.first_closed = request.notify ? 4 : 3;
  plan_rlimits(limits, plan, planned);
  plan_identity(request.privileges, plan);
  ChildStack stack;
  if (!stack.top()) return spawn_error(request, "cannot map the child's stack", errno);

  // 2. Clone with every signal blocked, so no handler of the host runs in the
  // child while it shares our memory; the child installs defaults and
  // unblocks. CLONE_PIDFD (Linux 5.2) hands us a pidfd at birth: opening one
  // afterwards can fail with ESRCH when the host ignores SIGCHLD and the
  // child has already exited and been reaped by the kernel.
  int saved_errno = errno;
  int pidfd = -1;
  pid_t pid;
  int clone_error;
  {
    AllSignalsBlocked blocked;
    pid = -1;
    errno = ENOSYS;
#ifdef MODKIT_HAVE_CLONE3
    if (cell && !clone3_unusable.load(std::memory_order_relaxed)) {
      CloneArgs args{};
      args.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP;
      args.pidfd = reinterpret_cast<unsigned long long>(&pidfd);
      args.exit_signal = SIGCHLD;
      args.stack = reinterpret_cast<unsigned long long>(stack.top() - ChildStack::kSize);
      args.stack_size = ChildStack::kSize;
      args.cgroup = static_cast<unsigned long long>(cell->directory_fd());
      long result = clone3_call(&args, child_main, &plan);
      pid = result < 0 ? -1 : static_cast<pid_t>(result);
      errno = result < 0 ? static_cast<int>(-result) : 0;
      // ENOSYS: no clone3 (Linux < 5.3) or a seccomp filter that hides it
      // (Docker's default profile does); E2BIG or EINVAL: no
      // CLONE_INTO_CGROUP (< 5.7); EPERM: a filter. Joining from the child
      // works in all these cases.
      if (pid < 0 && (errno == ENOSYS || errno == E2BIG || errno == EPERM || errno == EINVAL)) {
        if (errno != EINVAL) clone3_unusable.store(true, std::memory_order_relaxed);
        errno = ENOSYS;
      }
    }
#endif
    bool cannot_join = false;
    if (pid < 0 && errno == ENOSYS) {
      plan.cgroup_procs_fd = cell ? cell->procs_fd() : -1;
      cannot_join = cell && plan.cgroup_procs_fd < 0;  // never start it outside its cgroup
      if (!cannot_join) {
        pid = libc_clone()(child_main, stack.top(), CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &plan, &pidfd);
      }
    }
    if (pid < 0 && errno == EINVAL && !cannot_join) {
      pidfd = -1;
      pid = libc_clone()(child_main, stack.top(), CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
      if (pid > 0) pidfd = posix::pidfd_open(pid);  // may fail: the pid is then used (still safe, unreaped)
    }
    clone_error = errno;
  }
  errno = saved_errno;
  if (pid < 0) {
    return spawn_error(request,
                       {"cannot create a process for '", *path, "'", cell ? " in cgroup '" : "",
                        cell ? std::string_view(cell->path()) : "", cell ? "'" : ""},
                       clone_error);
  }
  UniqueFd owned_pidfd(pidfd);
  // The kernel gave the child our peak resident set at its execve
  // (fs/exec.c, exec_mmap): only a peak above this one is its own.
  struct rusage own_usage {};
  getrusage(RUSAGE_SELF, &own_usage);
  if (cell) cell->close_procs();  // the child is in (or failed): the fallback's descriptor is done

  // 3. The child has exec'd or failed. Its ends are ours to close; an empty
  // error pipe means exec succeeded.
  out.write_end.reset();
  err.write_end.reset();
  failure.write_end.reset();
  notify.write_end.reset();
  stdin_source.reset();
  ChildFailure report{};
  ssize_t got;
  do {
    got = read(failure.read_end.get(), &report, sizeof report);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof report)) {
    siginfo_t info{};
    while (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED) < 0 && errno == EINTR) {
    }
    switch (report.stage) {
      case ChildStage::Exec: {
        struct stat info_stat;
        const bool directory = report.error == EACCES && stat(path->c_str(), &info_stat) == 0 && S_ISDIR(info_stat.st_mode);
        // Since Linux 3.1 a user over RLIMIT_NPROC fails at execve, not at setresuid.
        const bool nproc = report.error == EAGAIN && request.limits.user_processes;
        return spawn_error(request,
                           {"cannot execute '", *path, "'", directory ? " (it is a directory)" : "",
                            nproc ? " (limits.user_processes reached for its user)" : ""},
                           report.error);
      }
      case ChildStage::Cgroup:
        return spawn_error(request, {"cannot enter cgroup '", cell->path(), "'"}, report.error);
      case ChildStage::WorkingDirectory:
        return spawn_error(request, {"cannot enter working directory '", *request.working_directory, "'"},
                           report.error);
      case ChildStage::ProcessGroup:
      case ChildStage::Descriptors:
      case ChildStage::CloseDescriptors:
        return spawn_error(request, {"cannot prepare the child process for '", *path, "'"}, report.error);
      default:
        return spawn_error(request, describe_child_failure(request, report, planned), report.error);
    }
  }

  std::vector<ino_t> pipe_inodes;
  for (const Pipe* pipe : {&out, &err}) {
    struct stat info;
    if (fstat(pipe->read_end.get(), &info) == 0) pipe_inodes.push_back(info.st_ino);
  }
  auto shared_wake = std::make_shared<UniqueFd>(std::move(wake));
  auto stdout_reader = std::make_unique<posix::PosixPipeReader>(std::move(out.read_end), shared_wake);
  auto stderr_reader = std::make_unique<posix::PosixPipeReader>(std::move(err.read_end), shared_wake);
  return std::unique_ptr<Process>(std::make_unique<PosixProcess>(
      request.module, pid, std::move(owned_pidfd), request.graceful_stop, std::move(stdin_pipe.write_end),
      std::move(stdout_reader), std::move(stderr_reader), std::move(pipe_inodes), std::move(cell),
      std::move(notify.read_end), request.limits.cpu_time, std::move(planned.not_applied),
      static_cast<bool>(limits.memory_max), static_cast<std::uint64_t>(own_usage.ru_maxrss)));
}

}  // namespace modkit::platform
