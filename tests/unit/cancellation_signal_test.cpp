// CancellationToken::cancel_from_signal() and enable_signal_cancel(): the flag,
// the relay thread and its lifetime (portable, in-process), then real signals
// (POSIX, each in a forked child so that the handler, a hang or a crash stays
// contained): the regression test for the deadlock and the host's SIGTERM
// pattern end to end.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"

#ifndef _WIN32
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>

#include "test_support.hpp"
#endif
#ifdef __linux__
#include <dirent.h>
#endif

namespace {

using modkit::CancellationToken;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Polls `done` (tests may poll; the library may not) until it holds or
// `limit` has passed; returns its last value.
bool eventually(const std::function<bool()>& done, Clock::duration limit = 10s) {
  auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

#ifdef __linux__
// Threads of this process, to see the relay start, and end with its token.
int thread_count() {
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return -1;
  int count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

// The count once threads of earlier tests (a detached relay winding down)
// have ended: two equal readings 20 ms apart.
int settled_thread_count() {
  // ThreadSanitizer starts a thread of its own at the process's first
  // pthread_create: have it running before any baseline is taken.
  static const bool warmed = [] {
    std::thread([] {}).join();
    return true;
  }();
  (void)warmed;
  int last = thread_count();
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(20ms);
    int now = thread_count();
    if (now == last) return now;
    last = now;
  }
  return last;
}
#endif

// ---------------------------------------------------------------------------
// (c) Edge cases, without real signals: cancel_from_signal() may be called
// from any thread, which makes every ordering easy to set up.
// ---------------------------------------------------------------------------

TEST(CancellationSignal, WithoutRelayOnlyTheFlagIsSet) {
  CancellationToken token;
  CancellationToken copy = token;
  int ran = 0;
  auto registration = token.on_cancel([&] { ++ran; });
  token.cancel_from_signal();
  EXPECT_TRUE(token.is_cancelled());
  EXPECT_TRUE(copy.is_cancelled());
  EXPECT_TRUE(token.wait_for(0ms));  // returns is_cancelled(): at once
  token.wait();                      // returns at once
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(ran, 0) << "without enable_signal_cancel() nothing but the flag may happen";
  // A callback registered now runs at once, as for any cancelled token.
  bool late = false;
  auto late_registration = token.on_cancel([&] { late = true; });
  EXPECT_TRUE(late);
  // An ordinary cancel() later runs the registered ones, once.
  copy.cancel();
  copy.cancel();
  EXPECT_EQ(ran, 1);
}

TEST(CancellationSignal, RelayWakesABlockedWaiterAndRunsCallbacksOnItsThread) {
  CancellationToken token;
  ASSERT_TRUE(token.enable_signal_cancel());
  std::atomic<int> ran{0};
  std::atomic<bool> ran_on_caller{false}, ran_on_waiter{false};
  std::atomic<bool> waiting{false}, woke{false};
  const auto caller = std::this_thread::get_id();
  std::thread::id waiter_id;
  std::thread waiter([&] {
    waiting = true;
    token.wait();
    woke = token.wait_for(30s);
  });
  waiter_id = waiter.get_id();
  auto registration = token.on_cancel([&, caller, waiter_id] {
    ran_on_caller = std::this_thread::get_id() == caller;
    ran_on_waiter = std::this_thread::get_id() == waiter_id;
    ++ran;
  });
  ASSERT_TRUE(eventually([&] { return waiting.load(); }));
  std::this_thread::sleep_for(20ms);  // let it block in wait()
  auto start = Clock::now();
  token.cancel_from_signal();
  EXPECT_TRUE(token.is_cancelled());
  EXPECT_TRUE(eventually([&] { return woke.load(); })) << "the relay's cancel() did not wake the waiter";
  waiter.join();
  EXPECT_TRUE(eventually([&] { return ran.load() == 1; }));
  EXPECT_LT(Clock::now() - start, 10s);
  EXPECT_FALSE(ran_on_caller) << "callbacks run on the relay thread, not in the handler";
  EXPECT_FALSE(ran_on_waiter);
}

TEST(CancellationSignal, RequestBeforeEnableIsStillRelayed) {
  CancellationToken token;
  std::atomic<int> ran{0};
  auto registration = token.on_cancel([&] { ++ran; });
  token.cancel_from_signal();
  std::this_thread::sleep_for(10ms);
  EXPECT_EQ(ran, 0);
  ASSERT_TRUE(token.enable_signal_cancel());
  EXPECT_TRUE(eventually([&] { return ran.load() == 1; }));
}

TEST(CancellationSignal, TwiceRunsEachCallbackOnce) {
  CancellationToken token;
  ASSERT_TRUE(token.enable_signal_cancel());
  std::atomic<int> ran{0};
  auto registration = token.on_cancel([&] { ++ran; });
  token.cancel_from_signal();
  token.cancel_from_signal();
  EXPECT_TRUE(eventually([&] { return ran.load() >= 1; }));
  token.cancel_from_signal();
  token.cancel();
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(ran, 1);
}

TEST(CancellationSignal, ConcurrentWithCancelRunsEachCallbackOnce) {
  for (int round = 0; round < 30; ++round) {
    std::atomic<int> calls{0};
    {
      CancellationToken token;
      ASSERT_TRUE(token.enable_signal_cancel());
      std::vector<CancellationToken::Registration> registrations;
      for (int i = 0; i < 10; ++i) registrations.push_back(token.on_cancel([&] { ++calls; }));
      std::atomic<bool> go{false};
      std::vector<std::thread> threads;
      for (int t = 0; t < 4; ++t) {
        threads.emplace_back([token, t, &go]() mutable {
          while (!go) std::this_thread::yield();
          if (t % 2 == 0) {
            token.cancel();
          } else {
            token.cancel_from_signal();
          }
        });
      }
      go = true;
      for (auto& thread : threads) thread.join();
      ASSERT_TRUE(eventually([&] { return calls.load() == 10; })) << "round " << round << ": " << calls;
      // Registrations and the token die here, possibly while the relay still
      // holds the state: the last reference may then drop on the relay.
    }
    EXPECT_EQ(calls, 10) << "round " << round;
  }
}

TEST(CancellationSignal, EnableIsIdempotentAndNotNeededAfterCancel) {
  CancellationToken token;
  CancellationToken copy = token;
#ifdef __linux__
  const int before = settled_thread_count();
#endif
  ASSERT_TRUE(token.enable_signal_cancel());
  ASSERT_TRUE(token.enable_signal_cancel());
  ASSERT_TRUE(copy.enable_signal_cancel());
#ifdef __linux__
  EXPECT_EQ(settled_thread_count(), before + 1) << "one relay per token state";
  CancellationToken cancelled;
  cancelled.cancel();
  ASSERT_TRUE(cancelled.enable_signal_cancel());
  EXPECT_EQ(settled_thread_count(), before + 1) << "nothing to relay after cancel()";
#endif
}

TEST(CancellationSignal, LastCopyGoingAwayJoinsTheRelay) {
#ifdef __linux__
  const int before = settled_thread_count();
#endif
  {
    CancellationToken token;
    ASSERT_TRUE(token.enable_signal_cancel());
    CancellationToken copy = token;
#ifdef __linux__
    EXPECT_EQ(settled_thread_count(), before + 1);
#endif
  }  // never cancelled: the destructor wakes the relay and joins it
#ifdef __linux__
  EXPECT_TRUE(eventually([&] { return thread_count() == before; }, 5s));
#endif
  {
    CancellationToken token;
    ASSERT_TRUE(token.enable_signal_cancel());
    token.cancel();  // the relay stays parked until the token goes away
  }
#ifdef __linux__
  EXPECT_TRUE(eventually([&] { return thread_count() == before; }, 5s));
#endif
}

TEST(CancellationSignal, LastReferenceDroppedOnTheRelayThreadDetachesIt) {
#ifdef __linux__
  const int before = settled_thread_count();
#endif
  std::optional<CancellationToken> holder;
  holder.emplace();
  std::optional<CancellationToken> trigger = holder;  // what this thread uses, like a handler's global
  CancellationToken::Registration registration;
  std::atomic<bool> trigger_dropped{false}, done{false};
  // The callback, run by the relay, drops every reference but the relay's
  // own (once this thread has dropped its copy): the state then dies on the
  // relay thread, which must not join itself.
  registration = holder->on_cancel([&] {
    registration.reset();
    holder.reset();
    while (!trigger_dropped) std::this_thread::sleep_for(1ms);
    done = true;
  });
  ASSERT_TRUE(trigger->enable_signal_cancel());
  trigger->cancel_from_signal();
  trigger.reset();  // a token must outlive calls on it: drop it only now
  trigger_dropped = true;
  ASSERT_TRUE(eventually([&] { return done.load(); }));
#ifdef __linux__
  EXPECT_TRUE(eventually([&] { return thread_count() == before; }, 5s)) << "the relay did not end";
#endif
}

TEST(CancellationSignal, ThrowingCallbackOnTheRelayDoesNotStopTheOthers) {
#if defined(__cpp_exceptions)
  {
    // A library built with -fno-exceptions cannot catch: on the relay thread
    // that would terminate, so find out first on this thread.
    CancellationToken probe;
    probe.cancel();
    try {
      auto r = probe.on_cancel([] { throw 1; });
    } catch (...) {
      GTEST_SKIP() << "the library was built without exceptions";
    }
  }
  CancellationToken token;
  ASSERT_TRUE(token.enable_signal_cancel());
  std::atomic<int> ran{0};
  auto a = token.on_cancel([&] { ++ran; });
  auto b = token.on_cancel([] { throw 42; });
  auto c = token.on_cancel([&] { ++ran; });
  token.cancel_from_signal();
  EXPECT_TRUE(eventually([&] { return ran.load() == 2; }));
#else
  GTEST_SKIP() << "tests built without exceptions";
#endif
}

// ---------------------------------------------------------------------------
// Real signals, POSIX: each case runs in a forked child.
// ---------------------------------------------------------------------------
#ifndef _WIN32

// Runs `body` in a forked child that exits with its result. Returns the exit
// code, or -1 (after killing the child) if it did not end within `limit`, or
// 128 + the signal that ended it.
int run_in_child(const std::function<int()>& body, Clock::duration limit) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) return -2;
  if (pid == 0) {
    int code = body();
    std::fflush(nullptr);
    _exit(code);
  }
  auto deadline = Clock::now() + limit;
  for (;;) {
    int status = 0;
    pid_t reaped = waitpid(pid, &status, WNOHANG);
    if (reaped == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + WTERMSIG(status);
    }
    if (reaped < 0 && errno != EINTR) return -2;
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
}

// The child's verdict: prints why it failed (stderr reaches the test's
// output) and returns the exit code.
int fail(int code, const char* why) {
  std::fprintf(stderr, "forked child: %s\n", why);
  return code;
}

CancellationToken* g_token = nullptr;

void cancel_from_handler(int) { g_token->cancel_from_signal(); }
void plain_cancel_from_handler(int) { g_token->cancel(); }  // the old, broken wiring

void set_signal_mask(int how, int signal_number) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signal_number);
  pthread_sigmask(how, &set, nullptr);
}

// Threads that keep taking the token's mutex (registering, unregistering,
// waiting with timeouts) and keep SIGTERM unblocked, so that a SIGTERM often
// lands on a thread inside the token's critical section. They stop when told.
struct Hammer {
  explicit Hammer(CancellationToken token_in) : token(std::move(token_in)) {}

  void start(int count) {
    for (int i = 0; i < count; ++i) {
      threads.emplace_back([this] {
        set_signal_mask(SIG_UNBLOCK, SIGTERM);
        std::vector<CancellationToken::Registration> kept_here;
        long iteration = 0;
        while (!stop.load()) {
          ++iteration;
          if (iteration % 8 == 0 && kept_here.size() < 2000) {
            ++kept;
            kept_here.push_back(token.on_cancel([this] { ++kept_ran; }));
          } else {
            auto transient = token.on_cancel([] {});
            transient.reset();
          }
          token.wait_for(iteration % 2 ? 0us : 50us);
          (void)token.is_cancelled();
        }
        // After cancellation every wait returns, at once.
        if (!token.is_cancelled() || !token.wait_for(5s)) ++failures;
        token.wait();
        std::lock_guard<std::mutex> lock(kept_mutex);
        for (auto& registration : kept_here) all_kept.push_back(std::move(registration));
      });
    }
  }
  void join() {
    stop = true;
    for (auto& thread : threads) thread.join();
  }

  CancellationToken token;
  std::vector<std::thread> threads;
  std::atomic<bool> stop{false};
  std::atomic<int> kept{0}, kept_ran{0}, failures{0};
  std::mutex kept_mutex;
  std::vector<CancellationToken::Registration> all_kept;
};

// Sends SIGTERM to this process `times` times, ~1 ms apart. The sender blocks
// SIGTERM so that it lands on the hammering (or waiting) threads.
void send_sigterms(int times) {
  for (int i = 0; i < times; ++i) {
    kill(getpid(), SIGTERM);
    std::this_thread::sleep_for(1ms);
  }
}

// (a) The regression test. The old cancel_from_signal() could only be
// cancel(), which locks the token's mutex: when the signal interrupts a thread
// that holds that mutex (in on_cancel, a Registration's reset, wait_for), the
// handler blocks on a lock its own thread holds and never returns, and every
// other user of the token then blocks behind it: the process hangs (with a
// std::mutex it is even undefined behaviour). Hammering threads that take the
// mutex all the time, with many SIGTERMs, hit that window almost surely; the
// new handler takes no lock, so the token must still become cancelled, wake
// its waiters and run its callbacks within the bound.
TEST(CancellationSignalPosix, SigtermWhileThreadsHammerTheToken) {
  int code = run_in_child(
      [] {
        CancellationToken token;
        g_token = &token;
        if (!token.enable_signal_cancel()) return fail(2, "enable_signal_cancel failed");
        Hammer hammer(token);
        std::atomic<int> waiters_done{0};
        std::atomic<int> waiter_failures{0};
        std::vector<std::thread> waiters;
        waiters.emplace_back([&] {
          set_signal_mask(SIG_UNBLOCK, SIGTERM);
          token.wait();
          ++waiters_done;
        });
        waiters.emplace_back([&] {
          set_signal_mask(SIG_UNBLOCK, SIGTERM);
          if (!token.wait_for(60s)) ++waiter_failures;
          ++waiters_done;
        });
        set_signal_mask(SIG_BLOCK, SIGTERM);  // this thread only sends
        struct sigaction action {}, previous {};
        action.sa_handler = &cancel_from_handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESTART;
        sigaction(SIGTERM, &action, &previous);
        hammer.start(4);
        std::this_thread::sleep_for(30ms);
        auto start = Clock::now();
        send_sigterms(200);  // each one a chance to interrupt a lock holder
        if (!token.is_cancelled()) return fail(3, "not cancelled after the signals");
        if (!eventually([&] { return waiters_done.load() == 2; }, 5s)) return fail(4, "waiters not woken");
        for (auto& waiter : waiters) waiter.join();
        if (waiter_failures != 0) return fail(5, "wait_for timed out");
        hammer.join();
        if (hammer.failures != 0) return fail(6, "a wait after cancellation did not return true");
        if (!eventually([&] { return hammer.kept_ran.load() == hammer.kept.load(); }, 5s)) {
          return fail(7, "not every registered callback ran");
        }
        if (Clock::now() - start > 10s) return fail(8, "too slow");
        if (hammer.kept.load() == 0) return fail(9, "nothing was registered");
        // Only this thread (SIGTERM blocked) and the relay (all blocked) are
        // left: take any SIGTERM still pending, then restore the disposition.
        sigset_t term;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        timespec no_wait{};
        while (sigtimedwait(&term, nullptr, &no_wait) == SIGTERM) {
        }
        sigaction(SIGTERM, &previous, nullptr);
        set_signal_mask(SIG_UNBLOCK, SIGTERM);
        g_token = nullptr;
        return 0;
      },
      30s);
  EXPECT_EQ(code, 0) << (code == -1 ? "the child hung (deadlock) and was killed" : "see the child's message");
}

// The defect itself: cancel() (the only thing the old code offered) called
// from a handler that interrupted a thread holding the token's mutex hangs.
// cancel() is still not async-signal-safe, so this still hangs with the new
// code: it demonstrates, it does not test the fix (that is the test above),
// and it relies on undefined behaviour, so it stays disabled. Run it with
// --gtest_also_run_disabled_tests.
TEST(CancellationSignalPosix, DISABLED_PlainCancelFromAHandlerDeadlocks) {
  int code = run_in_child(
      [] {
        CancellationToken token;
        g_token = &token;
        Hammer hammer(token);
        set_signal_mask(SIG_BLOCK, SIGTERM);
        struct sigaction action {};
        action.sa_handler = &plain_cancel_from_handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESTART;
        sigaction(SIGTERM, &action, nullptr);
        hammer.start(4);
        std::this_thread::sleep_for(30ms);
        send_sigterms(2000);
        hammer.join();  // hangs once a handler deadlocked in a hammering thread
        return 0;
      },
      10s);
  EXPECT_EQ(code, -1) << "expected the child to deadlock and be killed; it exited with " << code;
}

// (b) The host's pattern end to end: a backend with a child, SIGTERM wired to
// cancel_from_signal(), SIGTERM to itself; the shutdown must complete and the
// child be gone.
TEST(CancellationSignalPosix, SigtermShutsDownALocalProcessBackend) {
  int code = run_in_child(
      [] {
        CancellationToken token;
        g_token = &token;
        if (!token.enable_signal_cancel()) return fail(2, "enable_signal_cancel failed");
        auto sink = std::make_shared<modkit::testing::CollectingSink>();
        std::optional<pid_t> child;
        {
          modkit::LocalProcessBackend backend(token, sink);
          auto handle = backend.spawn_instance(modkit::testing::child_config("signalled", {"sleep", "30"}));
          if (!handle || !handle->pid) return fail(3, "spawn failed");
          child = static_cast<pid_t>(*handle->pid);
          // The host's plain pattern: wait_for_shutdown() right after the
          // signal, while the relay may not have run the backend's callback
          // yet. It used to return at once then, with nothing stopped
          // (20 of 20 tries); now it sees the token's flag itself.
          struct sigaction action {}, previous {};
          action.sa_handler = &cancel_from_handler;
          sigemptyset(&action.sa_mask);
          action.sa_flags = SA_RESTART;
          sigaction(SIGTERM, &action, &previous);
          kill(getpid(), SIGTERM);
          if (!token.is_cancelled()) return fail(4, "not cancelled");
          auto start = Clock::now();
          backend.wait_for_shutdown();
          if (Clock::now() - start > 15s) return fail(6, "wait_for_shutdown took too long");
          if (kill(*child, 0) == 0 || errno != ESRCH) return fail(7, "the child is still there");
          auto listed = backend.list_instances("signalled");
          if (!listed || !listed->empty()) return fail(8, "the instance is still listed");
          auto again = backend.spawn_instance(modkit::testing::child_config("signalled", {"sleep", "30"}));
          if (again || again.error().code != std::errc::operation_canceled) return fail(9, "spawn after cancel");
          sigaction(SIGTERM, &previous, nullptr);
        }
        g_token = nullptr;
        return 0;
      },
      60s);
  EXPECT_EQ(code, 0) << (code == -1 ? "the child hung and was killed" : "see the child's message");
}

#endif  // !_WIN32

}  // namespace
