// Exit observation on Linux without SIGCHLD handlers or waitpid(-1), which
// would steal the host's own children: one epoll thread over pidfds (Linux
// 5.3+), or, without pidfds, one thread per child blocked in waitid(WNOWAIT).
// Neither reaps: the core reaps last, after its group kills (see process.hpp).
#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "platform/exit_monitor.hpp"
#include "platform/system.hpp"
#include "platform/thread.hpp"
#include "posix/pidfd.hpp"
#include "posix/unique_fd.hpp"

namespace modkit::platform {
namespace {

using posix::UniqueFd;

constexpr std::size_t kMonitorStackBytes = 64 * 1024;

using posix::pidfd_open;

class PidfdExitMonitor final : public ExitMonitor {
 public:
  PidfdExitMonitor(UniqueFd epoll, UniqueFd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {}
  ~PidfdExitMonitor() override { shutdown(); }

  Result<void> start() {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = nullptr;  // the wake-up
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &event) != 0) {
      return Error{last_error(), "cannot start the exit monitor: epoll_ctl failed"};
    }
    auto thread = start_thread(kMonitorStackBytes, [this] { run(); }, "the exit monitor");
    if (!thread) return std::move(thread).error();
    thread_ = std::move(*thread);
    return {};
  }

  Result<void> watch(Process& process, std::function<void()> on_exit, std::function<void()> on_contents,
                     std::function<void(std::string_view, bool)> on_notify) override {
    auto entry = std::make_unique<Entry>();
    entry->pid = static_cast<pid_t>(process.pid());
    entry->on_exit = std::make_shared<std::function<void()>>(std::move(on_exit));
    if (on_contents && process.contents_handle() >= 0) {
      entry->contents_fd = static_cast<int>(process.contents_handle());
      entry->on_contents = std::make_shared<std::function<void()>>(std::move(on_contents));
    }
    if (process.exit_handle() >= 0) {
      entry->fd = static_cast<int>(process.exit_handle());
    } else {
      entry->owned.reset(pidfd_open(process.pid()));
      if (!entry->owned) return Error{last_error(), "cannot watch the child: pidfd_open failed"};
      entry->fd = entry->owned.get();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (on_notify && process.notify_handle() >= 0) {
      entry->notify_fd = static_cast<int>(process.notify_handle());
      entry->on_notify = std::make_shared<NotifyCallback>(std::move(on_notify));
      epoll_event readable{};
      readable.events = EPOLLIN;  // level-triggered: one read per wake-up, so a flood cannot starve exits
      readable.data.ptr = tagged(&process, kNotifyTag);
      if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, entry->notify_fd, &readable) != 0) {
        return Error{last_error(), "cannot watch the child's notification pipe: epoll_ctl failed"};
      }
      entry->notify_armed = true;
    }
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = &process;
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, entry->fd, &event) != 0) {
      if (entry->notify_armed) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, entry->notify_fd, nullptr);
      return Error{last_error(), "cannot watch the child: epoll_ctl failed"};
    }
    entry->serial = ++next_serial_;
    watched_[&process] = std::move(entry);
    return {};
  }

  void unwatch(Process& process) override {
    std::unique_lock<std::mutex> lock(mutex_);
    auto it = watched_.find(&process);
    if (it != watched_.end()) {
      if (!it->second->exited) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd, nullptr);
      if (it->second->contents_armed) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->contents_fd, nullptr);
      if (it->second->notify_armed) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->notify_fd, nullptr);
      watched_.erase(it);
    }
    // A callback already taken out runs without the lock: wait until it is
    // done, unless it is the caller.
    if (thread_ && thread_->is_current()) return;
    idle_.wait(lock, [&] { return firing_ != &process; });
  }

  void shutdown() override {
    if (!thread_) return;
    std::uint64_t one = 1;
    while (write(wake_.get(), &one, sizeof one) < 0 && errno == EINTR) {
    }
    thread_->join();
    thread_.reset();
    std::lock_guard<std::mutex> lock(mutex_);
    watched_.clear();
  }

 private:
  using Callback = std::shared_ptr<std::function<void()>>;
  using NotifyCallback = std::function<void(std::string_view, bool)>;
  struct Entry {
    int notify_fd = -1;
    bool notify_armed = false;  // notify_fd is in the epoll set (until its end of file)
    std::shared_ptr<NotifyCallback> on_notify;
    int fd = -1;
    UniqueFd owned;  // only when the process had no pidfd of its own
    int contents_fd = -1;
    bool contents_armed = false;  // contents_fd is in the epoll set
    pid_t pid = 0;
    // Which watch this is. Entries are keyed by the Process's address, and a
    // process unwatched and destroyed while the monitor thread checked its
    // exit without the lock can be followed at the same address by a new
    // one: the exit found waitable is acted on only if the entry is still the
    // one whose pid was checked (see run()).
    std::uint64_t serial = 0;
    bool exited = false;  // on_exit has been taken; the entry stays for on_contents
    Callback on_exit, on_contents;
  };

  // The contents and notification watches of a process are told apart by the
  // low bits (a Process is at least 8-byte aligned).
  static constexpr std::uintptr_t kContentsTag = 1, kNotifyTag = 2, kTags = 3;
  static void* tagged(Process* process, std::uintptr_t tag = kContentsTag) {
    return reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(process) | tag);
  }

  // One read from the notification pipe, handed over without the lock; end
  // of file also takes the pipe out of the set. `drain` reads until nothing
  // is left (before the exit is reported, so that what the child wrote before
  // it exited comes first). Bounded: a child cannot keep it busy.
  void read_notify(Process* process, bool drain) {
    for (int round = 0; round < (drain ? 16 : 1); ++round) {
      std::shared_ptr<NotifyCallback> callback;
      int fd;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = watched_.find(process);
        if (it == watched_.end() || !it->second->notify_armed) return;
        callback = it->second->on_notify;
        fd = it->second->notify_fd;
        firing_ = process;
      }
      char buffer[4096];
      ssize_t got;
      do {
        got = read(fd, buffer, sizeof buffer);
      } while (got < 0 && errno == EINTR);
      bool eof = got == 0 || (got < 0 && errno != EAGAIN);
      if (eof) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = watched_.find(process);
        if (it != watched_.end() && it->second->notify_armed) {
          epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
          it->second->notify_armed = false;
        }
      }
      if (got > 0) (*callback)(std::string_view(buffer, static_cast<std::size_t>(got)), false);
      if (eof) (*callback)(std::string_view(), true);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        firing_ = nullptr;
        idle_.notify_all();
      }
      if (got <= 0) return;
    }
  }

  // The pidfd turns readable when the child exits, but a child that was being
  // traced (a debugger, strace, a sanitizer's leak checker) at its exit cannot
  // be waited for until its tracer lets go. Such an exit is deferred and
  // checked again every few milliseconds instead of being reported too early.
  static bool waitable(pid_t pid) {
    siginfo_t info{};
    int result;
    do {
      result = waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    } while (result != 0 && errno == EINTR);
    return result != 0 || info.si_pid != 0;  // ECHILD: reaped by someone else
  }

  // Runs one callback of `process` without the lock. An exit is that of the
  // watch `serial` (0: any), whose pid was found waitable: a later watch at
  // the same address (the process was unwatched and destroyed meanwhile, and
  // another allocated there) is not told of it. Told, it would take the exit
  // claim of an instance whose child still runs, and nobody would act on
  // that child's real exit: its pidfd event finds the entry exited.
  void fire(Process* process, bool exit, std::uint64_t serial = 0) {
    if (exit) read_notify(process, true);
    Callback callback;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = watched_.find(process);
      if (it == watched_.end()) return;
      Entry& entry = *it->second;
      if (exit) {
        if (entry.exited || (serial != 0 && entry.serial != serial)) return;
        entry.exited = true;
        callback = std::move(entry.on_exit);
      } else {
        callback = entry.on_contents;
      }
      if (!callback) return;
      firing_ = process;
    }
    (*callback)();
    bool emptied = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      firing_ = nullptr;
      idle_.notify_all();
      if (exit) emptied = arm_contents_locked(process);
    }
    if (emptied) fire(process, false);  // emptied between the callback's look and ours
  }

  // The group is watched only from the exit on, and only if the exit left
  // something in it: before, its changes mean nothing to the lifecycle, and
  // most children are the last of their group to go. cgroup.events signals a
  // change with EPOLLPRI and stays "ready" until read: edge-triggered, so an
  // unread change cannot spin us; a change since the last read (one that
  // raced with this) is reported at once when added.
  // Returns true when the group is empty already (nothing to watch: the
  // caller reports it instead).
  bool arm_contents_locked(Process* process) {
    auto it = watched_.find(process);
    if (it == watched_.end()) return false;  // unwatched from its callback: finished
    Entry& entry = *it->second;
    if (entry.contents_fd < 0 || entry.contents_armed) return false;
    if (process->contents_empty()) return true;
    epoll_event contents{};
    contents.events = EPOLLPRI | EPOLLET;
    contents.data.ptr = tagged(process);
    // Fails only short of memory: the lifecycle's drain deadline then ends
    // the instance instead of the notice.
    entry.contents_armed = epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, entry.contents_fd, &contents) == 0;
    return false;
  }

  void run() {
    epoll_event events[64];
    std::vector<std::pair<Process*, std::uint64_t>> deferred;  // exited, not waitable yet (traced); its watch
    for (;;) {
      int count = epoll_wait(epoll_.get(), events, 64, deferred.empty() ? -1 : 5);
      if (count < 0) {
        if (errno != EINTR) return;
        count = 0;
      }
      for (int i = 0; i < count; ++i) {
        auto bits = reinterpret_cast<std::uintptr_t>(events[i].data.ptr);
        if (bits == 0) return;  // shutdown
        auto* process = reinterpret_cast<Process*>(bits & ~kTags);
        if ((bits & kTags) == kNotifyTag) {
          read_notify(process, false);
          continue;
        }
        if (bits & kContentsTag) {
          fire(process, false);
          continue;
        }
        pid_t pid;
        std::uint64_t serial;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto it = watched_.find(process);
          if (it == watched_.end() || it->second->exited) continue;
          epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd, nullptr);
          pid = it->second->pid;
          serial = it->second->serial;
        }
        if (waitable(pid)) {
          fire(process, true, serial);
        } else {
          deferred.emplace_back(process, serial);
        }
      }
      for (auto it = deferred.begin(); it != deferred.end();) {
        pid_t pid = 0;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto entry = watched_.find(it->first);
          if (entry != watched_.end() && entry->second->serial == it->second) pid = entry->second->pid;
        }
        if (pid == 0 || waitable(pid)) {
          if (pid != 0) fire(it->first, true, it->second);
          it = deferred.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  UniqueFd epoll_, wake_;
  std::uint64_t next_serial_ = 0;  // under mutex_
  std::mutex mutex_;
  std::condition_variable idle_;
  Process* firing_ = nullptr;
  std::unordered_map<Process*, std::unique_ptr<Entry>> watched_;
  std::unique_ptr<Thread> thread_;
};

// Fallback without pidfds: waitid(WNOWAIT) on one pid observes the exit and
// leaves the reaping to the core. A waiter cannot be interrupted, so one whose
// child is abandoned (never exits) is detached; its state is shared, so it
// touches nothing freed, and it runs no callback once unwatched. After the
// exit, a contained child's waiter goes on to watch its group (poll on
// cgroup.events and an eventfd that unwatch() signals).
class WaiterThreadExitMonitor final : public ExitMonitor {
 public:
  ~WaiterThreadExitMonitor() override { shutdown(); }

  Result<void> watch(Process& process, std::function<void()> on_exit, std::function<void()> on_contents,
                     std::function<void(std::string_view, bool)> on_notify) override {
    auto waiter = std::make_shared<Waiter>();
    waiter->on_exit = std::move(on_exit);
    int notify_fd = -1;
    if (on_notify && process.notify_handle() >= 0) {
      notify_fd = static_cast<int>(process.notify_handle());
      waiter->on_notify = std::move(on_notify);
    }
    int contents_fd = -1;
    if (on_contents && process.contents_handle() >= 0) {
      waiter->cancel.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!waiter->cancel) return Error{last_error(), "cannot watch the child's group: eventfd failed"};
      contents_fd = static_cast<int>(process.contents_handle());
      waiter->on_contents = std::move(on_contents);
    }
    auto pid = static_cast<id_t>(process.pid());
    auto thread = start_thread(kMonitorStackBytes, [waiter, pid, contents_fd, notify_fd] {
      tls_waiter = waiter.get();
      if (notify_fd >= 0 && !waiter->watch_notify(pid, notify_fd)) return waiter->end();
      siginfo_t info{};
      while (waitid(P_PID, pid, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
      }
      if (!waiter->run(waiter->on_exit)) return waiter->end();
      waiter->mark_exited();
      while (contents_fd >= 0) {
        pollfd ready[2] = {{contents_fd, POLLPRI, 0}, {waiter->cancel.get(), POLLIN, 0}};
        if (poll(ready, 2, -1) < 0 && errno != EINTR) break;
        if (ready[1].revents != 0) break;
        if (ready[0].revents != 0 && !waiter->run(waiter->on_contents)) break;
      }
      waiter->end();
    }, "an exit waiter");
    if (!thread) return std::move(thread).error();
    waiter->set_thread(std::move(*thread));
    std::vector<std::shared_ptr<Waiter>> done;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Waiters whose thread has ended stay listed until here: a process
      // object's address may be reused by the next one, and a long-lived host
      // must not accumulate them.
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->second->done()) {
          done.push_back(std::move(it->second));
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
      auto& slot = waiters_[&process];
      if (slot) done.push_back(std::move(slot));
      slot = std::move(waiter);
    }
    for (auto& old : done) retire(*old);
    return {};
  }

  void unwatch(Process& process) override {
    std::shared_ptr<Waiter> waiter;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = waiters_.find(&process);
      if (it == waiters_.end()) return;
      waiter = std::move(it->second);
      waiters_.erase(it);
    }
    retire(*waiter);
  }

  void shutdown() override {
    std::unordered_map<Process*, std::shared_ptr<Waiter>> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      all.swap(waiters_);
    }
    for (auto& entry : all) retire(*entry.second);
  }

 private:
  struct Waiter {
    std::mutex mutex;
    std::condition_variable changed;
    std::function<void()> on_exit, on_contents;
    std::function<void(std::string_view, bool)> on_notify;
    UniqueFd cancel;  // an eventfd, only with on_contents
    bool cancelled = false, firing = false, exited = false, finished = false;
    std::unique_ptr<Thread> thread;
    bool thread_set = false;

    // Runs `callback` unless unwatched; false once unwatched.
    template <typename Callback>
    bool run(const Callback& callback) {
      std::unique_lock<std::mutex> lock(mutex);
      if (cancelled) return false;
      firing = true;
      lock.unlock();
      callback();
      lock.lock();
      firing = false;
      changed.notify_all();
      return !cancelled;
    }
    // Until the exit (or the pipe's end of file): waitid() cannot be polled,
    // so this thread polls the notification pipe and checks for the exit
    // every 50 ms. A cost of this fallback only (no pidfds), and only for
    // modules with notification readiness. False once unwatched.
    bool watch_notify(id_t pid, int fd) {
      for (;;) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (cancelled) return false;  // unwatched: a detached waiter ends here
        }
        pollfd readable{fd, POLLIN, 0};
        if (poll(&readable, 1, 50) < 0 && errno != EINTR) return true;
        // On every pass, not only on silence: a descendant that inherited
        // the descriptor and keeps writing must not hide the exit.
        siginfo_t info{};
        int result = waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT);
        bool exited_now = result != 0 ? errno != EINTR : info.si_pid != 0;
        if (readable.revents == 0 && !exited_now) continue;
        // Readable, or exited: take what is there (everything, after the exit).
        for (int round = 0; round < (exited_now ? 16 : 1); ++round) {
          char buffer[4096];
          ssize_t got;
          do {
            got = read(fd, buffer, sizeof buffer);
          } while (got < 0 && errno == EINTR);
          if (got < 0 && errno == EAGAIN) break;
          bool eof = got <= 0;
          std::string_view data(buffer, got > 0 ? static_cast<std::size_t>(got) : 0);
          if (!run([&] { on_notify(data, eof); })) return false;
          if (eof) return true;
        }
        if (exited_now) return true;
      }
    }
    void end() {
      std::lock_guard<std::mutex> lock(mutex);
      finished = true;
      changed.notify_all();
    }
    void mark_exited() {
      std::lock_guard<std::mutex> lock(mutex);
      exited = true;
      changed.notify_all();
    }
    void set_thread(std::unique_ptr<Thread> started) {
      std::lock_guard<std::mutex> lock(mutex);
      thread = std::move(started);
      thread_set = true;
      changed.notify_all();
    }
    bool done() {
      std::lock_guard<std::mutex> lock(mutex);
      return finished;
    }
  };

  static thread_local Waiter* tls_waiter;

  static void retire(Waiter& waiter) {
    std::unique_lock<std::mutex> lock(waiter.mutex);
    waiter.cancelled = true;
    if (waiter.cancel) {
      std::uint64_t one = 1;
      (void)!write(waiter.cancel.get(), &one, sizeof one);
    }
    const bool own_thread = tls_waiter == &waiter;  // unwatch() from its own callback
    if (!own_thread) waiter.changed.wait(lock, [&] { return !waiter.firing; });
    // A waiter still in waitid() (its child never exited) cannot be woken.
    bool joinable = !own_thread && (waiter.exited || waiter.finished);
    if (joinable) waiter.changed.wait(lock, [&] { return waiter.finished && waiter.thread_set; });
    waiter.changed.wait(lock, [&] { return waiter.thread_set; });
    std::unique_ptr<Thread> thread = std::move(waiter.thread);
    lock.unlock();
    if (!thread) return;
    if (joinable) {
      thread->join();
    } else {
      thread->detach();
    }
  }

  std::mutex mutex_;
  std::unordered_map<Process*, std::shared_ptr<Waiter>> waiters_;
};

thread_local WaiterThreadExitMonitor::Waiter* WaiterThreadExitMonitor::tls_waiter = nullptr;

}  // namespace

Result<std::unique_ptr<ExitMonitor>> make_exit_monitor(bool prefer_pidfd) {
  if (prefer_pidfd) {
    // Probe with our own pid: ENOSYS means an old kernel (or a seccomp filter).
    UniqueFd probe(pidfd_open(getpid()));
    if (probe) {
      UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
      UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (epoll && wake) {
        auto monitor = std::make_unique<PidfdExitMonitor>(std::move(epoll), std::move(wake));
        auto started = monitor->start();
        if (!started) return std::move(started).error();
        return std::unique_ptr<ExitMonitor>(std::move(monitor));
      }
      // Out of descriptors right now (EMFILE): the waiter threads need none,
      // whereas failing here would leave the backend unable to spawn for good.
    }
  }
  return std::unique_ptr<ExitMonitor>(std::make_unique<WaiterThreadExitMonitor>());
}

}  // namespace modkit::platform
