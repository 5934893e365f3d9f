// Platform layer: small system services used by the portable core.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <system_error>

#include "modkit/modkit.hpp"

namespace modkit::platform {

/// Fills `buffer` with cryptographically random bytes.
void fill_random(unsigned char* buffer, std::size_t size);

/// Writes all of `size` bytes to a file descriptor (C runtime descriptor on
/// Windows), retrying on short writes and EINTR, and waiting (poll) while a
/// non-blocking descriptor is full, so nothing is dropped or cut short. POSIX:
/// a closed reader (EPIPE) drops the rest without raising SIGPIPE, and the
/// calling thread's signal mask and pending set are left as they were. Other
/// errors are ignored too: this serves log sinks, which have nowhere to
/// report them.
void write_all(int fd, const char* data, std::size_t size);

/// Flushes `file` (so what the host wrote to it earlier comes first), then
/// writes `data` to its descriptor with the semantics above, bypassing stdio's
/// buffer, which would hide EAGAIN and EPIPE. Holds the FILE's lock meanwhile.
/// A FILE without a descriptor (fmemopen, a cookie stream) gets fwrite+fflush.
void write_all(std::FILE* file, const char* data, std::size_t size);

/// The platform's last error (errno / GetLastError) as a std::error_code.
std::error_code last_error();

/// Human text for an error code of this platform.
std::string error_text(std::error_code code);

}  // namespace modkit::platform
