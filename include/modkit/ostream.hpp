// modkit/ostream.hpp: `os << x` for modkit's printable types. Opt-in.
//
// The library itself uses no iostreams (they cost a static host hundreds of
// KiB: the stream and locale machinery). modkit.hpp offers to_string() for
// every type below; this header adds operator<< on top of it for hosts that
// use streams anyway. The definitions live in their own object file of
// libmodkit.a (src/core/ostream.cpp), so a static link pulls it, and with it
// <ostream>, in only when the host calls one of these.
#pragma once

#include <ostream>

#include "modkit/modkit.hpp"

namespace modkit {

/// Writes to_string(error): "message (code text)".
std::ostream& operator<<(std::ostream& os, const Error& error);
/// Writes to_string(kind): "LocalProcess", ...
std::ostream& operator<<(std::ostream& os, BackendKind kind);
/// Writes to_string(handle): every field.
std::ostream& operator<<(std::ostream& os, const InstanceHandle& handle);
/// Writes to_string(status): "exited with code 3", "killed by signal 9", ...
std::ostream& operator<<(std::ostream& os, const ExitStatus& status);

}  // namespace modkit
