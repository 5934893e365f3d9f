// Finding the cgroup v2 directory a backend may use, making its own
// directory there, and cleaning what backends of exited hosts left behind.
#include "posix/cgroup_containment.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/text.hpp"
#include "platform/system.hpp"
#include "posix/cgroup_limits.hpp"
#include "posix/unique_fd.hpp"

namespace modkit::posix {
namespace {

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

std::string read_file(const std::string& path) { return read_text(AT_FDCWD, path.c_str()); }

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  for (;;) {
    std::size_t at = text.find(separator);
    parts.push_back(text.substr(0, at));
    if (at == std::string_view::npos) return parts;
    text.remove_prefix(at + 1);
  }
}

// mountinfo writes space, tab, newline and backslash in paths as \ooo.
std::string unescape_mount_path(std::string_view field) {
  std::string path;
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && field[i + 1] >= '0' && field[i + 1] <= '7') {
      path += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 + (field[i + 3] - '0'));
      i += 3;
    } else {
      path += field[i];
    }
  }
  return path;
}

// Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, it
// names a process for good, as a pid alone is reused.
std::string start_time(long pid) {
  std::string stat = read_file(core::concat({"/proc/", core::Decimal(pid), "/stat"}));
  std::size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return "0";
  auto fields = split(std::string_view(stat).substr(paren + 2), ' ');
  // fields[0] is field 3 (state), so field 22 is fields[19].
  return fields.size() > 19 ? std::string(fields[19]) : std::string("0");  // no /proc: the name only needs digits
}

bool is_cgroup2_directory(const std::string& path) {
  struct statfs info;
  struct stat status;
  return stat(path.c_str(), &status) == 0 && S_ISDIR(status.st_mode) && statfs(path.c_str(), &info) == 0 &&
         static_cast<unsigned long>(info.f_type) == CGROUP2_SUPER_MAGIC;
}

// Processes may only live in a "domain" cgroup; under a threaded one every
// new directory is "domain invalid" and no process may enter it. The root
// has no cgroup.type and is a domain.
std::string cgroup_type(const std::string& directory) {
  std::string type = read_file(core::concat({directory, "/cgroup.type"}));
  while (!type.empty() && type.back() == '\n') type.pop_back();
  return type.empty() ? "domain" : type;
}

bool writable(const std::string& directory) {
  return access(directory.c_str(), W_OK) == 0 && access(core::concat({directory, "/cgroup.procs"}).c_str(), W_OK) == 0;
}

// "modkit-<pid>-<start>-<n>", all three numbers: what make_locked_directory
// names, and nothing else (not a "modkit-test-..." a host made itself).
bool is_backend_directory_name(std::string_view name) {
  if (name.substr(0, 7) != "modkit-") return false;
  auto parts = split(name.substr(7), '-');
  if (parts.size() != 3) return false;
  for (auto part : parts) {
    if (part.empty() || part.find_first_not_of("0123456789") != std::string_view::npos) return false;
  }
  return true;
}

// Each backend holds flock(LOCK_EX) on its own directory for as long as it
// lives; the kernel drops the lock when the host dies, however it dies. So a
// directory "modkit-*" whose lock can be taken belongs to no live backend
// (the pid in its name is only for people: a host in another pid namespace
// may have the same one). Holding that lock, each instance directory in it
// is removed when empty, then the backend's. A populated one is left as it
// is (its processes were started by another host: not ours to signal) and
// reported.
void remove_stale(const std::string& parent, std::vector<std::string>& notes) {
  DIR* listing = opendir(parent.c_str());
  if (listing == nullptr) return;
  int removed = 0;
  while (dirent* entry = readdir(listing)) {
    if (entry->d_type != DT_DIR || !is_backend_directory_name(entry->d_name)) continue;
    std::string directory = core::concat({parent, "/", entry->d_name});
    UniqueFd lock(open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!lock || flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;  // in use (or gone)
    if (DIR* cells = opendir(directory.c_str())) {
      while (dirent* cell = readdir(cells)) {
        if (cell->d_type != DT_DIR || cell->d_name[0] == '.') continue;
        std::string path = core::concat({directory, "/", cell->d_name});
        if (cgroup_populated(path)) {
          // Not even the empty cgroups inside it are touched.
          notes.push_back(core::concat({"cgroup '", path, "' of a backend that has ended still holds ",
                                        core::Decimal(cgroup_process_count(path)),
                                        " process(es); modkit leaves it alone (it did not start them). To end "
                                        "them: write 1 to its cgroup.kill, then remove the directory"}));
        } else if (remove_cgroup_tree(path)) {
          ++removed;
        }
      }
      closedir(cells);
    }
    if (remove_cgroup_tree(directory, false)) ++removed;  // not into the populated cells left above
  }
  closedir(listing);
  if (removed > 0) {
    notes.push_back(core::concat({"removed ", core::Decimal(removed),
                                  " empty cgroup(s) (with what was inside them) left in '", parent,
                                  "' by backends that have ended"}));
  }
}

// Makes and locks the backend's directory. Another backend's remove_stale
// may take the lock between our mkdir and flock and remove the directory:
// then the next name is tried.
Result<UniqueFd> make_locked_directory(const std::string& parent, std::string& directory) {
  static std::atomic<unsigned> backends{0};
  std::error_code code = std::make_error_code(std::errc::resource_unavailable_try_again);
  for (int attempt = 0; attempt < 16; ++attempt) {
    directory = core::concat({parent, "/modkit-", core::Decimal(getpid()), "-", start_time(getpid()), "-",
                              core::Decimal(backends.fetch_add(1) + 1)});
    if (mkdir(directory.c_str(), 0755) != 0) {
      code = platform::last_error();
      if (code == std::errc::file_exists) continue;
      break;
    }
    UniqueFd lock(open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!lock) {
      code = platform::last_error();
      if (code == std::errc::no_such_file_or_directory) continue;  // a cleaner took it first
      rmdir(directory.c_str());
      break;
    }
    // A cleaner holds the lock only for a few rmdir calls: wait up to ~100 ms.
    bool locked = false;
    for (int spin = 0; spin < 100 && !locked; ++spin) {
      locked = flock(lock.get(), LOCK_EX | LOCK_NB) == 0;
      if (!locked) usleep(1000);
    }
    struct stat opened, named;
    if (locked && fstat(lock.get(), &opened) == 0 && stat(directory.c_str(), &named) == 0 &&
        opened.st_ino == named.st_ino) {
      // Bounds how deep a module may nest cgroups in its own, so every walk
      // of an instance's cgroups sees all of them (best effort).
      UniqueFd depth(openat(lock.get(), "cgroup.max.depth", O_WRONLY | O_CLOEXEC));
      const core::Decimal limit(kMaxCgroupDepth + 1);
      if (depth) (void)!write(depth.get(), std::string_view(limit).data(), std::string_view(limit).size());
      // Whatever of memory, cpu, pids cgroup_parent delegates reaches every
      // cell; one not enabled is reported by the limit that needs it.
      (void)enable_limit_controllers(lock.get());
      return lock;
    }
    code = std::make_error_code(std::errc::resource_unavailable_try_again);
  }
  return Error{code, core::concat({"cannot create cgroup '", directory, "': ", code.message()})};
}

}  // namespace

void CgroupContainment::release() {
  // EBUSY: a cell could not be emptied. The lock goes with the backend, so a
  // later backend's remove_stale finishes the job.
  if (!directory_.empty()) remove_cgroup_tree(directory_);  // its cells are gone, or hold processes (then it stays)
}

std::string own_cgroup_directory() {
  std::string cgroup = read_file("/proc/self/cgroup");
  if (cgroup.empty()) return {};  // errno says why
  std::string mountinfo = read_file("/proc/self/mountinfo");
  if (mountinfo.empty()) return {};
  errno = 0;
  return cgroup_directory_from(cgroup, mountinfo);
}

std::string cgroup_directory_from(std::string_view proc_cgroup, std::string_view mountinfo) {
  // The v2 entry is the line "0::<path>" (hybrid systems list v1 ones too).
  std::string relative;
  for (auto line : split(proc_cgroup, '\n')) {
    if (line.substr(0, 3) == "0::") relative = std::string(line.substr(3));
  }
  if (relative.empty() || relative[0] != '/') return {};
  // A line of mountinfo: id parent major:minor root mount-point options
  // [optional fields] - type source super-options. The root is the part of
  // the hierarchy the mount shows (not "/" inside a cgroup namespace or a
  // bind mount of a subtree).
  for (auto line : split(mountinfo, '\n')) {
    std::size_t dash = line.find(" - ");
    if (dash == std::string_view::npos) continue;
    auto after = split(line.substr(dash + 3), ' ');
    if (after.empty() || after[0] != "cgroup2") continue;
    auto fields = split(line.substr(0, dash), ' ');
    if (fields.size() < 5) continue;
    std::string root = unescape_mount_path(fields[3]);
    std::string mount_point = unescape_mount_path(fields[4]);
    if (root == "/") root.clear();
    if (relative.compare(0, root.size(), root) != 0) continue;  // our cgroup is not under this mount
    std::string rest = relative.substr(root.size());
    if (!rest.empty() && rest[0] != '/') continue;  // "/a" is not under "/ab"
    if (rest == "/") rest.clear();
    if (mount_point == "/" && !rest.empty()) return rest;
    return mount_point + rest;
  }
  return {};
}

}  // namespace modkit::posix

namespace modkit::platform {

Result<std::unique_ptr<Containment>> open_containment(const LocalProcessOptions& options,
                                                       std::vector<std::string>& notes) {
  using posix::CgroupContainment;
  auto inactive = [] { return std::unique_ptr<Containment>(std::make_unique<CgroupContainment>(std::string())); };
  if (options.containment == modkit::Containment::Off) return inactive();

  std::string parent = options.cgroup_parent;
  bool explicit_parent = !parent.empty();
  std::string why_not;
  if (explicit_parent) {
    // Resolved once (a relative path, a symlink): every later step uses the
    // directory it names now, whatever the host's working directory or the
    // link become.
    char* resolved = realpath(parent.c_str(), nullptr);
    if (resolved != nullptr) {
      parent = resolved;
      std::free(resolved);
    }
    if (resolved == nullptr || !posix::is_cgroup2_directory(parent)) {
      return core::error_of(std::errc::invalid_argument, {"cgroup_parent '", options.cgroup_parent,
                                                          "' is not a directory of a mounted cgroup v2 hierarchy"});
    }
    std::string type = posix::cgroup_type(parent);
    if (type != "domain") {
      return core::error_of(std::errc::invalid_argument,
                            {"cgroup_parent '", options.cgroup_parent, "' is a '", type,
                             "' cgroup: processes can only be put in cgroups below a 'domain' one"});
    }
  } else {
    errno = 0;
    parent = posix::own_cgroup_directory();
    if (parent.empty() && errno != 0 && errno != ENOENT) {
      why_not = core::concat({"cannot read /proc/self/cgroup or /proc/self/mountinfo: ", last_error().message()});
    } else if (parent.empty()) {
      why_not = "no cgroup v2 hierarchy holds this process (none mounted, or cgroup v1 only)";
    } else if (!posix::writable(parent)) {
      why_not = core::concat({"the host's cgroup '", parent, "' is not writable by this process"});
      parent.clear();
    } else if (std::string type = posix::cgroup_type(parent); type != "domain") {
      why_not = core::concat({"the host's cgroup '", parent, "' is a '", type, "' cgroup, below which no process can be put"});
      parent.clear();
    }
  }

  std::string directory;
  posix::UniqueFd lock;
  if (!parent.empty()) {
    posix::remove_stale(parent, notes);
    auto locked = posix::make_locked_directory(parent, directory);
    if (locked) {
      lock = std::move(*locked);
    } else {
      why_not = locked.error().message;
      if (explicit_parent || options.containment == modkit::Containment::Required) return std::move(locked).error();
      directory.clear();
    }
  }
  if (directory.empty()) {
    if (options.containment == modkit::Containment::Required) {
      return core::error_of(std::errc::operation_not_supported, {"containment is required but unavailable: ", why_not});
    }
    notes.push_back(core::concat({"instances are not contained: ", why_not,
                                  "; a descendant that leaves its process group can outlive a stop (see the README's "
                                  "Containment section; set LocalProcessOptions::cgroup_parent)"}));
    return inactive();
  }
  return std::unique_ptr<Containment>(std::make_unique<CgroupContainment>(std::move(directory), std::move(lock)));
}

}  // namespace modkit::platform
