// Checks an OopModuleConfig before anything is started.
#pragma once

#include "modkit/modkit.hpp"
#include "platform/process.hpp"

namespace modkit {

/// Turns a config into a spawn request, or explains in words what is wrong
/// with it (std::errc::invalid_argument). File-system checks (does the binary
/// or working directory exist) are left to platform::spawn.
Result<platform::SpawnRequest> validate_config(const OopModuleConfig& config);

}  // namespace modkit
