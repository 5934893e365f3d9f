// The backend's cgroup v2 directory (Linux): where it is, and the cells in it.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "platform/containment.hpp"
#include "posix/cgroup.hpp"

namespace modkit::posix {

class CgroupContainment final : public platform::Containment {
 public:
  /// `directory` is the backend's own directory, already made and locked
  /// through `lock`; empty when inactive.
  explicit CgroupContainment(std::string directory, UniqueFd lock = UniqueFd())
      : directory_(std::move(directory)), lock_(std::move(lock)) {}
  ~CgroupContainment() override { release(); }

  bool active() const override { return !directory_.empty(); }
  void release() override;

  /// A new cell for one instance (only when active).
  Result<std::unique_ptr<CgroupCell>> create_cell(const std::string& name) const {
    return CgroupCell::create(lock_.get(), directory_, name);
  }

 private:
  const std::string directory_;
  UniqueFd lock_;  // flock(LOCK_EX) on directory_ while the backend lives (see remove_stale)
};

/// The cgroup v2 directory the calling process is in, as a path in a mounted
/// cgroup2 hierarchy (from /proc/self/cgroup and /proc/self/mountinfo), or
/// empty when there is none (errno then non-zero if a file could not be read).
std::string own_cgroup_directory();
/// The same, from the text of /proc/self/cgroup and /proc/self/mountinfo.
std::string cgroup_directory_from(std::string_view proc_cgroup, std::string_view mountinfo);

}  // namespace modkit::posix
