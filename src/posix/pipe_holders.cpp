#include "posix/pipe_holders.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "posix/pidfd.hpp"
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

// Reads a small /proc file whole.
bool read_small(const std::string& path, char* text, std::size_t size) {
  UniqueFd file(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) return false;
  ssize_t length = read(file.get(), text, size - 1);
  if (length <= 0) return false;
  text[length] = 0;
  return true;
}

// Whether descriptor `fd` of process `pid` was opened for writing: both ends
// of a pipe link to the same "pipe:[inode]", only fdinfo's flags tell them apart.
bool opened_for_writing(const std::string& pid, const char* fd) {
  char text[512];
  if (!read_small("/proc/" + pid + "/fdinfo/" + fd, text, sizeof text)) return false;
  const char* flags = std::strstr(text, "flags:");
  if (flags == nullptr) return false;
  unsigned long value = std::strtoul(flags + 6, nullptr, 8);
  return (value & O_ACCMODE) == O_WRONLY || (value & O_ACCMODE) == O_RDWR;
}

// True if /proc/<pid>/fd has a write end of one of `inodes`.
bool holds_write_end(const std::string& pid, const std::vector<ino_t>& inodes) {
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
    bool ours = false;
    for (ino_t wanted : inodes) ours = ours || inode == wanted;
    found = ours && opened_for_writing(pid, entry->d_name);
  }
  closedir(fds);
  return found;
}

// The parent pid from /proc/<pid>/stat ("pid (comm) state ppid ..."; comm may
// contain spaces and parentheses, so parse from the last ')').
pid_t parent_of(const std::string& pid) {
  char text[1024];
  if (!read_small("/proc/" + pid + "/stat", text, sizeof text)) return -1;
  const char* close = std::strrchr(text, ')');
  if (close == nullptr || close[1] == 0 || close[2] == 0) return -1;
  return static_cast<pid_t>(std::strtol(close + 3, nullptr, 10));  // skip ") S "
}

}  // namespace

int kill_write_end_holders(const std::vector<ino_t>& inodes, pid_t leader) {
#ifdef SYS_pidfd_open
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return 0;
  const pid_t self = getpid();
  int killed = 0;
  for (;;) {
    dirent* entry = readdir(proc);
    if (entry == nullptr) break;
    if (!all_digits(entry->d_name)) continue;
    auto pid = static_cast<pid_t>(std::atoi(entry->d_name));
    if (pid == self) continue;
    UniqueFd pidfd(pidfd_open(pid));
    if (!pidfd) continue;  // gone already
    if (pid != leader && parent_of(entry->d_name) == self) continue;  // the host's own fork
    if (!holds_write_end(entry->d_name, inodes)) continue;
    if (syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) == 0) ++killed;
  }
  closedir(proc);
  return killed;
#else
  (void)inodes;
  (void)leader;
  return 0;
#endif
}

}  // namespace modkit::posix
