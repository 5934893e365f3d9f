// The Win32 SignalWakeup: an auto-reset event. Console control handlers run on
// a thread of their own, and SetEvent may be called from any thread.
#include "platform/signal_wakeup.hpp"

#include <string>

#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

class EventWakeup final : public SignalWakeup {
 public:
  explicit EventWakeup(win32::UniqueHandle event) : event_(std::move(event)) {}

  void notify() noexcept override {
    DWORD saved = GetLastError();
    SetEvent(event_.get());
    SetLastError(saved);
  }

  void wait() override { WaitForSingleObject(event_.get(), INFINITE); }

 private:
  win32::UniqueHandle event_;
};

}  // namespace

Result<std::unique_ptr<SignalWakeup>> make_signal_wakeup() {
  win32::UniqueHandle event(CreateEventW(nullptr, FALSE, FALSE, nullptr));
  if (!event) {
    DWORD error = GetLastError();
    return Error{std::make_error_code(std::errc::resource_unavailable_try_again),
                 "cannot create the signal wake-up event: " + win32::system_message(error)};
  }
  return std::unique_ptr<SignalWakeup>(std::make_unique<EventWakeup>(std::move(event)));
}

}  // namespace modkit::platform
