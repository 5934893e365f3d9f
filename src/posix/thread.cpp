#include "platform/thread.hpp"

#include <limits.h>
#include <pthread.h>
#include <signal.h>

#include <string>

#include "core/text.hpp"
#include "posix/thread_signals.hpp"

namespace modkit::posix {
thread_local bool tls_all_signals_blocked = false;
}  // namespace modkit::posix

namespace modkit::platform {
namespace {

class PosixThread final : public Thread {
 public:
  explicit PosixThread(pthread_t thread) : thread_(thread) {}
  ~PosixThread() override = default;
  void join() override {
    if (joinable_) pthread_join(thread_, nullptr);
    joinable_ = false;
  }
  void detach() override {
    if (joinable_) pthread_detach(thread_);
    joinable_ = false;
  }
  bool is_current() const override { return pthread_equal(thread_, pthread_self()) != 0; }

 private:
  pthread_t thread_;
  bool joinable_ = true;
};

void* run(void* argument) {
  std::unique_ptr<std::function<void()>> body(static_cast<std::function<void()>*>(argument));
  posix::tls_all_signals_blocked = true;
  (*body)();
  return nullptr;
}

}  // namespace

Result<std::unique_ptr<Thread>> start_thread(std::size_t stack_bytes, std::function<void()> body,
                                             std::string_view what) {
  auto owned = std::make_unique<std::function<void()>>(std::move(body));
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  if (stack_bytes < static_cast<std::size_t>(PTHREAD_STACK_MIN)) stack_bytes = PTHREAD_STACK_MIN;
  pthread_attr_setstacksize(&attributes, stack_bytes);
  // A new thread inherits the creator's mask: block everything around the
  // create, so the thread starts blocked whatever the host does later.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_t thread;
  int error = pthread_create(&thread, &attributes, &run, owned.get());
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  pthread_attr_destroy(&attributes);
  if (error != 0) {
    std::error_code code = std::make_error_code(std::errc::resource_unavailable_try_again);
    return Error{code, core::concat({"cannot start ", what, " thread: ",
                                     std::error_code(error, std::generic_category()).message()})};
  }
  owned.release();  // the thread frees it
  return std::unique_ptr<Thread>(std::make_unique<PosixThread>(thread));
}

}  // namespace modkit::platform
