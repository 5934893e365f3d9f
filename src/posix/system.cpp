#include "platform/system.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "posix/thread_signals.hpp"

namespace modkit::platform {

void fill_random(unsigned char* buffer, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    ssize_t count = getrandom(buffer + done, size - done, 0);
    if (count > 0) {
      done += static_cast<std::size_t>(count);
      continue;
    }
    if (count < 0 && errno == EINTR) continue;
    break;
  }
  if (done == size) return;
  // getrandom() missing (pre-3.17 kernel, seccomp filter): fall back to the device.
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  while (fd >= 0 && done < size) {
    ssize_t count = read(fd, buffer + done, size - done);
    if (count > 0) {
      done += static_cast<std::size_t>(count);
    } else if (count < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  if (fd >= 0) close(fd);
}

namespace {

// Keeps a write to a pipe whose reader is gone from killing the host with
// SIGPIPE without touching the process-wide disposition, which the host owns:
// block SIGPIPE on this thread, and after an EPIPE take the thread-directed
// signal it raised off the pending set before unblocking (the technique
// libcurl and OpenSSL users apply around their writes).
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    if (posix::tls_all_signals_blocked) {
      // A modkit thread (a reader, the supervisor): SIGPIPE has been blocked
      // all along and only this thread's own writes can raise it, so no call
      // is needed until an EPIPE.
      was_blocked_ = true;
      return;
    }
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &pipe_set_, &old);
    was_blocked_ = sigismember(&old, SIGPIPE) == 1;
    // Only a blocked SIGPIPE can be pending, and one raised by someone else
    // must survive us.
    if (was_blocked_) {
      sigset_t pending;
      was_pending_ = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    }
  }
  ~SigpipeGuard() {
    int saved_errno = errno;
    if (saw_epipe_ && !was_pending_) {
      timespec zero{};
      while (sigtimedwait(&pipe_set_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    if (!was_blocked_) pthread_sigmask(SIG_UNBLOCK, &pipe_set_, nullptr);
    errno = saved_errno;
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;
  void saw_epipe() { saw_epipe_ = true; }

 private:
  sigset_t pipe_set_;
  bool was_blocked_ = false;
  bool was_pending_ = false;
  bool saw_epipe_ = false;
};

// Waits until a full non-blocking descriptor takes data again. False when it
// never will (not a valid descriptor, poll itself failing).
bool wait_writable(int fd) {
  pollfd entry{fd, POLLOUT, 0};
  for (;;) {
    int ready = poll(&entry, 1, -1);
    // POLLERR or POLLHUP: the next write() reports the error.
    if (ready > 0) return (entry.revents & POLLNVAL) == 0;
    if (ready < 0 && errno != EINTR && errno != EAGAIN) return false;
  }
}

void write_guarded(int fd, const char* data, std::size_t size, SigpipeGuard& guard) {
  while (size > 0) {
    ssize_t count = write(fd, data, size);
    if (count > 0) {
      data += count;
      size -= static_cast<std::size_t>(count);
      continue;
    }
    if (count == 0) return;  // no progress and no error: give up rather than spin
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      // A non-blocking descriptor: wait and go on with the same record, so it
      // is neither dropped nor cut at PIPE_BUF.
      if (wait_writable(fd)) continue;
      return;
    }
    if (errno == EPIPE) guard.saw_epipe();
    return;
  }
}

}  // namespace

void write_all(int fd, const char* data, std::size_t size) {
  SigpipeGuard guard;
  write_guarded(fd, data, size, guard);
}

void write_all(std::FILE* file, const char* data, std::size_t size) {
  SigpipeGuard guard;  // fflush writes what the host left buffered, to the same pipe
  flockfile(file);
  if (std::fflush(file) != 0 && errno == EPIPE) guard.saw_epipe();
  int fd = fileno(file);
  if (fd >= 0) {
    write_guarded(fd, data, size, guard);
  } else if ((std::fwrite(data, 1, size, file) != size || std::fflush(file) != 0) && errno == EPIPE) {
    guard.saw_epipe();
  }
  funlockfile(file);
}

std::error_code last_error() { return std::error_code(errno, std::generic_category()); }

std::string error_text(std::error_code code) { return code.message(); }

}  // namespace modkit::platform
