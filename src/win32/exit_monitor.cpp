// Exit observation on Windows without polling and without a thread per
// child: RegisterWaitForSingleObject puts each child's process handle in the
// system thread pool's wait threads (one per 63 handles), whose callback runs
// once when the process ends.
#include <list>
#include <memory>
#include <mutex>

#include "platform/exit_monitor.hpp"
#include "win32/process_handle.hpp"
#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

using win32::UniqueHandle;

class ThreadPoolExitMonitor final : public ExitMonitor {
 public:
  ~ThreadPoolExitMonitor() override { shutdown(); }

  Result<void> watch(Process& process, std::function<void()> on_exit) override {
    // Our own handle to wait on, so the wait never outlives the handle it uses.
    HANDLE duplicate = nullptr;
    if (!DuplicateHandle(GetCurrentProcess(), win32::native_process_handle(process), GetCurrentProcess(), &duplicate,
                         SYNCHRONIZE, FALSE, 0)) {
      DWORD error = GetLastError();
      return Error{win32::win32_error(error), "cannot watch the child: " + win32::system_message(error)};
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) {
      CloseHandle(duplicate);
      return make_error(std::errc::operation_canceled, "cannot watch the child: the exit monitor is shut down");
    }
    release_completed();
    auto entry = std::make_unique<Entry>();
    entry->monitor = this;
    entry->process.reset(duplicate);
    entry->on_exit = std::move(on_exit);
    Entry* raw = entry.get();
    entries_.push_back(std::move(entry));
    raw->self = std::prev(entries_.end());
    // The callback takes the monitor's lock, which we hold: it cannot run
    // before raw->wait is stored.
    if (!RegisterWaitForSingleObject(&raw->wait, raw->process.get(), &ThreadPoolExitMonitor::on_signalled, raw,
                                     INFINITE, WT_EXECUTEONLYONCE | WT_EXECUTEDEFAULT)) {
      DWORD error = GetLastError();
      entries_.erase(raw->self);
      return Error{win32::win32_error(error), "cannot watch the child: " + win32::system_message(error)};
    }
    return {};
  }

  // Unregisters every wait, waiting for callbacks in progress to return.
  void shutdown() override {
    std::list<std::unique_ptr<Entry>> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      all.swap(entries_);
    }
    for (auto& entry : all) {
      if (entry->wait != nullptr) UnregisterWaitEx(entry->wait, INVALID_HANDLE_VALUE);
    }
  }

 private:
  struct Entry {
    ThreadPoolExitMonitor* monitor = nullptr;
    HANDLE wait = nullptr;
    UniqueHandle process;
    std::function<void()> on_exit;
    bool completed = false;  // the callback has returned (or is about to, touching nothing)
    std::list<std::unique_ptr<Entry>>::iterator self;
  };

  static void CALLBACK on_signalled(void* context, BOOLEAN /*timed_out*/) {
    auto* entry = static_cast<Entry*>(context);
    ThreadPoolExitMonitor& monitor = *entry->monitor;
    std::function<void()> on_exit;
    {
      std::lock_guard<std::mutex> lock(monitor.mutex_);
      if (monitor.closed_) return;  // shutdown owns the entry and waits for us
      on_exit = std::move(entry->on_exit);
    }
    on_exit();
    // The last touch of the entry; watch() may free it from now on. shutdown()
    // cannot free it before this callback returns (UnregisterWaitEx waits).
    std::lock_guard<std::mutex> lock(monitor.mutex_);
    entry->completed = true;
  }

  // Frees the entries whose callback has run (caller holds mutex_). Waiting
  // for each callback to return cannot deadlock: a completed callback never
  // takes mutex_ again, and a callback that calls watch() is not completed.
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
