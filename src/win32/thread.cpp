// Threads with a chosen stack size: _beginthreadex (the CRT's wrapper of
// CreateThread, so the C runtime's per-thread state is set up and freed).
#include "platform/thread.hpp"

#include <process.h>

#include <string>

#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

constexpr std::size_t kMinimumStack = 64 * 1024;

class Win32Thread final : public Thread {
 public:
  Win32Thread(HANDLE handle, DWORD id) : handle_(handle), id_(id) {}
  ~Win32Thread() override = default;

  void join() override {
    if (!handle_) return;
    WaitForSingleObject(handle_.get(), INFINITE);
    handle_.reset();
  }
  void detach() override { handle_.reset(); }
  bool is_current() const override { return GetCurrentThreadId() == id_; }

 private:
  win32::UniqueHandle handle_;
  DWORD id_;
};

unsigned __stdcall run(void* argument) {
  std::unique_ptr<std::function<void()>> body(static_cast<std::function<void()>*>(argument));
  (*body)();
  return 0;
}

}  // namespace

Result<std::unique_ptr<Thread>> start_thread(std::size_t stack_bytes, std::function<void()> body,
                                             std::string_view what) {
  auto owned = std::make_unique<std::function<void()>>(std::move(body));
  if (stack_bytes < kMinimumStack) stack_bytes = kMinimumStack;
  if (stack_bytes > 0xFFFFFFFFu) stack_bytes = 0xFFFFFFFFu;
  // The size is the reservation, not the commit: an idle reader costs one page or two.
  unsigned id = 0;
  uintptr_t handle = _beginthreadex(nullptr, static_cast<unsigned>(stack_bytes), &run, owned.get(),
                                    STACK_SIZE_PARAM_IS_A_RESERVATION, &id);
  if (handle == 0) {
    DWORD error = GetLastError();
    return Error{std::make_error_code(std::errc::resource_unavailable_try_again),
                 "cannot start " + std::string(what) + " thread: " + win32::system_message(error)};
  }
  owned.release();  // the thread frees it
  return std::unique_ptr<Thread>(std::make_unique<Win32Thread>(reinterpret_cast<HANDLE>(handle), id));
}

}  // namespace modkit::platform
