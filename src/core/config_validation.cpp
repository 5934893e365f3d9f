#include "core/config_validation.hpp"

#include <sstream>

namespace modkit {
namespace {

bool has_nul(std::string_view text) { return text.find('\0') != std::string_view::npos; }

Error invalid(const OopModuleConfig& config, const std::string& what) {
  return make_error(std::errc::invalid_argument, "module '" + config.name + "': " + what);
}

}  // namespace

Result<platform::SpawnRequest> validate_config(const OopModuleConfig& config) {
  if (config.backend != BackendKind::LocalProcess) {
    std::ostringstream message;
    message << "LocalProcessBackend can only spawn LocalProcess instances, got " << config.backend;
    return make_error(std::errc::invalid_argument, message.str());
  }
  if (config.name.empty()) return make_error(std::errc::invalid_argument, "module name must not be empty");
  if (has_nul(config.name)) return make_error(std::errc::invalid_argument, "module name contains a NUL byte");
  if (!config.binary || config.binary->empty()) {
    return invalid(config, "executable_path must be set for LocalProcess backend");
  }
  if (has_nul(*config.binary)) return invalid(config, "binary path contains a NUL byte");
  for (std::size_t i = 0; i < config.args.size(); ++i) {
    if (has_nul(config.args[i])) return invalid(config, "argument " + std::to_string(i + 1) + " contains a NUL byte");
  }
  platform::SpawnRequest request;
  for (const auto& [key, value] : config.env) {
    if (key.empty()) return invalid(config, "environment variable with an empty name");
    if (key.find('=') != std::string::npos) {
      return invalid(config, "environment variable name '" + key + "' contains '='");
    }
    if (has_nul(key)) return invalid(config, "environment variable name contains a NUL byte");
    if (has_nul(value)) return invalid(config, "value of environment variable '" + key + "' contains a NUL byte");
    request.env.emplace_back(key, value);
  }
  if (config.working_directory) {
    if (config.working_directory->empty()) return invalid(config, "working directory is an empty path");
    if (has_nul(*config.working_directory)) return invalid(config, "working directory contains a NUL byte");
  }
  const Readiness& readiness = config.readiness;
  // A day bounds every wait and keeps the deadline arithmetic far from overflow.
  constexpr std::chrono::milliseconds kLongestWait = std::chrono::hours(24);
  if (readiness.mode != Readiness::Mode::Immediate &&
      (readiness.timeout <= std::chrono::milliseconds::zero() || readiness.timeout > kLongestWait)) {
    return invalid(config, "readiness timeout must be positive and at most a day (there is no unbounded wait)");
  }
  if (readiness.mode == Readiness::Mode::StdoutLine && readiness.line_prefix.empty()) {
    return invalid(config, "readiness line_prefix must not be empty with Readiness::Mode::StdoutLine");
  }
  if (readiness.watchdog < std::chrono::milliseconds::zero() || readiness.watchdog > kLongestWait) {
    return invalid(config, "readiness watchdog must be zero (none) or positive and at most a day");
  }
  if (readiness.watchdog > std::chrono::milliseconds::zero() && readiness.mode != Readiness::Mode::Notify) {
    return invalid(config, "a readiness watchdog needs Readiness::Mode::Notify (pings come on the descriptor)");
  }
  if (readiness.mode == Readiness::Mode::Notify) {
    request.notify = true;
    if (readiness.watchdog > std::chrono::milliseconds::zero()) {
      request.env.emplace_back("MODKIT_WATCHDOG_MS", std::to_string(readiness.watchdog.count()));
    }
  }
  request.module = config.name;
  request.binary = *config.binary;
  request.args = config.args;
  request.clear_environment = config.clear_environment;
  request.working_directory = config.working_directory;
  request.graceful_stop = config.graceful_stop;
  request.allow_batch_files = config.allow_batch_files;
  request.show_window = config.show_window;
  return request;
}

}  // namespace modkit
