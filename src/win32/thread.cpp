// Threads with a chosen stack size: _beginthreadex (the CRT's wrapper of
// CreateThread, so the C runtime's per-thread state is set up and freed).
#include "platform/thread.hpp"

#include <process.h>

#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

constexpr std::size_t kMinimumStack = 64 * 1024;

class Win32Thread final : public Thread {
 public:
  explicit Win32Thread(std::function<void()> body) : body_(std::move(body)) {}
  ~Win32Thread() override = default;

  void join() override {
    if (!handle_) return;
    WaitForSingleObject(handle_.get(), INFINITE);
    handle_.reset();
  }

  static unsigned __stdcall run(void* self) {
    static_cast<Win32Thread*>(self)->body_();
    return 0;
  }

  win32::UniqueHandle handle_;

 private:
  std::function<void()> body_;
};

}  // namespace

Result<std::unique_ptr<Thread>> start_thread(std::size_t stack_bytes, std::function<void()> body) {
  auto thread = std::make_unique<Win32Thread>(std::move(body));
  if (stack_bytes < kMinimumStack) stack_bytes = kMinimumStack;
  if (stack_bytes > 0xFFFFFFFFu) stack_bytes = 0xFFFFFFFFu;
  // The size is the reservation, not the commit: an idle reader costs one page or two.
  uintptr_t handle = _beginthreadex(nullptr, static_cast<unsigned>(stack_bytes), &Win32Thread::run, thread.get(),
                                    STACK_SIZE_PARAM_IS_A_RESERVATION, nullptr);
  if (handle == 0) {
    DWORD error = GetLastError();
    return Error{win32::win32_error(error), "cannot start a reader thread: " + win32::system_message(error)};
  }
  thread->handle_.reset(reinterpret_cast<HANDLE>(handle));
  return std::unique_ptr<Thread>(std::move(thread));
}

}  // namespace modkit::platform
