#include "win32/pipe_reader.hpp"

#include <atomic>
#include <climits>
#include <cstdio>
#include <vector>

#include "platform/system.hpp"

namespace modkit::win32 {

// Each read is one overlapped ReadFile; while it is pending the reader sleeps
// in WaitForMultipleObjects on the I/O event and the interrupt event, the
// Windows twin of the POSIX reader's poll() on the pipe and the eventfd.
std::ptrdiff_t Win32PipeReader::read(char* buffer, std::size_t size) {
  HANDLE interrupt_event = interrupt_->get();
  DWORD wanted = size > 0x7FFFFFFF ? 0x7FFFFFFFu : static_cast<DWORD>(size);
  for (;;) {
    if (WaitForSingleObject(interrupt_event, 0) == WAIT_OBJECT_0) return 0;
    OVERLAPPED overlapped{};
    overlapped.hEvent = io_event_.get();
    DWORD count = 0;
    if (!ReadFile(pipe_.get(), buffer, wanted, nullptr, &overlapped)) {
      DWORD error = GetLastError();
      if (error == ERROR_BROKEN_PIPE || error == ERROR_PIPE_NOT_CONNECTED || error == ERROR_HANDLE_EOF) return 0;
      if (error != ERROR_IO_PENDING) return -1;
      HANDLE handles[2] = {io_event_.get(), interrupt_event};
      DWORD woken = WaitForMultipleObjects(2, handles, FALSE, INFINITE);
      if (woken != WAIT_OBJECT_0) {
        // Interrupted (or the wait failed): cancel and wait for the I/O to
        // finish, since `overlapped` and `buffer` must outlive it. Bytes that
        // arrived meanwhile are still delivered; the next call returns 0.
        CancelIoEx(pipe_.get(), &overlapped);
        if (!GetOverlappedResult(pipe_.get(), &overlapped, &count, TRUE)) return 0;
        return count > 0 ? static_cast<std::ptrdiff_t>(count) : 0;
      }
    }
    if (!GetOverlappedResult(pipe_.get(), &overlapped, &count, TRUE)) {
      DWORD error = GetLastError();
      if (error == ERROR_BROKEN_PIPE || error == ERROR_PIPE_NOT_CONNECTED || error == ERROR_HANDLE_EOF ||
          error == ERROR_OPERATION_ABORTED) {
        return 0;
      }
      return -1;
    }
    // A zero-byte WriteFile by the child completes a read with nothing in it:
    // that is not the end of the stream.
    if (count > 0) return static_cast<std::ptrdiff_t>(count);
  }
}

void Win32PipeReader::interrupt() { SetEvent(interrupt_->get()); }

namespace {

// A security descriptor whose DACL lets only this process's user open the
// pipe. Pipe names can be listed (\\.\pipe\), so with the default DACL
// another local user could connect in the instant between CreateNamedPipeW
// and our own CreateFileW and take the single instance: spawns would fail,
// or that user would hold the child's output. Built once; nullptr (the
// default DACL) only if the token cannot be read.
class OwnerOnlyPipeSecurity {
 public:
  static SECURITY_ATTRIBUTES* get() {
    static OwnerOnlyPipeSecurity security;
    return security.ready_ ? &security.attributes_ : nullptr;
  }

 private:
  OwnerOnlyPipeSecurity() {
    HANDLE token = nullptr;
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token)) return;
    DWORD size = 0;
    GetTokenInformation(token, TokenUser, nullptr, 0, &size);
    user_.resize(size);
    bool have_user = size > 0 && GetTokenInformation(token, TokenUser, user_.data(), size, &size);
    CloseHandle(token);
    if (!have_user) return;
    PSID sid = reinterpret_cast<TOKEN_USER*>(user_.data())->User.Sid;
    DWORD acl_size = sizeof(ACL) + sizeof(ACCESS_ALLOWED_ACE) + GetLengthSid(sid);
    acl_.resize(acl_size);
    auto* acl = reinterpret_cast<ACL*>(acl_.data());
    ready_ = InitializeAcl(acl, acl_size, ACL_REVISION) && AddAccessAllowedAce(acl, ACL_REVISION, GENERIC_ALL, sid) &&
             InitializeSecurityDescriptor(&descriptor_, SECURITY_DESCRIPTOR_REVISION) &&
             SetSecurityDescriptorDacl(&descriptor_, TRUE, acl, FALSE);
    attributes_.nLength = sizeof attributes_;
    attributes_.lpSecurityDescriptor = &descriptor_;
    attributes_.bInheritHandle = FALSE;
  }

  std::vector<unsigned char> user_;  // TOKEN_USER, which the SID points into
  std::vector<unsigned char> acl_;
  SECURITY_DESCRIPTOR descriptor_{};
  SECURITY_ATTRIBUTES attributes_{};
  bool ready_ = false;
};

}  // namespace

SECURITY_ATTRIBUTES* owner_only_security() { return OwnerOnlyPipeSecurity::get(); }

DWORD make_overlapped_pipe(OverlappedPipe& pipe, bool inheritable_write) {
  static std::atomic<unsigned long> counter{0};
  unsigned char random[8] = {};
  // Unique and unguessable, so no other process can squat the name first.
  platform::fill_random(random, sizeof random);
  wchar_t name[128];
  std::swprintf(name, 128, L"\\\\.\\pipe\\modkit-%lu-%lu-%02x%02x%02x%02x%02x%02x%02x%02x",
                static_cast<unsigned long>(GetCurrentProcessId()), counter.fetch_add(1) + 1, random[0], random[1],
                random[2], random[3], random[4], random[5], random[6], random[7]);
  constexpr DWORD kBuffer = 64 * 1024;
  pipe.read_end.reset(CreateNamedPipeW(name, PIPE_ACCESS_INBOUND | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
                                       PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS, 1,
                                       kBuffer, kBuffer, 0, OwnerOnlyPipeSecurity::get()));
  if (!pipe.read_end) {
    pipe.read_end.release();
    return GetLastError();
  }
  SECURITY_ATTRIBUTES attributes{};
  attributes.nLength = sizeof attributes;
  attributes.bInheritHandle = inheritable_write ? TRUE : FALSE;
  pipe.write_end.reset(
      CreateFileW(name, GENERIC_WRITE | FILE_READ_ATTRIBUTES, 0, &attributes, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr));
  if (!pipe.write_end) {
    DWORD error = GetLastError();
    pipe.write_end.release();
    pipe.read_end.reset();
    return error;
  }
  return 0;
}

}  // namespace modkit::win32
