// Footprint host (a), with modkit: runs one module (/bin/true) through
// LocalProcessBackend, its lines and records to a TextLogSink on stderr, and
// waits for its end. host_posix.cpp does the same by hand; bench/footprint.sh
// links both statically and reports the difference: what modkit adds.
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "modkit/modkit.hpp"

int main() {
  auto state = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
  bool ended = false;
  int code = -1;
  std::thread runner([&] {
    modkit::CancellationToken token;
    auto created = modkit::LocalProcessBackend::create(token, std::make_shared<modkit::TextLogSink>(stderr));
    if (!created) return;
    modkit::OopModuleConfig config("true", modkit::BackendKind::LocalProcess);
    config.binary = std::string("/bin/true");
    modkit::InstanceEvents events;
    std::function<void(const modkit::InstanceHandle&, const modkit::ExitStatus&)> on_exit =
        [&](const modkit::InstanceHandle&, const modkit::ExitStatus& status) {
          std::lock_guard<std::mutex> lock(state->first);
          ended = true;
          code = status.code;
          state->second.notify_all();
        };
    events.on_exit = on_exit;
    if (!(*created)->start_instance(config, events)) return;
    std::unique_lock<std::mutex> lock(state->first);
    state->second.wait(lock, [&] { return ended; });
  });
  runner.join();
  std::fprintf(stderr, "module ended with code %d\n", code);
  return ended && code == 0 ? 0 : 1;
}
