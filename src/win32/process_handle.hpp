// Internal: the exit codes of the Win32 process layer. (The exit monitor
// waits on Process::exit_handle(), the process HANDLE.)
#pragma once

#include "win32/windows_util.hpp"

namespace modkit::win32 {

/// The exit code TerminateJobObject gives every process of a killed tree
/// (128 + 9, what a POSIX shell shows for SIGKILL). A child that modkit killed
/// and that ended with this code is reported as ExitStatus::Kind::Signaled 9.
constexpr UINT kKillExitCode = 137;

/// STATUS_CONTROL_C_EXIT: the exit code of a process ended by the default
/// handler of CTRL_C_EVENT or CTRL_BREAK_EVENT. Reported as Signaled with
/// kBreakSignal, the C runtime's SIGBREAK, the way POSIX reports SIGTERM.
constexpr DWORD kControlExitCode = 0xC000013A;
constexpr int kBreakSignal = 21;

}  // namespace modkit::win32
