// TimeSource: the steady clock, and ManualClock for tests.
#include "modkit/modkit.hpp"

namespace modkit {
namespace {

class SteadyTimeSource final : public TimeSource {
 public:
  time_point now() const override { return std::chrono::steady_clock::now(); }
  bool passes_by_itself() const override { return true; }
  void subscribe(std::weak_ptr<std::function<void()>>) override {}
};

}  // namespace

std::shared_ptr<TimeSource> steady_time_source() {
  static const std::shared_ptr<TimeSource> source = std::make_shared<SteadyTimeSource>();
  return source;
}

// Starts far from the epoch, so that "now minus a period" never underflows.
ManualClock::ManualClock() : now_(time_point{} + std::chrono::hours(24)) {}

TimeSource::time_point ManualClock::now() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return now_;
}

void ManualClock::subscribe(std::weak_ptr<std::function<void()>> wake) {
  std::lock_guard<std::mutex> lock(mutex_);
  subscribers_.push_back(std::move(wake));
}

void ManualClock::advance(std::chrono::steady_clock::duration by) {
  std::vector<std::shared_ptr<std::function<void()>>> wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (by.count() > 0) now_ += by;
    for (auto it = subscribers_.begin(); it != subscribers_.end();) {
      if (auto alive = it->lock()) {
        wake.push_back(std::move(alive));
        ++it;
      } else {
        it = subscribers_.erase(it);
      }
    }
  }
  // Called without the clock's lock: a subscriber may read now().
  for (auto& function : wake) {
    if (*function) (*function)();
  }
}

}  // namespace modkit
