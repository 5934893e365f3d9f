#include "platform/system.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cstring>

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

void write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t count = write(fd, data, size);
    if (count < 0) {
      if (errno == EINTR) continue;
      return;
    }
    data += count;
    size -= static_cast<std::size_t>(count);
  }
}

std::error_code last_error() { return std::error_code(errno, std::generic_category()); }

std::string error_text(std::error_code code) { return code.message(); }

}  // namespace modkit::platform
