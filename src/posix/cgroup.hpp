// One instance's cgroup v2 directory (Linux): made before the spawn, joined
// by the child before execve, ended whole by a stop, removed after the reap.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "modkit/modkit.hpp"
#include "posix/unique_fd.hpp"

namespace modkit::posix {

class CgroupCell {
 public:
  /// Makes `name` (which must not exist) in the directory `parent_fd`, whose
  /// canonical path is `parent`, and opens everything the spawn and the stop
  /// need, so that neither needs a new descriptor when the host has none to
  /// spare (EMFILE). Errors name the directory.
  static Result<std::unique_ptr<CgroupCell>> create(int parent_fd, const std::string& parent, const std::string& name);
  /// Removes the directory if it is empty; never blocks, never signals.
  ~CgroupCell();
  CgroupCell(const CgroupCell&) = delete;
  CgroupCell& operator=(const CgroupCell&) = delete;

  const std::string& path() const { return path_; }
  /// For clone3(CLONE_INTO_CGROUP).
  int directory_fd() const { return directory_.get(); }
  /// cgroup.procs, opened for writing on first use (only the fallback path
  /// needs it): a child writes "0" to it to join. -1 if it cannot be opened.
  /// close_procs() once the child is in.
  int procs_fd();
  void close_procs() { procs_.reset(); }
  /// cgroup.events, open for reading: turns EPOLLPRI when "populated" (or
  /// "frozen") changes. Reading it (populated()) re-arms it.
  int events_fd() const { return events_.get(); }

  /// True while a live (not zombie) process is in the cgroup. A cgroup that
  /// can no longer be read counts as empty.
  bool populated() const;
  /// True when cgroup.events says "frozen 1" (a parent was frozen).
  bool frozen() const;
  /// How many processes are in it now.
  std::int64_t count() const;
  /// Sends each of `signal_numbers`, in order, to every member but those of
  /// process group `skip_group` (which the caller signals itself; 0: none).
  /// Each pid is pinned with a pidfd and confirmed a member after it was
  /// pinned, so a pid recycled meanwhile is never hit; a few dozen at a time,
  /// so a module with thousands of processes cannot use up the host's
  /// descriptors. Returns how many were signalled.
  int signal_members(std::initializer_list<int> signal_numbers, pid_t skip_group) const;
  /// Kills every member: cgroup.kill (Linux 5.14), else kill_by_freezing().
  /// Returns false when neither could be used.
  bool kill_all() const;
  /// The fallback for kernels without cgroup.kill: freeze the cgroup (so no
  /// member can fork meanwhile), SIGKILL every member through pidfds, a few
  /// rounds until none is left, thaw. Public for the tests.
  bool kill_by_freezing() const;
  /// rmdir; true once the directory is gone (also when it already was).
  bool remove();

 private:
  CgroupCell(std::string path, UniqueFd directory, UniqueFd events, UniqueFd kill, UniqueFd freeze)
      : path_(std::move(path)),
        directory_(std::move(directory)),
        events_(std::move(events)),
        kill_(std::move(kill)),
        freeze_(std::move(freeze)) {}
  std::vector<pid_t> members() const;

  const std::string path_;
  UniqueFd directory_, procs_, events_;
  UniqueFd kill_;    // cgroup.kill, or none before Linux 5.14
  UniqueFd freeze_;  // cgroup.freeze, only without cgroup.kill
  bool removed_ = false;
};

/// The whole of a small file (a cgroup control file, a /proc file), `path`
/// relative to `directory` (or AT_FDCWD); empty, with errno set, when it
/// cannot be opened.
std::string read_text(int directory, const char* path);

/// How deep a module may nest cgroups inside its own (the backend's
/// directory sets cgroup.max.depth so), and how many of them the walks
/// below visit.
constexpr int kMaxCgroupDepth = 16;
constexpr int kMaxCgroupsWalked = 65536;

/// Removes the cgroup at `path` and (with `descend`) every cgroup below it,
/// deepest first; true once `path` is gone. Populated ones refuse (EBUSY)
/// and stay. Retries for a few milliseconds while only just-removed children
/// (still going offline in the kernel) stand in the way.
bool remove_cgroup_tree(const std::string& path, bool descend = true);
/// Whether the cgroup at `path` (or one below it) holds a live process.
bool cgroup_populated(const std::string& path);
/// How many processes the cgroup at `path` and those below it hold.
std::int64_t cgroup_process_count(const std::string& path);

}  // namespace modkit::posix
