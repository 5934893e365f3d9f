// Exit observation on Windows without polling and without a thread per
// child: RegisterWaitForSingleObject puts each child's process handle in the
// system thread pool's wait threads (one per 63 handles), whose callback runs
// once when the process ends. Nothing is reaped: Windows has no zombies, and
// the Process keeps its handle (so its pid) until it is destroyed.
//
// Readiness notifications (Process::notify_handle) take the same road: one
// overlapped ReadFile at a time on the pipe, whose OVERLAPPED event is a second
// registered wait; its callback takes the result, hands it to on_notify and
// issues the next read. So a module with a notification pipe costs no thread
// either.
//
// Per watched process the callbacks never overlap (at most one thread runs
// host code of an entry: Entry::delivering), and, as on POSIX, what the child
// wrote to its pipe before it exited reaches on_notify before on_exit runs.
//
// An entry whose callbacks are over (its exit reported and its pipe at end of
// file) or that was unwatched from its own callback is freed right after that
// callback returns, not at the next watch: its waits and handles would
// otherwise outlive the child for as long as no other module is spawned
// (issue 13, point 8). See retire().
#include <condition_variable>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <utility>

#include "platform/exit_monitor.hpp"
#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

using win32::UniqueHandle;

// Notification lines are short ("READY=1", "WATCHDOG=1", "STATUS=..."); a
// longer write simply arrives in several pieces.
constexpr DWORD kNotifyBufferBytes = 4096;
constexpr int kReadsPerTurn = 16;
// The notification pipe's buffer (win32/pipe_reader.cpp) in reads, plus the read under way.
constexpr int kDrainReadsAfterExit = static_cast<int>(64 * 1024 / kNotifyBufferBytes) + 1;

Error watch_error(const Process& process, DWORD error, const std::string& what = {}) {
  return Error{win32::win32_error(error), "cannot watch process " + std::to_string(process.pid()) + ": " + what +
                                              win32::system_message(error)};
}

class ThreadPoolExitMonitor final : public ExitMonitor {
 public:
  ~ThreadPoolExitMonitor() override { shutdown(); }

  Result<void> watch(Process& process, std::function<void()> on_exit, std::function<void()> /*on_contents*/,
                     std::function<void(std::string_view, bool)> on_notify) override {
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
      return watch_error(process, GetLastError());
    }
    UniqueHandle owned(duplicate);

    // The notification pipe: a duplicate of the Process's read end too (same
    // file object, so still overlapped), so that a read under way never uses
    // a handle the Process has closed; and an auto-reset event for its
    // OVERLAPPED. Auto-reset because the registered wait is persistent: the
    // satisfied wait resets it, where a manual-reset event would remain
    // signalled and make the wait fire again and again (Microsoft,
    // RegisterWaitForSingleObject: dwFlags "with objects that remain
    // signaled", and Remarks on the wait modifying the object's state).
    std::unique_ptr<Notify> notify;
    std::intptr_t pipe = process.notify_handle();
    if (on_notify && pipe != -1 && pipe != 0) {
      notify = std::make_unique<Notify>();
      HANDLE pipe_duplicate = nullptr;
      if (!DuplicateHandle(GetCurrentProcess(), reinterpret_cast<HANDLE>(pipe), GetCurrentProcess(), &pipe_duplicate,
                           0, FALSE, DUPLICATE_SAME_ACCESS)) {
        return watch_error(process, GetLastError(), "its notification pipe: ");
      }
      notify->pipe.reset(pipe_duplicate);
      notify->event.reset(CreateEventW(nullptr, FALSE, FALSE, nullptr));
      if (!notify->event) {
        notify->event.release();
        return watch_error(process, GetLastError(), "its notification pipe: ");
      }
      notify->on_notify = std::move(on_notify);
    }

    std::list<std::unique_ptr<Entry>> finished;
    Result<void> result;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) {
        return make_error(std::errc::operation_canceled, "cannot watch process " + std::to_string(process.pid()) +
                                                             ": the exit monitor is shut down");
      }
      take_finished(finished);
      auto entry = std::make_unique<Entry>();
      entry->monitor = this;
      entry->key = &process;
      entry->process = std::move(owned);
      entry->on_exit = std::move(on_exit);
      entry->notify = std::move(notify);
      Entry* raw = entry.get();
      entries_.push_back(std::move(entry));
      raw->self = std::prev(entries_.end());
      raw->listed = true;
      // The callbacks take the monitor's lock, which we hold: they cannot run
      // before raw->wait and the first read are in place.
      if (!RegisterWaitForSingleObject(&raw->wait, raw->process.get(), &ThreadPoolExitMonitor::on_exit_signalled, raw,
                                       INFINITE, WT_EXECUTEONLYONCE | WT_EXECUTEDEFAULT)) {
        DWORD error = GetLastError();
        raw->wait = nullptr;
        raw->listed = false;
        finished.splice(finished.end(), entries_, std::prev(entries_.end()));
        result = watch_error(process, error);
      } else if (raw->notify) {
        Notify& n = *raw->notify;
        // Anything but a read left pending (data there already, or an error)
        // is taken by the first callback: make sure there is one.
        if (issue_read(n) != ReadStart::Pending) SetEvent(n.event.get());
        if (!RegisterWaitForSingleObject(&n.wait, n.event.get(), &ThreadPoolExitMonitor::on_notify_signalled, raw,
                                         INFINITE, WT_EXECUTEDEFAULT)) {
          DWORD error = GetLastError();
          n.wait = nullptr;
          // The exit wait is registered: released (a blocking unregister) without the lock.
          raw->cancelled = true;
          raw->listed = false;
          finished.splice(finished.end(), entries_, std::prev(entries_.end()));
          result = watch_error(process, error, "its notification pipe: ");
        }
      }
    }
    for (auto& entry : finished) release(*entry);
    return result;
  }

  // No callback of `process` runs once this returns: the entry is marked
  // (callbacks check the mark under the lock before running host code), its
  // pending read is cancelled, and both waits are unregistered with
  // UnregisterWaitEx(INVALID_HANDLE_VALUE), which waits for a callback under
  // way to return. Not from the process's own callback: that would wait for
  // itself ("You cannot make a blocking call to UnregisterWaitEx from within a
  // callback function for the same wait operation", Microsoft, UnregisterWaitEx),
  // so there the entry is only marked and freed later, once that callback has
  // returned (take_finished, shutdown).
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
        cancel_read(entry);
        if (entry.delivering == GetCurrentThreadId()) {
          ++it;  // called from its own callback: take_finished/shutdown free it
          continue;
        }
        auto next = std::next(it);
        entry.listed = false;
        removed.splice(removed.end(), entries_, it);
        it = next;
      }
    }
    // Outside the lock: a callback under way takes it before it returns.
    for (auto& entry : removed) release(*entry);
  }

  // Unregisters every wait, waiting for callbacks in progress to return.
  void shutdown() override {
    std::list<std::unique_ptr<Entry>> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      for (auto& entry : entries_) {
        cancel_read(*entry);
        entry->listed = false;
      }
      all.swap(entries_);
    }
    for (auto& entry : all) release(*entry);
    // Entries being retired on the pool reach this monitor once more, when done.
    std::unique_lock<std::mutex> lock(mutex_);
    retired_.wait(lock, [this] { return retiring_ == 0; });
  }

 private:
  // The notification pipe of one entry. Its fields are guarded by mutex_;
  // `buffer` belongs to the read under way, then to the callback that took
  // its result until it issues the next read.
  struct Notify {
    UniqueHandle pipe;   // our duplicate of Process::notify_handle(), overlapped
    UniqueHandle event;  // auto-reset: set when a read completes (or by us, see issue_read)
    HANDLE wait = nullptr;
    OVERLAPPED overlapped{};
    std::function<void(std::string_view, bool)> on_notify;
    bool reading = false;  // a read was issued and its result not taken yet
    DWORD failed = 0;      // the error of a read that could not start, for the callback to report
    bool ended = false;    // end of file seen: on_notify(eof) is delivered, nothing more is read
    bool missed = false;   // a callback found host code running and left its signal to the deliverer
    char buffer[kNotifyBufferBytes];
  };

  struct Entry {
    ThreadPoolExitMonitor* monitor = nullptr;
    const Process* key = nullptr;  // what unwatch() looks for; never dereferenced
    HANDLE wait = nullptr;
    UniqueHandle process;
    std::function<void()> on_exit;
    std::unique_ptr<Notify> notify;  // only with a notification pipe
    DWORD delivering = 0;            // the thread running host code of this entry, 0 when none
    bool cancelled = false;          // unwatched: no callback may run host code
    bool exited = false;             // the process has ended
    bool exit_reported = false;      // on_exit has been taken to run
    int reads_after_exit = 0;        // notification reads taken since the exit was seen
    bool listed = false;             // in entries_ (at `self`), not yet taken by anyone to free
    std::list<std::unique_ptr<Entry>>::iterator self;
    bool finished() const { return exit_reported && (!notify || notify->ended) && delivering == 0; }
  };

  enum class ReadStart { Pending, Done, Failed };

  // Issues the next read (caller holds mutex_). Pending: nothing was in the
  // pipe. Done: it completed at once (the event is set as well: Microsoft,
  // SetFileCompletionNotificationModes, "If an explicit event is provided for
  // the request, it is still signaled"). Failed: it could not start (the
  // write end is closed: ERROR_BROKEN_PIPE), and the error waits in `failed`.
  static ReadStart issue_read(Notify& n) {
    n.overlapped = OVERLAPPED{};
    n.overlapped.hEvent = n.event.get();
    n.missed = false;  // no read was under way: what a callback left was stale
    // No count pointer: for an overlapped read Microsoft recommends NULL
    // (ReadFile, lpNumberOfBytesRead); GetOverlappedResult gives it.
    if (ReadFile(n.pipe.get(), n.buffer, sizeof n.buffer, nullptr, &n.overlapped)) {
      n.reading = true;
      return ReadStart::Done;
    }
    DWORD error = GetLastError();
    if (error == ERROR_IO_PENDING) {
      n.reading = true;
      return ReadStart::Pending;
    }
    n.failed = error != 0 ? error : ERROR_BROKEN_PIPE;
    return ReadStart::Failed;
  }

  // Asks the read under way to end now (caller holds mutex_): it completes
  // with ERROR_OPERATION_ABORTED, or with what it had already received.
  // CancelIoEx, unlike CancelIo, reaches I/O that other threads (the pool's)
  // issued (Microsoft, CancelIoEx).
  static void cancel_read(Entry& entry) {
    if (entry.notify && entry.notify->reading) CancelIoEx(entry.notify->pipe.get(), &entry.notify->overlapped);
  }

  // Runs on_exit on this thread (caller holds `lock`, reacquired on return).
  void report_exit(Entry& entry, std::unique_lock<std::mutex>& lock) {
    entry.exit_reported = true;
    std::function<void()> on_exit = std::move(entry.on_exit);
    entry.delivering = GetCurrentThreadId();
    lock.unlock();
    if (on_exit) on_exit();
    lock.lock();
    entry.delivering = 0;
  }

  static void CALLBACK on_exit_signalled(void* context, BOOLEAN /*timed_out*/) {
    auto* entry = static_cast<Entry*>(context);
    ThreadPoolExitMonitor& monitor = *entry->monitor;
    std::unique_lock<std::mutex> lock(monitor.mutex_);
    // shutdown()/unwatch() own the entry then, and wait for us to return.
    if (monitor.closed_ || entry->cancelled) return;
    entry->exited = true;
    if ((entry->notify && !entry->notify->ended) || entry->delivering != 0) {
      // What the child wrote before it exited comes first. All of it is in
      // the pipe or in the read under way by now, but a completed read may
      // not be visible yet (its OVERLAPPED is written when the completion is
      // processed): so the read is cancelled, and the notification callback
      // that takes its result reads on until the pipe is empty (a read left
      // pending) and then reports the exit (pump).
      cancel_read(*entry);
      return;
    }
    monitor.report_exit(*entry, lock);
    monitor.retire(*entry);  // `entry` may be freed once this callback returns
  }

  static void CALLBACK on_notify_signalled(void* context, BOOLEAN /*timed_out*/) {
    auto* entry = static_cast<Entry*>(context);
    ThreadPoolExitMonitor& monitor = *entry->monitor;
    std::unique_lock<std::mutex> lock(monitor.mutex_);
    // A signal with nothing to take is harmless: the extra one after a read
    // that completed at once, or one whose result another callback took.
    if (monitor.closed_ || entry->cancelled || entry->notify->ended) return;
    if (entry->delivering != 0) {
      // Host code of this entry runs on another thread. If that is on_exit
      // with a read under way (pump), this may be its completion, whose
      // signal is consumed now: the deliverer takes it when it is done.
      entry->notify->missed = true;
      return;
    }
    monitor.pump(*entry, lock);
    monitor.retire(*entry);  // `entry` may be freed once this callback returns
  }

  // Takes the result of the last read, delivers it, and reads on (caller
  // holds `lock`; it is released while on_notify or on_exit runs). Reads that
  // complete at once are taken in the same turn, up to kReadsPerTurn (then
  // the completion's signal brings the next turn, so a flooding child holds
  // one pool thread at a time, in bounded turns); a read left pending ends the
  // turn, and its completion signals the next callback.
  void pump(Entry& entry, std::unique_lock<std::mutex>& lock) {
    Notify& n = *entry.notify;
    for (int round = 1;; ++round) {
      DWORD count = 0;
      DWORD error = 0;
      if (n.failed != 0) {
        error = std::exchange(n.failed, 0);
      } else {
        if (!n.reading) return;
        if (!GetOverlappedResult(n.pipe.get(), &n.overlapped, &count, FALSE)) {
          error = GetLastError();
          if (error == ERROR_IO_INCOMPLETE) return;  // still under way: its completion signals again
        }
        n.reading = false;
      }
      if (entry.exited) ++entry.reads_after_exit;
      // Cancelled for the exit (or, should a pool thread end with a read it
      // issued still pending, with that thread): no data, not the end of the
      // pipe; read again.
      if (error == ERROR_OPERATION_ABORTED) error = 0, count = 0;
      // ERROR_BROKEN_PIPE once every write end is closed; any other error ends
      // the stream too, reported the same way.
      bool eof = error != 0;
      if (eof) n.ended = true;
      if (eof || count > 0) {  // a zero-byte write by the child completes a read with nothing
        entry.delivering = GetCurrentThreadId();
        lock.unlock();
        n.on_notify(eof ? std::string_view() : std::string_view(n.buffer, count), eof);
        lock.lock();
        entry.delivering = 0;
        if (closed_ || entry.cancelled) return;  // unwatched meanwhile: no more reads
      }
      if (!eof) {
        // A descendant that keeps writing after the child exited cannot hold
        // the exit back: more reads than the pipe can have held at the exit
        // (its 64 KiB buffer, plus the read under way) are not needed for it.
        if (entry.exited && !entry.exit_reported && entry.reads_after_exit > kDrainReadsAfterExit) {
          report_exit(entry, lock);
          if (closed_ || entry.cancelled) return;
        }
        ReadStart start = issue_read(n);
        if (start == ReadStart::Failed) continue;  // the end of file, reported in this turn
        if (start == ReadStart::Done) {
          if (round >= kReadsPerTurn) return;  // its signal brings the next turn
          continue;
        }
      }
      // The pipe is empty (a read left pending) or ended: once the child has
      // exited, all it wrote before has been delivered.
      if (!entry.exited || entry.exit_reported) return;
      report_exit(entry, lock);
      if (closed_ || entry.cancelled || n.ended) return;
      // The read under way may have completed while on_exit ran; its
      // callback then left it to us (on_notify_signalled).
      if (!std::exchange(n.missed, false)) return;
    }
  }

  // Moves the entries that no callback will use again out of the list
  // (caller holds mutex_), for release() without the lock: those whose
  // callbacks are over, and unwatched ones whose own callback (that called
  // unwatch) has returned. A callback still to come for them returns at once.
  void take_finished(std::list<std::unique_ptr<Entry>>& out) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      Entry& entry = **it;
      auto next = std::next(it);
      if (entry.finished() || (entry.cancelled && entry.delivering == 0)) {
        entry.listed = false;
        out.splice(out.end(), entries_, it);
      }
      it = next;
    }
  }

  // Called by a callback of `entry` once its host code has returned (caller
  // holds mutex_): if no callback will run host code for it again (unwatched,
  // or exit and end of file both delivered), hands it to a thread-pool work
  // item that frees it. Not here: freeing needs the blocking unregister, which
  // must not be called from a callback of the same wait (Microsoft,
  // UnregisterWaitEx). The work item's unregister returns once this callback
  // has; a callback of the other wait still to come sees `cancelled`. If no
  // work item can be queued, the entry stays for take_finished/shutdown.
  void retire(Entry& entry) {
    if (!entry.listed || closed_ || entry.delivering != 0) return;
    if (!entry.cancelled && !entry.finished()) return;
    auto retirement = std::unique_ptr<Retirement>(new (std::nothrow) Retirement{this, nullptr});
    if (!retirement) return;
    entry.cancelled = true;
    entry.key = nullptr;
    retirement->entry = std::move(*entry.self);
    entries_.erase(entry.self);
    entry.listed = false;
    ++retiring_;
    if (QueueUserWorkItem(&ThreadPoolExitMonitor::retire_work, retirement.get(), WT_EXECUTEDEFAULT)) {
      static_cast<void>(retirement.release());
      return;
    }
    --retiring_;
    entries_.push_back(std::move(retirement->entry));
    entry.self = std::prev(entries_.end());
    entry.listed = true;
  }

  struct Retirement {
    ThreadPoolExitMonitor* monitor;
    std::unique_ptr<Entry> entry;
  };

  static DWORD WINAPI retire_work(void* context) {
    std::unique_ptr<Retirement> retirement(static_cast<Retirement*>(context));
    release(*retirement->entry);
    retirement->entry.reset();
    ThreadPoolExitMonitor& monitor = *retirement->monitor;
    std::lock_guard<std::mutex> lock(monitor.mutex_);
    --monitor.retiring_;
    monitor.retired_.notify_all();  // under the lock: shutdown may destroy the monitor once it is released
    return 0;
  }

  // Frees an entry that is out of the list (without mutex_: the callbacks
  // take it). After the blocking unregisters no callback runs or will run; a
  // read still under way owns the OVERLAPPED and the buffer until it
  // completes, so it is cancelled and waited for: its completion sets the
  // event, which nothing else waits on any more (a completion whose signal a
  // callback already consumed shows in HasOverlappedIoCompleted).
  static void release(Entry& entry) {
    if (entry.wait) UnregisterWaitEx(entry.wait, INVALID_HANDLE_VALUE);
    if (!entry.notify) return;
    Notify& n = *entry.notify;
    if (n.wait) UnregisterWaitEx(n.wait, INVALID_HANDLE_VALUE);
    if (!n.reading) return;
    CancelIoEx(n.pipe.get(), &n.overlapped);
    // A cancelled pipe read completes at once; the bound only keeps this wait
    // finite. Should it ever pass, the read's memory is left allocated rather
    // than freed under the I/O.
    if (!HasOverlappedIoCompleted(&n.overlapped) && WaitForSingleObject(n.event.get(), 10000) != WAIT_OBJECT_0 &&
        !HasOverlappedIoCompleted(&n.overlapped)) {
      static_cast<void>(entry.notify.release());
    }
  }

  std::mutex mutex_;
  std::list<std::unique_ptr<Entry>> entries_;
  bool closed_ = false;
  int retiring_ = 0;  // entries handed to retire_work and not yet freed
  std::condition_variable retired_;
};

}  // namespace

Result<std::unique_ptr<ExitMonitor>> make_exit_monitor(bool /*prefer_pidfd*/) {
  return std::unique_ptr<ExitMonitor>(std::make_unique<ThreadPoolExitMonitor>());
}

}  // namespace modkit::platform
