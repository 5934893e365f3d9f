#include "posix/cgroup.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/text.hpp"
#include "platform/system.hpp"
#include "posix/pidfd.hpp"

namespace modkit::posix {

std::string read_text(int directory, const char* path) {
  UniqueFd fd(openat(directory, path, O_RDONLY | O_CLOEXEC));
  std::string text;
  if (!fd) return text;
  char buffer[4096];
  for (;;) {
    ssize_t got = read(fd.get(), buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    text.append(buffer, static_cast<std::size_t>(got));
  }
  return text;
}

namespace {

int send_through_pidfd(int pidfd, int signal_number) {
#ifdef SYS_pidfd_send_signal
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, signal_number, nullptr, 0));
#else
  (void)pidfd;
  (void)signal_number;
  errno = ENOSYS;
  return -1;
#endif
}

std::vector<pid_t> parse_pids(const std::string& text) {
  std::vector<pid_t> pids;
  long value = 0;
  bool digits = false;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      value = value * 10 + (c - '0');
      digits = true;
    } else {
      if (digits) pids.push_back(static_cast<pid_t>(value));
      value = 0;
      digits = false;
    }
  }
  if (digits) pids.push_back(static_cast<pid_t>(value));
  return pids;
}

// A module allowed to write cgroupfs (root) may make cgroups inside its own
// and move processes there: they are still the instance's. Every listing
// and the removal walk them too, to a bounded depth and count.

template <typename Visit>
void for_each_below(int directory, int depth, int& budget, const Visit& visit) {
  if (depth > kMaxCgroupDepth) return;
  // kernfs counts a directory's subdirectories in its link count (2 + n):
  // a cgroup without children, the usual case, needs no listing.
  struct stat status;
  if (fstat(directory, &status) == 0 && status.st_nlink <= 2) return;
  int listing_fd = openat(directory, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (listing_fd < 0) return;
  DIR* listing = fdopendir(listing_fd);
  if (listing == nullptr) {
    close(listing_fd);
    return;
  }
  while (dirent* entry = readdir(listing)) {
    if (entry->d_type != DT_DIR || entry->d_name[0] == '.' || --budget < 0) continue;
    UniqueFd child(openat(directory, entry->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!child) continue;
    for_each_below(child.get(), depth + 1, budget, visit);
    visit(directory, entry->d_name, child.get());
  }
  closedir(listing);
}

// Every pid in the cgroup `directory` and in the cgroups below it.
std::vector<pid_t> all_pids(int directory) {
  std::vector<pid_t> pids = parse_pids(read_text(directory, "cgroup.procs"));
  int budget = kMaxCgroupsWalked;
  for_each_below(directory, 1, budget, [&](int, const char*, int child) {
    auto more = parse_pids(read_text(child, "cgroup.procs"));
    pids.insert(pids.end(), more.begin(), more.end());
  });
  return pids;
}

}  // namespace

Result<std::unique_ptr<CgroupCell>> CgroupCell::create(int parent_fd, const std::string& parent,
                                                       const std::string& name) {
  std::string path = core::concat({parent, "/", name});
  auto fail = [&](std::string_view what) -> Error {
    std::error_code code = platform::last_error();
    return Error{code, core::concat({what, " cgroup '", path, "': ", code.message()})};
  };
  if (mkdirat(parent_fd, name.c_str(), 0755) != 0) return fail("cannot create the");
  UniqueFd directory(openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  UniqueFd events(directory ? openat(directory.get(), "cgroup.events", O_RDONLY | O_CLOEXEC) : -1);
  UniqueFd kill(events ? openat(directory.get(), "cgroup.kill", O_WRONLY | O_CLOEXEC) : -1);
  UniqueFd freeze;
  if (events && !kill && errno == ENOENT) {  // before Linux 5.14
    freeze.reset(openat(directory.get(), "cgroup.freeze", O_RDWR | O_CLOEXEC));
  }
  if (!events || (!kill && !freeze)) {
    Error error = fail("cannot open the");
    unlinkat(parent_fd, name.c_str(), AT_REMOVEDIR);
    return error;
  }
  return std::unique_ptr<CgroupCell>(
      new CgroupCell(std::move(path), std::move(directory), std::move(events), std::move(kill), std::move(freeze)));
}

int CgroupCell::procs_fd() {
  if (!procs_) procs_.reset(openat(directory_.get(), "cgroup.procs", O_WRONLY | O_CLOEXEC));
  return procs_.get();
}

CgroupCell::~CgroupCell() { remove(); }

namespace {

// "<key> 1" in cgroup.events, read through the cell's open descriptor (no
// new descriptor, and the cheapest read there is).
bool event_set(int events_fd, const char* key) {
  char buffer[256];
  ssize_t got;
  do {
    got = pread(events_fd, buffer, sizeof buffer - 1, 0);
  } while (got < 0 && errno == EINTR);
  if (got <= 0) return false;
  buffer[got] = '\0';
  const char* field = std::strstr(buffer, key);
  return field != nullptr && field[std::strlen(key)] == '1';
}

}  // namespace

bool CgroupCell::populated() const { return event_set(events_.get(), "populated "); }

bool CgroupCell::frozen() const { return event_set(events_.get(), "frozen "); }

std::vector<pid_t> CgroupCell::members() const { return all_pids(directory_.get()); }

std::int64_t CgroupCell::count() const { return static_cast<std::int64_t>(members().size()); }

namespace {

// A member pinned by pidfd: a pid read from cgroup.procs may belong to
// someone else by the time it is opened (the member exited and was reaped by
// init, the pid reused).
struct Member {
  pid_t pid;
  UniqueFd pidfd;
};

// Pins up to kBatch members, then lists the cgroup again: a pidfd is kept
// only if its pid is still listed and its process alive afterwards (alive
// then means it held that pid throughout, so the second list was about it).
// `skip_group`: members of this process group are left out (the caller
// signals the group itself); telling them apart needs no pin, as leaving one
// out never signals anybody. Calls `act` on each confirmed member; a batch at
// a time, so the host never holds more than kBatch pidfds for this.
constexpr std::size_t kBatch = 32;

template <typename Act>
void for_each_confirmed_member(int directory, pid_t skip_group, const Act& act) {
  std::vector<pid_t> listed = all_pids(directory);
  for (std::size_t from = 0; from < listed.size(); from += kBatch) {
    std::vector<Member> pinned;
    for (std::size_t i = from; i < listed.size() && i < from + kBatch; ++i) {
      if (skip_group > 0 && getpgid(listed[i]) == skip_group) continue;
      UniqueFd pidfd(pidfd_open(listed[i]));
      if (pidfd) pinned.push_back({listed[i], std::move(pidfd)});
    }
    if (pinned.empty()) continue;
    std::vector<pid_t> again = all_pids(directory);
    std::sort(again.begin(), again.end());
    for (auto& member : pinned) {
      if (!std::binary_search(again.begin(), again.end(), member.pid)) continue;
      if (send_through_pidfd(member.pidfd.get(), 0) != 0) continue;  // gone since
      act(member);
    }
  }
}

bool write_once(int fd, const char* value) {
  ssize_t written;
  do {
    written = pwrite(fd, value, std::strlen(value), 0);
  } while (written < 0 && errno == EINTR);
  return written == static_cast<ssize_t>(std::strlen(value));
}

}  // namespace

int CgroupCell::signal_members(std::initializer_list<int> signal_numbers, pid_t skip_group) const {
  int signalled = 0;
  for_each_confirmed_member(directory_.get(), skip_group, [&](const Member& member) {
    bool sent = false;
    for (int signal_number : signal_numbers) sent = send_through_pidfd(member.pidfd.get(), signal_number) == 0 || sent;
    signalled += sent ? 1 : 0;
  });
  return signalled;
}

bool CgroupCell::kill_all() const {
  if (kill_ && write_once(kill_.get(), "1")) return true;
  return kill_by_freezing();
}

bool CgroupCell::kill_by_freezing() const {
  // A frozen member cannot fork, but can still be killed: fatal signals
  // reach frozen tasks in cgroup v2 (Documentation/admin-guide/cgroup-v2.rst).
  UniqueFd opened;
  int freeze = freeze_.get();
  if (freeze < 0) {
    opened.reset(openat(directory_.get(), "cgroup.freeze", O_RDWR | O_CLOEXEC));
    freeze = opened.get();
  }
  if (freeze < 0 || !write_once(freeze, "1")) return false;
  // A member in the middle of fork() when the freeze lands may still add a
  // child: a few rounds catch those.
  for (int round = 0; round < 8; ++round) {
    int found = 0;
    for_each_confirmed_member(directory_.get(), 0, [&](const Member& member) {
      ++found;
      send_through_pidfd(member.pidfd.get(), SIGKILL);
    });
    if (found == 0) break;
  }
  write_once(freeze, "0");
  return true;
}

bool CgroupCell::remove() {
  if (!removed_) removed_ = remove_cgroup_tree(path_);
  return removed_;
}

bool remove_cgroup_tree(const std::string& path, bool descend) {
  UniqueFd directory(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!directory) return errno == ENOENT;
  // A removed cgroup goes offline a moment later (the kernel finishes it in
  // a work item), and until then its parent refuses rmdir with EBUSY as if
  // it still had children. So: cgroups a module made inside its own first,
  // deepest first, then this one, again for a few milliseconds while only
  // such dying children stand in the way (never while a process is there).
  for (int attempt = 0;; ++attempt) {
    int budget = kMaxCgroupsWalked;
    if (descend) {
      for_each_below(directory.get(), 1, budget,
                     [](int parent, const char* name, int) { unlinkat(parent, name, AT_REMOVEDIR); });
    }
    if (rmdir(path.c_str()) == 0 || errno == ENOENT) return true;
    int error = errno;
    if (error != EBUSY || attempt >= 50 ||
        read_text(directory.get(), "cgroup.events").find("populated 1") != std::string::npos) {
      errno = error;
      return false;
    }
    usleep(1000);
  }
}

bool cgroup_populated(const std::string& path) {
  UniqueFd directory(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!directory) return false;
  return read_text(directory.get(), "cgroup.events").find("populated 1") != std::string::npos;
}

std::int64_t cgroup_process_count(const std::string& path) {
  UniqueFd directory(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  return directory ? static_cast<std::int64_t>(all_pids(directory.get()).size()) : 0;
}

}  // namespace modkit::posix
