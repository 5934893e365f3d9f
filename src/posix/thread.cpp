#include "platform/thread.hpp"

#include <limits.h>
#include <pthread.h>

namespace modkit::platform {
namespace {

class PosixThread final : public Thread {
 public:
  explicit PosixThread(std::function<void()> body) : body_(std::move(body)) {}
  ~PosixThread() override = default;
  void join() override {
    if (started_) pthread_join(thread_, nullptr);
    started_ = false;
  }

  static void* run(void* self) {
    static_cast<PosixThread*>(self)->body_();
    return nullptr;
  }

  pthread_t thread_{};
  bool started_ = false;

 private:
  std::function<void()> body_;
};

}  // namespace

Result<std::unique_ptr<Thread>> start_thread(std::size_t stack_bytes, std::function<void()> body) {
  auto thread = std::make_unique<PosixThread>(std::move(body));
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  if (stack_bytes < static_cast<std::size_t>(PTHREAD_STACK_MIN)) stack_bytes = PTHREAD_STACK_MIN;
  pthread_attr_setstacksize(&attributes, stack_bytes);
  int error = pthread_create(&thread->thread_, &attributes, &PosixThread::run, thread.get());
  pthread_attr_destroy(&attributes);
  if (error != 0) {
    return Error{std::error_code(error, std::generic_category()), "cannot start a reader thread"};
  }
  thread->started_ = true;
  return std::unique_ptr<Thread>(std::move(thread));
}

}  // namespace modkit::platform
