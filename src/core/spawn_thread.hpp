// A long-lived thread of the backend's own that spawns the modules whose
// Privileges::die_with_host is set.
//
// Why: the parent-death signal fires when the *thread* that created the
// child ends, not the process (prctl(2), PR_SET_PDEATHSIG). Spawned from a
// host's short-lived worker thread, such a module would be killed as soon as
// that worker returned. This thread lives as long as the backend.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "core/platform_services.hpp"

namespace modkit::core {

class SpawnThread {
 public:
  using SpawnResult = Result<std::unique_ptr<platform::Process>>;
  explicit SpawnThread(const PlatformServices& services) : services_(services) {}
  /// Ends and joins the thread. Call only once no run() is in progress.
  ~SpawnThread();
  SpawnThread(const SpawnThread&) = delete;
  SpawnThread& operator=(const SpawnThread&) = delete;

  /// Runs services.spawn(request) on the thread (started on first use) and
  /// returns its result. Spawns run one at a time, each bounded as spawn is.
  /// Error resource_unavailable_try_again when the thread cannot be started.
  SpawnResult run(const platform::SpawnRequest& request);

 private:
  struct Job {
    const platform::SpawnRequest* request;
    std::optional<SpawnResult> result;
  };
  void loop();

  const PlatformServices& services_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Job*> queue_;
  bool ending_ = false;
  std::unique_ptr<platform::Thread> thread_;
};

}  // namespace modkit::core
