// The README's API example: start a module, let it log, stop it.
#include <modkit/modkit.hpp>
#include <modkit/ostream.hpp>  // opt-in: os << error, handle, status

#include <iostream>

int main() {
  modkit::CancellationToken token;
  auto sink = std::make_shared<modkit::TextLogSink>(stderr);
  modkit::LocalProcessBackend backend(token, sink);

  modkit::OopModuleConfig config("greeter", modkit::BackendKind::LocalProcess);
  config.binary = "sh";  // looked up on PATH
  config.args = {"-c", "echo 'hello from greeter'; exec sleep 30"};
  config.env["GREETING"] = "hello";

  auto handle = backend.spawn_instance(config);
  if (!handle) {
    std::cerr << "spawn failed: " << handle.error() << "\n";
    return 1;
  }
  std::cout << *handle << "\n";

  auto stopped = backend.stop_instance(*handle);  // SIGTERM, grace, SIGKILL
  if (stopped && *stopped) std::cout << "greeter " << **stopped << "\n";
  return 0;
}
