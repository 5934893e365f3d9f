// Whether the calling thread is one modkit started (platform/thread.hpp), and
// so has every signal blocked for its whole life: the sinks' SIGPIPE guard
// then needs no system call to learn it.
#pragma once

namespace modkit::posix {

extern thread_local bool tls_all_signals_blocked;

}  // namespace modkit::posix
