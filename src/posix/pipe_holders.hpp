// Finding and killing the processes that hold a child's output pipes open
// after it has exited (Linux, /proc).
#pragma once

#include <sys/types.h>

#include <vector>

namespace modkit::posix {

/// SIGKILLs every process that holds the *write* end of one of the pipes
/// `inodes` names, and returns how many were signalled. Never this process,
/// never a process whose parent is this process other than `leader` (a
/// worker the host forked inherits modkit's read ends, and may even have
/// caught a write end while a spawn was in progress: it is still the host's).
/// Each process is pinned with a pidfd before its descriptors are read and is
/// signalled through that pidfd, so a pid recycled meanwhile is never hit.
/// Processes of other users are skipped (their /proc entries are unreadable).
int kill_write_end_holders(const std::vector<ino_t>& inodes, pid_t leader);

}  // namespace modkit::posix
