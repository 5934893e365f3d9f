#include "posix/pipe_holders.hpp"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "posix/unique_fd.hpp"

namespace modkit::posix {
namespace {

bool all_digits(const char* text) {
  if (*text == 0) return false;
  for (; *text; ++text) {
    if (*text < '0' || *text > '9') return false;
  }
  return true;
}

// True if /proc/<pid>/fd has a link "pipe:[inode]" for one of `inodes`.
bool holds_pipe(const std::string& pid, const std::vector<ino_t>& inodes) {
  std::string directory = "/proc/" + pid + "/fd";
  DIR* fds = opendir(directory.c_str());
  if (fds == nullptr) return false;
  bool found = false;
  while (!found) {
    dirent* entry = readdir(fds);
    if (entry == nullptr) break;
    if (!all_digits(entry->d_name)) continue;
    char target[64];
    ssize_t length = readlinkat(dirfd(fds), entry->d_name, target, sizeof target - 1);
    if (length <= 0) continue;
    target[length] = 0;
    if (std::strncmp(target, "pipe:[", 6) != 0) continue;
    auto inode = static_cast<ino_t>(std::strtoull(target + 6, nullptr, 10));
    for (ino_t wanted : inodes) found = found || inode == wanted;
  }
  closedir(fds);
  return found;
}

}  // namespace

int kill_pipe_holders(const std::vector<ino_t>& inodes) {
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return 0;
  const std::string self = std::to_string(getpid());
  int killed = 0;
  for (;;) {
    dirent* entry = readdir(proc);
    if (entry == nullptr) break;
    if (!all_digits(entry->d_name) || self == entry->d_name) continue;
#ifdef SYS_pidfd_open
    UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, std::atoi(entry->d_name), 0)));
    if (!pidfd) continue;  // gone already (or no pidfd support: leave it)
    if (!holds_pipe(entry->d_name, inodes)) continue;
    if (syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) == 0) ++killed;
#endif
  }
  closedir(proc);
  return killed;
}

}  // namespace modkit::posix
