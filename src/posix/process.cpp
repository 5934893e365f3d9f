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
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "platform/process.hpp"
#include "platform/system.hpp"
#include "posix/environment.hpp"
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
enum class ChildStage : int { ProcessGroup = 1, Descriptors, WorkingDirectory, CloseDescriptors, Exec };

struct ChildFailure {
  ChildStage stage;
  int error;
};

// Everything the child touches, prepared by the parent before the clone.
struct ChildPlan {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* working_directory;  // or nullptr
  int stdin_fd, stdout_fd, stderr_fd;  // all >= 3
  int error_fd;                        // >= 3, O_CLOEXEC
  int max_fd;                          // last resort bound for closing descriptors
};

// The kernel's struct sigaction for rt_sigaction (not glibc's, whose layout differs).
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)(void);
  unsigned long mask;
};

struct LinuxDirent64 {
  unsigned long long d_ino;
  long long d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

#define MODKIT_CHILD_CODE __attribute__((no_sanitize_address, no_sanitize_thread, no_sanitize_undefined, noinline))

MODKIT_CHILD_CODE void child_fail(const ChildPlan& plan, ChildStage stage, int error) {
  ChildFailure failure{stage, error};
  syscall(SYS_write, plan.error_fd, &failure, sizeof failure);
  syscall(SYS_exit, 127);
}

// Closes every descriptor >= 3 but the error pipe. Tried in order: mark all
// close-on-exec (Linux 5.11), close two ranges (5.9), list /proc/self/fd, and
// finally a loop to the descriptor limit.
MODKIT_CHILD_CODE bool child_close_descriptors(const ChildPlan& plan) {
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return true;
  if (syscall(SYS_close_range, 3U, static_cast<unsigned>(plan.error_fd - 1), 0U) == 0 &&
      syscall(SYS_close_range, static_cast<unsigned>(plan.error_fd + 1), ~0U, 0U) == 0) {
    return true;
  }
  long dir = syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    alignas(8) char buffer[1024];
    for (;;) {
      long size = syscall(SYS_getdents64, dir, buffer, sizeof buffer);
      if (size <= 0) break;
      for (long offset = 0; offset < size;) {
        auto* entry = reinterpret_cast<LinuxDirent64*>(buffer + offset);
        offset += entry->d_reclen;
        int fd = 0;
        const char* digit = entry->d_name;
        if (*digit < '0' || *digit > '9') continue;
        for (; *digit >= '0' && *digit <= '9'; ++digit) fd = fd * 10 + (*digit - '0');
        if (fd >= 3 && fd != plan.error_fd && fd != dir) syscall(SYS_close, fd);
      }
    }
    syscall(SYS_close, dir);
    return true;
  }
  for (int fd = 3; fd <= plan.max_fd; ++fd) {
    if (fd != plan.error_fd) syscall(SYS_close, fd);
  }
  return true;
}

MODKIT_CHILD_CODE int child_main(void* argument) {
  const ChildPlan& plan = *static_cast<const ChildPlan*>(argument);

  // Lead a new process group, so stopping reaches every descendant.
  if (syscall(SYS_setpgid, 0, 0) != 0) child_fail(plan, ChildStage::ProcessGroup, errno);

  // Default dispositions for 1..64, real-time signals included (an ignored
  // signal would survive exec; CLONE_VM without CLONE_SIGHAND, so this is the
  // child's own table), then an empty mask (the parent blocked everything
  // around the clone).
  KernelSigaction default_action{};
  default_action.handler = SIG_DFL;
  for (int signal_number = 1; signal_number <= 64; ++signal_number) {
    if (signal_number == SIGKILL || signal_number == SIGSTOP) continue;
    syscall(SYS_rt_sigaction, signal_number, &default_action, nullptr, sizeof(unsigned long));
  }
  unsigned long empty_mask = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty_mask, nullptr, sizeof empty_mask);

  // All sources are >= 3, so dup3 never sees equal descriptors; the copies
  // on 0, 1 and 2 are not close-on-exec.
  if (syscall(SYS_dup3, plan.stdin_fd, 0, 0) < 0 || syscall(SYS_dup3, plan.stdout_fd, 1, 0) < 0 ||
      syscall(SYS_dup3, plan.stderr_fd, 2, 0) < 0) {
    child_fail(plan, ChildStage::Descriptors, errno);
  }
  if (plan.working_directory != nullptr && syscall(SYS_chdir, plan.working_directory) != 0) {
    child_fail(plan, ChildStage::WorkingDirectory, errno);
  }
  child_close_descriptors(plan);
  syscall(SYS_execve, plan.path, plan.argv, plan.envp);
  child_fail(plan, ChildStage::Exec, errno);
  return 127;
}

// --- Parent side helpers ---------------------------------------------------

#if defined(__SANITIZE_THREAD__)
#define MODKIT_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MODKIT_UNDER_TSAN 1
#endif
#endif

using CloneFunction = int (*)(int (*)(void*), void*, int, void*, ...);

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

Error spawn_error(const SpawnRequest& request, const std::string& what, int error) {
  std::error_code code(error, std::generic_category());
  return Error{code, "module '" + request.module + "': " + what + ": " + code.message()};
}

// Moves a descriptor to >= 3 (keeping O_CLOEXEC), so that dup3 onto 0..2 in
// the child can never clobber a source. Matters when the host closed stdin.
bool lift_above_stdio(UniqueFd& fd) {
  if (fd.get() >= 3) return true;
  int lifted = fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
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
  return Error{std::make_error_code(std::errc::no_such_file_or_directory),
               "module '" + request.module + "': '" + request.binary + "' not found on PATH (" + search + ")"};
}

Result<void> check_working_directory(const SpawnRequest& request) {
  if (!request.working_directory) return {};
  struct stat info;
  if (stat(request.working_directory->c_str(), &info) != 0) {
    return spawn_error(request, "working directory '" + *request.working_directory + "' is not usable", errno);
  }
  if (!S_ISDIR(info.st_mode)) {
    return spawn_error(request, "working directory '" + *request.working_directory + "' is not a directory", ENOTDIR);
  }
  return {};
}

ExitStatus decode_wait_status(int status) {
  ExitStatus result;
  if (WIFSIGNALED(status)) {
    result.kind = ExitStatus::Kind::Signaled;
    result.code = WTERMSIG(status);
  } else {
    result.kind = ExitStatus::Kind::Exited;
    result.code = WEXITSTATUS(status);
  }
  return result;
}

// --- The process ------------------------------------------------------------

class PosixProcess final : public Process {
 public:
  PosixProcess(pid_t pid, GracefulStop graceful_stop, UniqueFd stdin_write, std::unique_ptr<PipeReader> out,
               std::unique_ptr<PipeReader> err, std::vector<ino_t> pipe_inodes)
      : pid_(pid),
        graceful_stop_(graceful_stop),
        pipe_inodes_(std::move(pipe_inodes)),
        stdin_write_(std::move(stdin_write)),
        stdout_(std::move(out)),
        stderr_(std::move(err)) {}

  ~PosixProcess() override {
    // Never leave a zombie, even if the owner forgot to stop us.
    if (!reaped_) {
      kill_tree();
      reap_blocking();
    }
  }

  std::int64_t pid() const override { return pid_; }
  std::unique_ptr<PipeReader> take_stdout() override { return std::move(stdout_); }
  std::unique_ptr<PipeReader> take_stderr() override { return std::move(stderr_); }

  bool request_stop() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reaped_) return false;
    switch (graceful_stop_) {
      case GracefulStop::Signal:
        return ::kill(-pid_, SIGTERM) == 0;
      case GracefulStop::CloseStdin:
        stdin_write_.reset();
        return true;
      case GracefulStop::None:
        return false;
    }
    return false;
  }

  // After the leader is reaped its group id stays reserved only while some
  // member lives, so callers kill a reaped child's tree only when its pipes
  // show that a member still holds them (see the README's Gotchas).
  void kill_tree() override {
    std::lock_guard<std::mutex> lock(mutex_);
    ::kill(-pid_, SIGKILL);
  }

  int kill_pipe_holders() override { return posix::kill_pipe_holders(pipe_inodes_); }

  std::optional<ExitStatus> try_reap() override { return reap(WNOHANG); }
  std::optional<ExitStatus> reap_blocking() override { return reap(0); }

 private:
  std::optional<ExitStatus> reap(int options) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reaped_) return std::nullopt;
    int status = 0;
    pid_t result;
    do {
      result = ::waitpid(pid_, &status, options);
    } while (result < 0 && errno == EINTR);
    if (result == 0) return std::nullopt;  // still running
    reaped_ = true;
    stdin_write_.reset();
    // ECHILD: the host set SIGCHLD to SIG_IGN and the kernel reaped it for us.
    if (result < 0) return ExitStatus{ExitStatus::Kind::Exited, -1, false};
    return decode_wait_status(status);
  }

  const pid_t pid_;
  const GracefulStop graceful_stop_;
  const std::vector<ino_t> pipe_inodes_;  // of the stdout and stderr pipes
  std::mutex mutex_;
  bool reaped_ = false;
  UniqueFd stdin_write_;
  std::unique_ptr<PipeReader> stdout_, stderr_;
};

// A mapping for the child's stack, released when spawn returns (the child
// has exec'd or exited by then: CLONE_VFORK suspends us until it does).
class ChildStack {
 public:
  static constexpr std::size_t kSize = 64 * 1024;
  ChildStack() {
    void* memory = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    base_ = memory == MAP_FAILED ? nullptr : static_cast<char*>(memory);
  }
  ~ChildStack() {
    if (base_) munmap(base_, kSize);
  }
  ChildStack(const ChildStack&) = delete;
  ChildStack& operator=(const ChildStack&) = delete;
  char* top() const { return base_ ? base_ + kSize : nullptr; }

 private:
  char* base_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<Process>> spawn(const SpawnRequest& request) {
  // 1. Everything the child will need, built now (it may not allocate).
  auto check = check_working_directory(request);
  if (!check) return std::move(check).error();
  std::vector<std::string> environment = posix::build_environment(environ, request.env, request.clear_environment);
  auto path = resolve_binary(request, environment);
  if (!path) return std::move(path).error();

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
  // The parent's read ends never block: the reader polls them with the eventfd.
  if (fcntl(out.read_end.get(), F_SETFL, O_NONBLOCK) != 0 || fcntl(err.read_end.get(), F_SETFL, O_NONBLOCK) != 0) {
    return spawn_error(request, "cannot configure pipes", errno);
  }

  struct rlimit limit {};
  int max_fd = 65535;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    max_fd = static_cast<int>(limit.rlim_cur > 0x7fffffff ? 0x7fffffff : limit.rlim_cur);
  }
  ChildPlan plan{path->c_str(),
                 argv.data(),
                 envp.data(),
                 request.working_directory ? request.working_directory->c_str() : nullptr,
                 stdin_source.get(),
                 out.write_end.get(),
                 err.write_end.get(),
                 failure.write_end.get(),
                 max_fd};
  ChildStack stack;
  if (!stack.top()) return spawn_error(request, "cannot map the child's stack", errno);

  // 2. Block every signal so no handler of the host runs in the child while
  // it shares our memory; the child installs defaults and unblocks.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pid_t pid = libc_clone()(child_main, stack.top(), CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
  int clone_error = errno;
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) return spawn_error(request, "cannot create a process for '" + *path + "'", clone_error);

  // 3. The child has exec'd or failed. Its ends are ours to close; an empty
  // error pipe means exec succeeded.
  out.write_end.reset();
  err.write_end.reset();
  failure.write_end.reset();
  stdin_source.reset();
  ChildFailure report{};
  ssize_t got;
  do {
    got = read(failure.read_end.get(), &report, sizeof report);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof report)) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    switch (report.stage) {
      case ChildStage::Exec: {
        std::string what = "cannot execute '" + *path + "'";
        struct stat info;
        if (report.error == EACCES && stat(path->c_str(), &info) == 0 && S_ISDIR(info.st_mode)) {
          what += " (it is a directory)";
        }
        return spawn_error(request, what, report.error);
      }
      case ChildStage::WorkingDirectory:
        return spawn_error(request, "cannot enter working directory '" + *request.working_directory + "'",
                           report.error);
      default:
        return spawn_error(request, "cannot prepare the child process", report.error);
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
      pid, request.graceful_stop, std::move(stdin_pipe.write_end), std::move(stdout_reader), std::move(stderr_reader),
      std::move(pipe_inodes)));
}

}  // namespace modkit::platform
