#include "core/thread_pool.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace modkit::core {

struct ThreadPool::Worker {
  std::unique_ptr<platform::Thread> thread;
  std::function<void()> job;  // handed over, not yet taken
  std::condition_variable wake;
  bool busy = true;
  bool claimed = false;  // shutdown() joins it
};

struct ThreadPool::State {
  StartThread start_thread;
  ThreadPoolOptions options;
  std::string what;

  std::mutex mutex;
  std::condition_variable job_done;           // shutdown waits for busy workers
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<Worker*> idle;                  // most recently idle last: its stack is warm
  std::size_t busy = 0;
  std::size_t started = 0;
  bool closing = false;    // no more jobs; workers end after the current one
  bool letting_go = false;  // nobody joins any more: an ending worker detaches itself

  // Under `mutex`: an ending worker that nobody will join lets go of its thread.
  std::unique_ptr<Worker> release_locked(Worker* worker) {
    auto it = std::find_if(workers.begin(), workers.end(), [&](const auto& owned) { return owned.get() == worker; });
    std::unique_ptr<Worker> owned = std::move(*it);
    workers.erase(it);
    owned->thread->detach();
    return owned;
  }
};

namespace {
// The worker this thread is (a shutdown called from inside a job must not wait for it).
thread_local const void* tls_worker = nullptr;
}  // namespace

ThreadPool::ThreadPool(StartThread start_thread, ThreadPoolOptions options, std::string_view what)
    : state_(std::make_shared<State>()) {
  state_->start_thread = std::move(start_thread);
  state_->options = options;
  state_->what = std::string(what);
}

ThreadPool::~ThreadPool() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->closing = true;
  state_->letting_go = true;
  for (Worker* worker : state_->idle) worker->wake.notify_one();
}

Result<void> ThreadPool::run(std::function<void()> job) {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->closing) return make_error(std::errc::operation_canceled, "the thread pool is shut down");
  if (!state_->idle.empty()) {
    Worker* worker = state_->idle.back();
    state_->idle.pop_back();
    worker->job = std::move(job);
    worker->busy = true;
    ++state_->busy;
    // Woken under the lock: once it is released the worker may already have
    // run the job (a timed-out wait sees it busy), ended, and been freed, cv
    // and all (TSan found a notify after the unlock doing just that).
    worker->wake.notify_one();
    return {};
  }
  // Started under the lock: the worker cannot end (and look for its thread
  // object) before the object is stored.
  auto worker = std::make_unique<Worker>();
  worker->job = std::move(job);
  Worker* raw = worker.get();
  std::shared_ptr<State> state = state_;
  auto thread =
      state_->start_thread(state_->options.stack_bytes, [state, raw] { work(state, raw); }, state_->what);
  if (!thread) return std::move(thread).error();
  worker->thread = std::move(*thread);
  state_->workers.push_back(std::move(worker));
  ++state_->busy;
  ++state_->started;
  return {};
}

void ThreadPool::work(const std::shared_ptr<State>& state, Worker* self) {
  tls_worker = self;
  std::unique_lock<std::mutex> lock(state->mutex);
  for (;;) {
    std::function<void()> job = std::move(self->job);
    self->job = nullptr;
    lock.unlock();
    if (job) job();
    // Dropped outside the lock: what the job held may be the pool's owner,
    // whose destructor takes this lock.
    job = nullptr;
    lock.lock();
    self->busy = false;
    --state->busy;
    state->job_done.notify_all();
    if (state->closing || state->idle.size() >= state->options.max_idle) break;
    state->idle.push_back(self);
    const bool handed = self->wake.wait_for(lock, state->options.idle_timeout,
                                            [&] { return self->busy || state->closing; });
    if (handed && self->busy) continue;  // run() took it off the idle list
    auto it = std::find(state->idle.begin(), state->idle.end(), self);
    if (it != state->idle.end()) state->idle.erase(it);
    break;
  }
  tls_worker = nullptr;
  // Joined by a shutdown that claimed it, or that will (it is under way and
  // this worker is no longer busy); otherwise nobody will join it.
  if (self->claimed || (state->closing && !state->letting_go)) return;
  std::unique_ptr<Worker> owned = state->release_locked(self);
  lock.unlock();
}

void ThreadPool::shutdown(std::chrono::steady_clock::time_point deadline) {
  std::vector<std::unique_ptr<Worker>> ended;
  {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->closing = true;
    for (Worker* worker : state_->idle) worker->wake.notify_one();
    state_->idle.clear();
    // Jobs still running get until `deadline` to return (the backend has
    // already waited for its readers; this is their last few instructions).
    const auto is_self = [](const std::unique_ptr<Worker>& worker) { return worker.get() == tls_worker; };
    const std::size_t own = std::any_of(state_->workers.begin(), state_->workers.end(), is_self) ? 1 : 0;
    state_->job_done.wait_until(lock, deadline, [&] { return state_->busy <= own; });
    // Those done are joined below; a busy one (and this very thread, when
    // called from inside a job) lets go of itself when it ends.
    state_->letting_go = true;
    for (auto it = state_->workers.begin(); it != state_->workers.end();) {
      if ((*it)->busy || is_self(*it)) {
        ++it;
      } else {
        (*it)->claimed = true;
        ended.push_back(std::move(*it));
        it = state_->workers.erase(it);
      }
    }
  }
  for (auto& worker : ended) worker->thread->join();
}

std::size_t ThreadPool::started() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->started;
}

std::size_t ThreadPool::idle() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->idle.size();
}

}  // namespace modkit::core
