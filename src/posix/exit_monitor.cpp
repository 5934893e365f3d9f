// Exit observation on Linux without SIGCHLD handlers or waitpid(-1), which
// would steal the host's own children: one epoll thread over pidfds (Linux
// 5.3+), or, without pidfd_open, one thread per child blocked in waitid().
#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "platform/exit_monitor.hpp"
#include "platform/system.hpp"
#include "posix/unique_fd.hpp"

namespace modkit::platform {
namespace {

using posix::UniqueFd;

int pidfd_open(std::int64_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

class PidfdExitMonitor final : public ExitMonitor {
 public:
  PidfdExitMonitor(UniqueFd epoll, UniqueFd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {
    thread_ = std::thread([this] { run(); });
  }
  ~PidfdExitMonitor() override { shutdown(); }

  Result<void> watch(Process& process, std::function<void()> on_exit) override {
    UniqueFd pidfd(pidfd_open(process.pid()));
    if (!pidfd) return Error{last_error(), "cannot watch the child: pidfd_open failed"};
    std::lock_guard<std::mutex> lock(mutex_);
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = pidfd.get();
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, pidfd.get(), &event) != 0) {
      return Error{last_error(), "cannot watch the child: epoll_ctl failed"};
    }
    int key = pidfd.get();
    watched_.emplace(key, Entry{std::move(pidfd), static_cast<pid_t>(process.pid()), std::move(on_exit)});
    return {};
  }

  void shutdown() override {
    if (!thread_.joinable()) return;
    std::uint64_t one = 1;
    while (write(wake_.get(), &one, sizeof one) < 0 && errno == EINTR) {
    }
    thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    watched_.clear();
  }

 private:
  struct Entry {
    UniqueFd pidfd;
    pid_t pid;
    std::function<void()> on_exit;
  };

  // The pidfd turns readable when the child exits, but a child that was being
  // traced (a debugger, strace, a sanitizer's leak checker) at its exit cannot
  // be reaped by us until its tracer lets go. Such an exit is deferred and
  // checked again every few milliseconds instead of being reported too early
  // (which would lose it: try_reap finds nothing, and the watch is gone).
  static bool reapable(pid_t pid) {
    siginfo_t info{};
    int result;
    do {
      result = waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    } while (result != 0 && errno == EINTR);
    return result != 0 || info.si_pid != 0;  // ECHILD: already reaped (SIGCHLD ignored)
  }

  // Runs the callback of watched_[fd] and forgets it; called without the lock.
  void fire(int fd) {
    std::function<void()> on_exit;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = watched_.find(fd);
      if (it == watched_.end()) return;
      on_exit = std::move(it->second.on_exit);
      watched_.erase(it);  // closes the pidfd
    }
    on_exit();
  }

  void run() {
    {
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.fd = wake_.get();
      epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &event);
    }
    epoll_event events[64];
    std::vector<int> deferred;  // pidfds of exited children not reapable yet
    for (;;) {
      int count = epoll_wait(epoll_.get(), events, 64, deferred.empty() ? -1 : 5);
      if (count < 0) {
        if (errno != EINTR) return;
        count = 0;
      }
      for (int i = 0; i < count; ++i) {
        int fd = events[i].data.fd;
        if (fd == wake_.get()) return;
        pid_t pid;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto it = watched_.find(fd);
          if (it == watched_.end()) continue;
          epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
          pid = it->second.pid;
        }
        if (reapable(pid)) {
          fire(fd);
        } else {
          deferred.push_back(fd);
        }
      }
      for (auto it = deferred.begin(); it != deferred.end();) {
        pid_t pid;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto entry = watched_.find(*it);
          pid = entry == watched_.end() ? 0 : entry->second.pid;
        }
        if (pid == 0 || reapable(pid)) {
          if (pid != 0) fire(*it);
          it = deferred.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  UniqueFd epoll_, wake_;
  std::mutex mutex_;
  std::unordered_map<int, Entry> watched_;
  std::thread thread_;
};

// Fallback for kernels without pidfd_open: waitid(WNOWAIT) on one pid only
// observes the exit and leaves the reaping to Process::try_reap.
class WaiterThreadExitMonitor final : public ExitMonitor {
 public:
  ~WaiterThreadExitMonitor() override { shutdown(); }

  Result<void> watch(Process& process, std::function<void()> on_exit) override {
    std::lock_guard<std::mutex> lock(mutex_);
    join_finished();
    auto pid = static_cast<id_t>(process.pid());
    waiters_.emplace_back();
    auto self = std::prev(waiters_.end());
    self->thread = std::thread([this, pid, self, on_exit = std::move(on_exit)] {
      siginfo_t info{};
      while (waitid(P_PID, pid, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
      }
      on_exit();
      std::lock_guard<std::mutex> guard(mutex_);
      self->finished = true;
    });
    return {};
  }

  // Called once every watched child has been reaped, so each waiter returns.
  void shutdown() override {
    std::list<Waiter> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      all.swap(waiters_);
    }
    for (auto& waiter : all) waiter.thread.join();
  }

 private:
  struct Waiter {
    std::thread thread;
    bool finished = false;
  };

  void join_finished() {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->finished) {
        it->thread.join();
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::mutex mutex_;
  std::list<Waiter> waiters_;
};

}  // namespace

Result<std::unique_ptr<ExitMonitor>> make_exit_monitor(bool prefer_pidfd) {
  if (prefer_pidfd) {
    // Probe with our own pid: ENOSYS means an old kernel (or a seccomp filter).
    UniqueFd probe(pidfd_open(getpid()));
    if (probe) {
      UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
      UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (epoll && wake) {
        return std::unique_ptr<ExitMonitor>(std::make_unique<PidfdExitMonitor>(std::move(epoll), std::move(wake)));
      }
      // Out of descriptors right now (EMFILE): the waiter threads need none,
      // whereas failing here would leave the backend unable to spawn for good.
    }
  }
  return std::unique_ptr<ExitMonitor>(std::make_unique<WaiterThreadExitMonitor>());
}

}  // namespace modkit::platform
