// A cgroup v2 parent directory of the test's own, for containment tests
// (Linux, root). Made under the v2 hierarchy this process sees, named
// "modkit-test-<pid>-<n>" so that it is recognisably a test's; removed with
// everything under it when the object goes, also when the test failed: the
// processes in it (only ones the test started) are killed through its own
// cgroup.kill first. Nothing outside it is moved, changed or killed.
#pragma once

#ifndef _WIN32

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace modkit::testing {

/// Where a cgroup v2 hierarchy is mounted here: /sys/fs/cgroup/unified on the
/// project's machines (beside v1), /sys/fs/cgroup on a pure v2 system; empty
/// when there is none.
inline std::string cgroup2_mount() {
  for (const char* candidate : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
    if (access((std::string(candidate) + "/cgroup.procs").c_str(), F_OK) == 0 &&
        access((std::string(candidate) + "/cgroup.subtree_control").c_str(), F_OK) == 0) {
      return candidate;
    }
  }
  return {};
}

inline std::string read_text_file(const std::string& path) {
  std::string text;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buffer[4096];
  ssize_t got;
  while ((got = read(fd, buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<std::size_t>(got));
  close(fd);
  return text;
}

inline bool write_text_file(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return ok;
}

/// The subdirectories of `directory` (names only).
inline std::vector<std::string> subdirectories(const std::string& directory) {
  std::vector<std::string> names;
  if (DIR* listing = opendir(directory.c_str())) {
    while (dirent* entry = readdir(listing)) {
      if (entry->d_type == DT_DIR && entry->d_name[0] != '.') names.push_back(entry->d_name);
    }
    closedir(listing);
  }
  return names;
}

class TestCgroupParent {
 public:
  TestCgroupParent() {
    std::string mount = cgroup2_mount();
    if (mount.empty() || geteuid() != 0) return;
    remove_abandoned(mount);
    static std::atomic<int> counter{0};
    std::string path = mount + "/modkit-test-" + std::to_string(getpid()) + "-" + std::to_string(++counter);
    if (mkdir(path.c_str(), 0755) == 0) path_ = path;
  }
  ~TestCgroupParent() { remove_tree(path_); }
  TestCgroupParent(const TestCgroupParent&) = delete;
  TestCgroupParent& operator=(const TestCgroupParent&) = delete;

  /// Empty when no cgroup v2 hierarchy is writable here (tests then skip).
  const std::string& path() const { return path_; }
  explicit operator bool() const { return !path_.empty(); }

  /// Every directory below, deepest first.
  std::vector<std::string> descendants() const {
    std::vector<std::string> found;
    collect(path_, found);
    return found;
  }

 private:
  static void collect(const std::string& directory, std::vector<std::string>& found) {
    for (const auto& name : subdirectories(directory)) {
      collect(directory + "/" + name, found);
      found.push_back(directory + "/" + name);
    }
  }

  // Parents of test processes that died without their destructors (a
  // sanitizer's abort, a timeout's kill): removed when their process is gone
  // and nothing runs in them, so one crash does not fail every later check
  // for leftovers. A populated one is left for a person to look at.
  static void remove_abandoned(const std::string& mount) {
    for (const auto& name : subdirectories(mount)) {
      if (name.rfind("modkit-test-", 0) != 0) continue;
      long owner = std::strtol(name.c_str() + 12, nullptr, 10);
      if (owner <= 0 || kill(static_cast<pid_t>(owner), 0) == 0 || errno != ESRCH) continue;
      std::string path = mount + "/" + name;
      if (read_text_file(path + "/cgroup.events").find("populated 1") != std::string::npos) continue;
      std::vector<std::string> below;
      collect(path, below);
      for (const auto& directory : below) rmdir(directory.c_str());
      rmdir(path.c_str());
    }
  }

  // Kills what is left in our own tree (cgroup.kill covers descendants),
  // waits (bounded) for it to empty, and removes the directories deepest
  // first.
  static void remove_tree(const std::string& path) {
    if (path.empty()) return;
    write_text_file(path + "/cgroup.kill", "1");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (read_text_file(path + "/cgroup.events").find("populated 1") != std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::vector<std::string> below;
    collect(path, below);
    for (const auto& directory : below) rmdir(directory.c_str());
    if (rmdir(path.c_str()) != 0) std::fprintf(stderr, "test cgroup %s not removed: errno %d\n", path.c_str(), errno);
  }

  std::string path_;
};

}  // namespace modkit::testing

#endif  // !_WIN32
