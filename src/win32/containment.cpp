// Windows: each child is assigned to a Job object of its own at creation
// (process.cpp), with JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, and a descendant
// cannot leave it, so every instance is contained already; cgroup_parent has
// no meaning here and is ignored.
#include "platform/containment.hpp"

namespace modkit::platform {
namespace {

class JobContainment final : public Containment {
 public:
  bool active() const override { return true; }
  void release() override {}
};

}  // namespace

Result<std::unique_ptr<Containment>> open_containment(const LocalProcessOptions&, std::vector<std::string>&) {
  return std::unique_ptr<Containment>(std::make_unique<JobContainment>());
}

}  // namespace modkit::platform
