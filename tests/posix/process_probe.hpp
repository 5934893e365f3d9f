// POSIX (Linux /proc) probes for the behaviour tests: zombies, children,
// open descriptors, whether a pid is still running.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

// A namespace of its own: other test headers define similar helpers in
// modkit::testing, and inline functions of one name must not differ (ODR).
namespace modkit::testing::probe {

struct ProcInfo {
  pid_t pid;
  char state;  // R, S, D, Z, T, ...
  pid_t ppid;
  pid_t pgid;
};

/// Reads /proc/PID/stat; false if the process does not exist.
inline bool read_proc(pid_t pid, ProcInfo& info) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!file || !std::getline(file, text)) return false;
  std::size_t close_paren = text.rfind(')');
  if (close_paren == std::string::npos) return false;
  std::istringstream rest(text.substr(close_paren + 2));
  info.pid = pid;
  rest >> info.state >> info.ppid >> info.pgid;
  return static_cast<bool>(rest);
}

/// The processes whose parent is this process.
inline std::vector<ProcInfo> children_of_self() {
  std::vector<ProcInfo> result;
  DIR* dir = opendir("/proc");
  if (!dir) return result;
  pid_t self = getpid();
  while (dirent* entry = readdir(dir)) {
    char* end;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != 0 || pid <= 0) continue;
    ProcInfo info;
    if (read_proc(static_cast<pid_t>(pid), info) && info.ppid == self) result.push_back(info);
  }
  closedir(dir);
  return result;
}

inline std::vector<pid_t> zombie_children() {
  std::vector<pid_t> result;
  for (const auto& child : children_of_self()) {
    if (child.state == 'Z') result.push_back(child.pid);
  }
  return result;
}

/// True while `pid` exists and is not a zombie (a killed grandchild is
/// reparented to an init that may be slow to reap it, or never reap it).
inline bool running(pid_t pid) {
  ProcInfo info;
  return read_proc(pid, info) && info.state != 'Z' && info.state != 'X';
}

/// Waits up to `timeout` for `pid` to stop running.
inline bool wait_not_running(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (running(pid)) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

/// The number of descriptors open in this process.
inline int open_fd_count() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the directory's own descriptor
}

/// The numbers of the descriptors open in this process.
inline std::vector<int> open_fds() {
  std::vector<int> result;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return result;
  int own = dirfd(dir);
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    int fd = std::atoi(entry->d_name);
    if (fd != own) result.push_back(fd);
  }
  closedir(dir);
  return result;
}

/// Descriptors open now that were not open in `before` (a leak, if any).
inline std::vector<int> new_fds_since(const std::vector<int>& before) {
  std::vector<int> result;
  for (int fd : open_fds()) {
    bool known = false;
    for (int old : before) known = known || old == fd;
    if (!known) result.push_back(fd);
  }
  return result;
}

/// The open descriptors of this process with their targets, for messages.
inline std::string describe_fds() {
  std::string text;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return text;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    char target[512];
    ssize_t length = readlink((std::string("/proc/self/fd/") + entry->d_name).c_str(), target, sizeof target - 1);
    target[length > 0 ? length : 0] = 0;
    text += std::string(entry->d_name) + "->" + target + " ";
  }
  closedir(dir);
  return text;
}

}  // namespace modkit::testing::probe
