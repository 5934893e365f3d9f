#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"

namespace modkit {

struct CancellationToken::Registration::State {
  mutable std::mutex mutex;
  mutable std::condition_variable changed;
  bool cancelled = false;
  std::uint64_t next_id = 1;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> callbacks;
  // The callback cancel() is running now, so unregistering can wait for it.
  std::uint64_t running_id = 0;
  std::thread::id running_thread;
};

CancellationToken::CancellationToken() : state_(std::make_shared<Registration::State>()) {}

void CancellationToken::cancel() {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->cancelled) return;
  state_->cancelled = true;
  state_->changed.notify_all();
  // Run callbacks one at a time, each without the lock, so a callback may use
  // the token (or unregister others) freely.
  while (!state_->callbacks.empty()) {
    auto entry = std::move(state_->callbacks.front());
    state_->callbacks.erase(state_->callbacks.begin());
    state_->running_id = entry.first;
    state_->running_thread = std::this_thread::get_id();
    lock.unlock();
    entry.second();
    lock.lock();
    state_->running_id = 0;
    state_->changed.notify_all();
  }
}

bool CancellationToken::is_cancelled() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->cancelled;
}

bool CancellationToken::wait_for(std::chrono::steady_clock::duration timeout) const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  return state_->changed.wait_for(lock, timeout, [&] { return state_->cancelled; });
}

void CancellationToken::wait() const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->changed.wait(lock, [&] { return state_->cancelled; });
}

CancellationToken::Registration CancellationToken::on_cancel(std::function<void()> callback) const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->cancelled) {
    lock.unlock();
    callback();
    return Registration();
  }
  std::uint64_t id = state_->next_id++;
  state_->callbacks.emplace_back(id, std::move(callback));
  return Registration(state_, id);
}

CancellationToken::Registration::Registration(std::shared_ptr<State> state, std::uint64_t id)
    : state_(std::move(state)), id_(id) {}

CancellationToken::Registration::Registration(Registration&& other) noexcept
    : state_(std::move(other.state_)), id_(other.id_) {
  other.id_ = 0;
}

CancellationToken::Registration& CancellationToken::Registration::operator=(Registration&& other) noexcept {
  if (this != &other) {
    reset();
    state_ = std::move(other.state_);
    id_ = other.id_;
    other.id_ = 0;
  }
  return *this;
}

CancellationToken::Registration::~Registration() { reset(); }

void CancellationToken::Registration::reset() {
  if (!state_) return;
  std::unique_lock<std::mutex> lock(state_->mutex);
  auto& callbacks = state_->callbacks;
  for (auto it = callbacks.begin(); it != callbacks.end(); ++it) {
    if (it->first == id_) {
      callbacks.erase(it);
      break;
    }
  }
  // If cancel() is running this very callback on another thread, wait for it;
  // on the same thread (a callback resetting itself) waiting would deadlock.
  state_->changed.wait(lock, [&] {
    return state_->running_id != id_ || state_->running_thread == std::this_thread::get_id();
  });
  lock.unlock();
  state_.reset();
  id_ = 0;
}

}  // namespace modkit

namespace modkit {
// Interim: replaced by the relay-thread implementation.
Result<void> CancellationToken::enable_signal_cancel() { return {}; }
void CancellationToken::cancel_from_signal() noexcept {}
}  // namespace modkit
