// The platform services the backend uses, injectable so that its logic can be
// tested with fake processes, monitors and threads as well as real ones.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "modkit/modkit.hpp"
#include "platform/containment.hpp"
#include "platform/exit_monitor.hpp"
#include "platform/process.hpp"
#include "platform/thread.hpp"

namespace modkit::core {

struct PlatformServices {
  std::function<Result<std::unique_ptr<platform::Process>>(const platform::SpawnRequest&)> spawn;
  std::function<Result<std::unique_ptr<platform::ExitMonitor>>(bool prefer_pidfd)> make_exit_monitor;
  std::function<Result<std::unique_ptr<platform::Thread>>(std::size_t stack_bytes, std::function<void()> body,
                                                         std::string_view what)>
      start_thread;
  /// Empty (tests with fakes): no containment.
  std::function<Result<std::unique_ptr<platform::Containment>>(const LocalProcessOptions&, std::vector<std::string>&)>
      open_containment;
};

/// The real ones: platform::spawn, make_exit_monitor, start_thread, open_containment.
PlatformServices real_platform_services();

/// Builds a backend on `services` (tests); LocalProcessBackend::create uses the real ones.
Result<std::unique_ptr<LocalProcessBackend>> make_backend(PlatformServices services, CancellationToken token,
                                                          std::shared_ptr<LogSink> sink, LocalProcessOptions options);

}  // namespace modkit::core
