#include "posix/pipe_reader.hpp"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

namespace modkit::posix {

// Read first and poll only when the pipe is empty: a busy child costs one
// syscall per chunk, an idle one sleeps in poll() until data or interrupt().
std::ptrdiff_t PosixPipeReader::read(char* buffer, std::size_t size) {
  for (;;) {
    ssize_t count = ::read(pipe_.get(), buffer, size);
    if (count >= 0) return count;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    pollfd fds[2] = {{pipe_.get(), POLLIN, 0}, {wake_->get(), POLLIN, 0}};
    int ready = ::poll(fds, 2, -1);
    if (ready < 0 && errno != EINTR) return -1;
    if (ready > 0 && (fds[1].revents & POLLIN)) return 0;  // interrupted
  }
}

void PosixPipeReader::interrupt() {
  // The eventfd stays readable once written (nobody reads it), so every
  // current and later poll() of both readers returns at once.
  uint64_t one = 1;
  while (::write(wake_->get(), &one, sizeof one) < 0 && errno == EINTR) {
  }
}

}  // namespace modkit::posix
