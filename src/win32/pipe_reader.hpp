// The Win32 PipeReader: the overlapped server end of a named pipe (the child
// writes to a synchronous client end), plus a manual-reset event, shared by
// the stdout and stderr readers of one child, that interrupts both.
#pragma once

#include <memory>
#include <string>

#include "platform/pipe.hpp"
#include "win32/windows_util.hpp"

namespace modkit::win32 {

class Win32PipeReader final : public platform::PipeReader {
 public:
  /// `pipe` must have been opened with FILE_FLAG_OVERLAPPED; `interrupt` is a
  /// manual-reset event shared with the sibling reader.
  Win32PipeReader(UniqueHandle pipe, UniqueHandle io_event, std::shared_ptr<UniqueHandle> interrupt)
      : pipe_(std::move(pipe)), io_event_(std::move(io_event)), interrupt_(std::move(interrupt)) {}
  std::ptrdiff_t read(char* buffer, std::size_t size) override;
  void interrupt() override;

 private:
  UniqueHandle pipe_;
  UniqueHandle io_event_;
  std::shared_ptr<UniqueHandle> interrupt_;
};

/// An anonymous-looking pipe whose read end can be read with overlapped I/O
/// (CreatePipe's cannot): a uniquely named, single-instance, local-only
/// named pipe. The read end is not inheritable; the write end is, when
/// `inheritable_write` is true.
struct OverlappedPipe {
  UniqueHandle read_end;   // overlapped, ours
  UniqueHandle write_end;  // synchronous, the child's
};
/// Returns 0 or a GetLastError() value.
DWORD make_overlapped_pipe(OverlappedPipe& pipe, bool inheritable_write);

/// Non-inheritable attributes whose DACL admits only this process's user (the
/// output pipes', and the stop events'); nullptr (the default DACL) if the
/// token cannot be read.
SECURITY_ATTRIBUTES* owner_only_security();

}  // namespace modkit::win32
