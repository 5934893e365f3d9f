// The opt-in operator<< of modkit/ostream.hpp. Alone in its object file: the
// only library code that references iostreams (checked by the no_iostreams test).
#include "modkit/ostream.hpp"

namespace modkit {

std::ostream& operator<<(std::ostream& os, const Error& error) { return os << to_string(error); }
std::ostream& operator<<(std::ostream& os, BackendKind kind) { return os << to_string(kind); }
std::ostream& operator<<(std::ostream& os, const InstanceHandle& handle) { return os << to_string(handle); }
std::ostream& operator<<(std::ostream& os, const ExitStatus& status) { return os << to_string(status); }

}  // namespace modkit
