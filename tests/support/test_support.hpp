// Shared helpers for the behaviour tests.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "collecting_sink.hpp"
#include "modkit/modkit.hpp"

namespace modkit::testing {

/// Path of the helper program built with the tests (see test_child.cpp).
inline std::string test_child_path() { return MODKIT_TEST_CHILD_PATH; }

/// A config that runs the test child with `script`.
inline OopModuleConfig child_config(const std::string& module, std::vector<std::string> script) {
  OopModuleConfig config(module, BackendKind::LocalProcess);
  config.binary = test_child_path();
  config.args = std::move(script);
  return config;
}

/// A backend with a collecting sink, short grace periods, and its own token.
struct Fixture {
  explicit Fixture(LocalProcessOptions options = fast_options()) {
    backend = std::make_unique<LocalProcessBackend>(token, sink, std::move(options));
  }
  static LocalProcessOptions fast_options() {
    LocalProcessOptions options;
    options.stop_grace = std::chrono::milliseconds(500);
    options.shutdown_grace = std::chrono::milliseconds(500);
    options.drain_timeout = std::chrono::milliseconds(300);
    return options;
  }
  CancellationToken token;
  std::shared_ptr<CollectingSink> sink = std::make_shared<CollectingSink>();
  std::unique_ptr<LocalProcessBackend> backend;
};

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace modkit::testing
