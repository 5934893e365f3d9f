// Exit observation on Windows without polling and without a thread per
// child: RegisterWaitForSingleObject puts each child's process handle in the
// system thread pool's wait threads (one per 63 handles), whose callback runs
// once when the process ends. Nothing is reaped: Windows has no zombies, and
// the Process keeps its handle (so its pid) until it is destroyed.
#include <iterator>
#include <list>
#include <string>
#include <memory>
#include <mutex>
#include <utility>

#include "platform/exit_monitor.hpp"
#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

using win32::UniqueHandle;

class ThreadPoolExitMonitor final : public ExitMonitor {
 public:
  ~ThreadPoolExitMonitor() override { shutdown(); }

  Result<void> watch(Process& process, std::function<void()> on_exit, std::function<void()> /*on_contents*/,
                     std::function<void(std::string_view, bool)> /*on_notify*/) override {
    // Our own handle to wait on, so the wait never outlives the handle it uses
    // (the Process may close its own as soon as the watch is over).
    // (-1 would be GetCurrentProcess(), the host itself: never waited on.)
    std::intptr_t handle = process.exit_handle();
    if (handle == -1 || handle == 0) {
      return make_error(std::errc::invalid_argument,
                        "cannot watch process " + std::to_string(process.pid()) + ": it has no process handle");
    }
    HANDLE duplicate = nullptr;
    if (!DuplicateHandle(GetCurrentProcess(), reinterpret_cast<HANDLE>(handle), GetCurrentProcess(),
                         &duplicate, SYNCHRONIZE, FALSE, 0)) {
      DWORD error = GetLastError();
      return Error{win32::win32_error(error), "cannot watch process " + std::to_string(process.pid()) + ": " +
                                                  win32::system_message(error)};
    }
    UniqueHandle owned(duplicate);
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) {
      return make_error(std::errc::operation_canceled, "cannot watch process " + std::to_string(process.pid()) +
                                                           ": the exit monitor is shut down");
    }
    release_completed();
    auto entry = std::make_unique<Entry>();
    entry->monitor = this;
    entry->key = &process;
    entry->process = std::move(owned);
    entry->on_exit = std::move(on_exit);
    Entry* raw = entry.get();
    entries_.push_back(std::move(entry));
    // The callback takes the monitor's lock, which we hold: it cannot run
    // before raw->wait is stored.
    if (!RegisterWaitForSingleObject(&raw->wait, raw->process.get(), &ThreadPoolExitMonitor::on_signalled, raw,
                                     INFINITE, WT_EXECUTEONLYONCE | WT_EXECUTEDEFAULT)) {
      DWORD error = GetLastError();
      entries_.pop_back();
      return Error{win32::win32_error(error), "cannot watch process " + std::to_string(process.pid()) + ": " +
                                                  win32::system_message(error)};
    }
    return {};
  }

  // Unregisters the wait and waits (UnregisterWaitEx with INVALID_HANDLE_VALUE)
  // for a callback already under way to return, so none runs after this. Not
  // from the process's own callback: that would wait for itself, so there the
  // entry is only cancelled and freed later, once that callback has returned.
  void unwatch(Process& process) override {
    std::list<std::unique_ptr<Entry>> removed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end();) {
        Entry& entry = **it;
        if (entry.key != &process) {
          ++it;
          continue;
        }
        entry.cancelled = true;
        entry.key = nullptr;  // a later Process at the same address is another one
        if (entry.callback_thread == GetCurrentThreadId() && !entry.completed) {
          ++it;  // called from its own callback: release_completed/shutdown free it
          continue;
        }
        auto next = std::next(it);
        removed.splice(removed.end(), entries_, it);
        it = next;
      }
    }
    // Outside the lock: a callback under way takes it before it returns.
    for (auto& entry : removed) UnregisterWaitEx(entry->wait, INVALID_HANDLE_VALUE);
  }

  // Unregisters every wait, waiting for callbacks in progress to return.
  void shutdown() override {
    std::list<std::unique_ptr<Entry>> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      all.swap(entries_);
    }
    for (auto& entry : all) UnregisterWaitEx(entry->wait, INVALID_HANDLE_VALUE);
  }

 private:
  struct Entry {
    ThreadPoolExitMonitor* monitor = nullptr;
    const Process* key = nullptr;  // what unwatch() looks for; never dereferenced
    HANDLE wait = nullptr;
    UniqueHandle process;
    std::function<void()> on_exit;
    DWORD callback_thread = 0;  // the thread running the callback, once it has started
    bool cancelled = false;     // unwatched: the callback must not run on_exit
    bool completed = false;     // the callback has returned (or is about to, touching nothing)
  };

  static void CALLBACK on_signalled(void* context, BOOLEAN /*timed_out*/) {
    auto* entry = static_cast<Entry*>(context);
    ThreadPoolExitMonitor& monitor = *entry->monitor;
    std::function<void()> on_exit;
    {
      std::lock_guard<std::mutex> lock(monitor.mutex_);
      // shutdown()/unwatch() own the entry then, and wait for us to return.
      if (monitor.closed_ || entry->cancelled) return;
      entry->callback_thread = GetCurrentThreadId();
      on_exit = std::move(entry->on_exit);
    }
    if (on_exit) on_exit();
    // The last touch of the entry; watch() may free it from now on. shutdown()
    // and unwatch() cannot free it before this callback returns (UnregisterWaitEx waits).
    std::lock_guard<std::mutex> lock(monitor.mutex_);
    entry->completed = true;
  }

  // Frees the entries whose callback has run (caller holds mutex_). Waiting
  // for each callback to return cannot deadlock: a completed callback never
  // takes mutex_ again.
  void release_completed() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      if ((*it)->completed) {
        UnregisterWaitEx((*it)->wait, INVALID_HANDLE_VALUE);
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::mutex mutex_;
  std::list<std::unique_ptr<Entry>> entries_;
  bool closed_ = false;
};

}  // namespace

Result<std::unique_ptr<ExitMonitor>> make_exit_monitor(bool /*prefer_pidfd*/) {
  return std::unique_ptr<ExitMonitor>(std::make_unique<ThreadPoolExitMonitor>());
}

}  // namespace modkit::platform
