// Platform layer: keeping each instance's processes together, so that a stop
// ends all of them, also those that left the process group.
//
// Linux: a cgroup v2 directory per instance, under one directory per backend
// (src/posix/cgroup_containment.cpp). Windows: every child already has a Job
// object of its own (src/win32/process.cpp), so there is nothing to set up.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "modkit/modkit.hpp"

namespace modkit::platform {

/// One backend's place for its instances' groups. spawn() asks it for a new
/// group per instance (SpawnRequest::containment). Thread-safe.
class Containment {
 public:
  virtual ~Containment() = default;
  /// True when spawn() puts each instance into a group of its own.
  virtual bool active() const = 0;
  /// Removes the backend's own directory when every group in it is gone
  /// (backend teardown). Never blocks.
  virtual void release() = 0;
};

/// Finds or makes the backend's place. Errors (invalid_argument, permission
/// denied, read-only file system, ...) only when `options` ask for containment
/// that cannot be had; with Containment::Automatic and nothing usable found
/// it returns an inactive object. `notes` receives what the host should be
/// told once (why containment is off, stale directories removed or left).
Result<std::unique_ptr<Containment>> open_containment(const LocalProcessOptions& options,
                                                       std::vector<std::string>& notes);

}  // namespace modkit::platform
