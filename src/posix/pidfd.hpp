// pidfd_open(2) (Linux 5.3), which glibc 2.36 wraps but older ones do not.
#pragma once

#include <errno.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>

namespace modkit::posix {

/// A descriptor that refers to process `pid` for as long as it is open, or -1
/// with errno set (ENOSYS on kernels without pidfds).
inline int pidfd_open(std::int64_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

}  // namespace modkit::posix
