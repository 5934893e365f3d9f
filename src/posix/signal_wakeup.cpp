// The POSIX SignalWakeup: an eventfd. write() is async-signal-safe, the
// descriptor is non-blocking so notify() can never block, and the counter keeps
// every notification until the relay thread reads it.
#include "platform/signal_wakeup.hpp"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <string>

#include "posix/unique_fd.hpp"

namespace modkit::platform {
namespace {

using posix::UniqueFd;

class EventFdWakeup final : public SignalWakeup {
 public:
  explicit EventFdWakeup(UniqueFd fd) : fd_(std::move(fd)) {}

  void notify() noexcept override {
    // Only write() and errno here: this runs inside signal handlers.
    int saved = errno;
    uint64_t one = 1;
    // EAGAIN would mean a counter near 2^64: a wake-up is pending anyway.
    while (::write(fd_.get(), &one, sizeof one) < 0 && errno == EINTR) {
    }
    errno = saved;
  }

  void wait() override {
    for (;;) {
      uint64_t count = 0;
      if (::read(fd_.get(), &count, sizeof count) == static_cast<ssize_t>(sizeof count)) return;
      // EAGAIN: nothing yet, sleep in poll(). EINTR: retry. Anything else
      // (cannot happen on a valid eventfd) also lands in poll, which blocks.
      pollfd fds[1] = {{fd_.get(), POLLIN, 0}};
      ::poll(fds, 1, -1);
    }
  }

 private:
  UniqueFd fd_;
};

}  // namespace

Result<std::unique_ptr<SignalWakeup>> make_signal_wakeup() {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) {
    int error = errno;
    return Error{std::make_error_code(std::errc::resource_unavailable_try_again),
                 "cannot create the signal wake-up eventfd: " +
                     std::error_code(error, std::generic_category()).message()};
  }
  return std::unique_ptr<SignalWakeup>(std::make_unique<EventFdWakeup>(std::move(fd)));
}

}  // namespace modkit::platform
