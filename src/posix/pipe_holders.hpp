// Finding and killing the processes that hold a pipe open (Linux, /proc).
#pragma once

#include <sys/types.h>

#include <vector>

namespace modkit::posix {

/// SIGKILLs every process other than this one that has a descriptor on one
/// of the pipes `inodes` names, and returns how many were signalled. A
/// process is pinned with a pidfd before its descriptors are read, so a pid
/// recycled meanwhile is never hit. Processes of other users are skipped
/// (their /proc entries are unreadable).
int kill_pipe_holders(const std::vector<ino_t>& inodes);

}  // namespace modkit::posix
