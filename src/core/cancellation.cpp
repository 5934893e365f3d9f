// CancellationToken: a mutex and a condition variable for cancel(), waiters and
// callbacks, plus a lock-free path for signal handlers: cancel_from_signal()
// only stores an atomic flag and raises a platform::SignalWakeup, and a relay
// thread (started by enable_signal_cancel()) turns that into cancel().
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"
#include "platform/signal_wakeup.hpp"
#include "platform/thread.hpp"

namespace modkit {
namespace {

// The relay runs the host's callbacks, so it gets a roomy stack (a
// reservation: an idle relay costs a page or two).
constexpr std::size_t kRelayStackBytes = 1024 * 1024;

// A callback that throws (in a host built with exceptions) must not stop the
// others or unwind through modkit's threads: the exception is dropped. A
// library built with -fno-exceptions cannot catch it.
void run_callback(const std::function<void()>& callback) {
#if defined(__cpp_exceptions)
  try {
    callback();
  } catch (...) {
  }
#else
  callback();
#endif
}

}  // namespace

struct CancellationToken::Registration::State {
  ~State();
  void cancel();
  Result<void> enable_relay(const std::shared_ptr<State>& self);
  static void relay(const std::weak_ptr<State>& weak, platform::SignalWakeup& wakeup);

  mutable std::mutex mutex;
  mutable std::condition_variable changed;
  // What is_cancelled() reports. Set by cancel() (under the mutex) and by
  // cancel_from_signal() (without it: a handler may have interrupted a thread
  // that holds the mutex).
  std::atomic<bool> requested{false};
  // cancel() has begun: exactly one cancel() takes the callbacks.
  bool cancelled = false;
  std::uint64_t next_id = 1;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> callbacks;
  // The callback cancel() is running now, so unregistering can wait for it.
  std::uint64_t running_id = 0;
  std::thread::id running_thread;

  // The relay, set up once by enable_signal_cancel() under the mutex. The
  // handler reads only `wakeup`; the wake-up object itself is shared with the
  // relay thread, which may outlive this state when it had to be detached.
  std::atomic<platform::SignalWakeup*> wakeup{nullptr};
  std::shared_ptr<platform::SignalWakeup> wakeup_owner;
  std::unique_ptr<platform::Thread> relay_thread;
};

// What a signal handler touches must be lock-free.
static_assert(std::atomic<bool>::is_always_lock_free);
static_assert(std::atomic<platform::SignalWakeup*>::is_always_lock_free);

CancellationToken::Registration::State::~State() {
  if (!relay_thread) return;
  // The relay waits on the wake-up, finds the state gone and returns. If the
  // last reference was the relay's own (it holds the state while it looks at
  // it or runs cancel(), and the last token may go away meanwhile, in a
  // callback say), this runs on the relay, which cannot join itself: it is
  // let go, and touches nothing of this state again.
  wakeup_owner->notify();
  if (relay_thread->is_current()) {
    relay_thread->detach();
  } else {
    relay_thread->join();
  }
}

void CancellationToken::Registration::State::cancel() {
  std::unique_lock<std::mutex> lock(mutex);
  if (cancelled) return;
  cancelled = true;
  requested.store(true, std::memory_order_seq_cst);
  changed.notify_all();
  // Run callbacks one at a time, each without the lock, so a callback may use
  // the token (or unregister others) freely. Each is destroyed before the
  // lock is taken again: what it captured (a Registration, a token) may use
  // the token in its destructor.
  while (!callbacks.empty()) {
    auto entry = std::move(callbacks.front());
    callbacks.erase(callbacks.begin());
    running_id = entry.first;
    running_thread = std::this_thread::get_id();
    lock.unlock();
    run_callback(entry.second);
    entry.second = nullptr;
    lock.lock();
    running_id = 0;
    changed.notify_all();
  }
}

Result<void> CancellationToken::Registration::State::enable_relay(const std::shared_ptr<State>& self) {
  std::lock_guard<std::mutex> lock(mutex);
  if (relay_thread || cancelled) return {};  // already relayed, or nothing left to relay
  if (!wakeup_owner) {
    auto made = platform::make_signal_wakeup();
    if (!made) return made.error();
    wakeup_owner = std::shared_ptr<platform::SignalWakeup>(std::move(*made));
    // Published before the relay starts: a handler that still sees no
    // wake-up set the flag before this store, so the relay's first look at
    // the flag sees it.
    wakeup.store(wakeup_owner.get(), std::memory_order_seq_cst);
  }
  std::weak_ptr<State> weak = self;
  std::shared_ptr<platform::SignalWakeup> shared_wakeup = wakeup_owner;
  auto started = platform::start_thread(
      kRelayStackBytes, [weak, shared_wakeup] { relay(weak, *shared_wakeup); }, "cancellation relay");
  if (!started) return started.error();  // the wake-up stays: a later call may retry
  relay_thread = std::move(*started);
  return {};
}

// The relay thread. It holds the state only while it looks at it, so the
// state still dies with the last token; then its destructor wakes the relay,
// which finds nothing to lock and returns.
void CancellationToken::Registration::State::relay(const std::weak_ptr<State>& weak,
                                                  platform::SignalWakeup& wakeup) {
  for (;;) {
    {
      std::shared_ptr<State> state = weak.lock();
      if (!state) return;
      if (state->requested.load(std::memory_order_seq_cst)) {
        state->cancel();  // a no-op if cancel() was called directly
        return;           // may drop the last reference: ~State detaches us
      }
    }  // the same, if the last token went away while we looked
    wakeup.wait();
  }
}

CancellationToken::CancellationToken() : state_(std::make_shared<Registration::State>()) {}

void CancellationToken::cancel() { state_->cancel(); }

Result<void> CancellationToken::enable_signal_cancel() { return state_->enable_relay(state_); }

void CancellationToken::cancel_from_signal() noexcept {
  // No lock, no allocation: an atomic store and the wake-up's notify(), which
  // preserves errno. Calling it again (a second signal) only wakes again.
  Registration::State& state = *state_;
  state.requested.store(true, std::memory_order_seq_cst);
  if (platform::SignalWakeup* wakeup = state.wakeup.load(std::memory_order_seq_cst)) wakeup->notify();
}

bool CancellationToken::is_cancelled() const { return state_->requested.load(std::memory_order_seq_cst); }

bool CancellationToken::wait_for(std::chrono::steady_clock::duration timeout) const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  return state_->changed.wait_for(lock, timeout, [&] { return state_->requested.load(std::memory_order_seq_cst); });
}

void CancellationToken::wait() const {
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->changed.wait(lock, [&] { return state_->requested.load(std::memory_order_seq_cst); });
}

CancellationToken::Registration CancellationToken::on_cancel(std::function<void()> callback) const {
  if (!callback) return Registration();
  std::unique_lock<std::mutex> lock(state_->mutex);
  if (state_->requested.load(std::memory_order_seq_cst)) {
    lock.unlock();
    run_callback(callback);
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
  std::function<void()> removed;  // destroyed without the lock, like cancel() does
  std::unique_lock<std::mutex> lock(state_->mutex);
  auto& callbacks = state_->callbacks;
  for (auto it = callbacks.begin(); it != callbacks.end(); ++it) {
    if (it->first == id_) {
      removed = std::move(it->second);
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
  removed = nullptr;
  state_.reset();
  id_ = 0;
}

}  // namespace modkit
