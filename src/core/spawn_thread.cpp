#include "core/spawn_thread.hpp"

namespace modkit::core {

SpawnThread::~SpawnThread() {
  std::unique_ptr<platform::Thread> thread;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ending_ = true;
    thread = std::move(thread_);
  }
  changed_.notify_all();
  if (thread) thread->join();
}

SpawnThread::SpawnResult SpawnThread::run(const platform::SpawnRequest& request) {
  Job job{&request, std::nullopt};
  std::unique_lock<std::mutex> lock(mutex_);
  if (!thread_) {
    // The spawn's own buffers are on the heap; the child has a stack of its own.
    auto started = services_.start_thread(256 * 1024, [this] { loop(); }, "spawn");
    if (!started) return std::move(started).error();
    thread_ = std::move(*started);
  }
  queue_.push_back(&job);
  changed_.notify_all();
  changed_.wait(lock, [&] { return job.result.has_value(); });
  return std::move(*job.result);
}

void SpawnThread::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return ending_ || !queue_.empty(); });
    if (queue_.empty()) return;  // ending, and nothing left to do
    Job* job = queue_.front();
    queue_.pop_front();
    lock.unlock();
    SpawnResult result = services_.spawn(*job->request);
    lock.lock();
    job->result.emplace(std::move(result));
    changed_.notify_all();
  }
}

}  // namespace modkit::core
