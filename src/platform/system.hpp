// Platform layer: small system services used by the portable core.
#pragma once

#include <cstddef>
#include <string>
#include <system_error>

#include "modkit/modkit.hpp"

namespace modkit::platform {

/// Fills `buffer` with cryptographically random bytes.
void fill_random(unsigned char* buffer, std::size_t size);

/// Writes all of `size` bytes to a file descriptor (C runtime descriptor on
/// Windows), retrying on short writes and EINTR. Errors are ignored: this
/// serves log sinks, which have nowhere to report them.
void write_all(int fd, const char* data, std::size_t size);

/// The platform's last error (errno / GetLastError) as a std::error_code.
std::error_code last_error();

/// Human text for an error code of this platform.
std::string error_text(std::error_code code);

}  // namespace modkit::platform
