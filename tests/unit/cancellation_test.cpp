// CancellationToken: waiting, shared state, callbacks and registrations.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"

namespace {

using modkit::CancellationToken;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST(CancellationToken, StartsNotCancelled) {
  CancellationToken token;
  EXPECT_FALSE(token.is_cancelled());
  EXPECT_FALSE(token.wait_for(1ms));
}

TEST(CancellationToken, CancelIsSeenByEveryCopy) {
  CancellationToken token;
  CancellationToken copy = token;
  copy.cancel();
  EXPECT_TRUE(token.is_cancelled());
  EXPECT_TRUE(copy.is_cancelled());
  EXPECT_TRUE(token.wait_for(0ms));
  token.wait();  // returns at once
}

TEST(CancellationToken, CancelIsIdempotent) {
  CancellationToken token;
  int calls = 0;
  auto registration = token.on_cancel([&] { ++calls; });
  token.cancel();
  token.cancel();
  EXPECT_EQ(calls, 1);
}

TEST(CancellationToken, WaitForTimesOutWithoutCancel) {
  CancellationToken token;
  auto start = Clock::now();
  EXPECT_FALSE(token.wait_for(50ms));
  EXPECT_GE(Clock::now() - start, 45ms);
}

TEST(CancellationToken, CancelWakesAWaiterOnAnotherThread) {
  CancellationToken token;
  std::atomic<bool> woke{false};
  auto start = Clock::now();
  std::thread waiter([&] { woke = token.wait_for(30s); });
  std::this_thread::sleep_for(20ms);
  token.cancel();
  waiter.join();
  EXPECT_TRUE(woke);
  EXPECT_LT(Clock::now() - start, 10s);  // woken, not timed out
}

TEST(CancellationToken, WaitReturnsOnCancel) {
  CancellationToken token;
  std::thread waiter([token] { token.wait(); });
  token.cancel();
  waiter.join();
}

TEST(CancellationToken, CallbacksRunOnceInOrderOnTheCancellingThread) {
  CancellationToken token;
  std::vector<int> order;
  std::thread::id ran_on;
  auto a = token.on_cancel([&] { order.push_back(1); ran_on = std::this_thread::get_id(); });
  auto b = token.on_cancel([&] { order.push_back(2); });
  EXPECT_TRUE(order.empty());
  token.cancel();
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(CancellationToken, OnCancelAfterCancelRunsAtOnce) {
  CancellationToken token;
  token.cancel();
  bool ran = false;
  auto registration = token.on_cancel([&] { ran = true; });
  EXPECT_TRUE(ran);
}

TEST(CancellationToken, ResetRegistrationUnregisters) {
  CancellationToken token;
  bool ran = false;
  auto registration = token.on_cancel([&] { ran = true; });
  registration.reset();
  registration.reset();  // twice is fine
  token.cancel();
  EXPECT_FALSE(ran);
}

TEST(CancellationToken, DestroyedRegistrationUnregisters) {
  CancellationToken token;
  bool ran = false;
  { auto registration = token.on_cancel([&] { ran = true; }); }
  token.cancel();
  EXPECT_FALSE(ran);
}

TEST(CancellationToken, MovedRegistrationStaysRegistered) {
  CancellationToken token;
  int calls = 0;
  CancellationToken::Registration kept;
  {
    auto registration = token.on_cancel([&] { ++calls; });
    kept = std::move(registration);
  }  // the moved-from registration is destroyed: must not unregister
  CancellationToken::Registration moved_again(std::move(kept));
  token.cancel();
  EXPECT_EQ(calls, 1);
}

TEST(CancellationToken, MoveAssignmentUnregistersThePreviousCallback) {
  CancellationToken token;
  int first = 0, second = 0;
  auto registration = token.on_cancel([&] { ++first; });
  registration = token.on_cancel([&] { ++second; });
  token.cancel();
  EXPECT_EQ(first, 0);
  EXPECT_EQ(second, 1);
}

TEST(CancellationToken, CallbackMayUseTheTokenAndUnregisterOthers) {
  CancellationToken token;
  bool second_ran = false, nested_ran = false;
  CancellationToken::Registration second;
  CancellationToken::Registration nested;
  auto first = token.on_cancel([&] {
    EXPECT_TRUE(token.is_cancelled());
    second.reset();
    nested = token.on_cancel([&] { nested_ran = true; });  // already cancelled: runs at once
  });
  second = token.on_cancel([&] { second_ran = true; });
  token.cancel();
  EXPECT_FALSE(second_ran);
  EXPECT_TRUE(nested_ran);
}

TEST(CancellationToken, CallbackMayResetItsOwnRegistration) {
  CancellationToken token;
  CancellationToken::Registration self;
  bool ran = false;
  self = token.on_cancel([&] {
    ran = true;
    self.reset();  // must not deadlock
  });
  token.cancel();
  EXPECT_TRUE(ran);
}

TEST(CancellationToken, ResetWaitsForACallbackRunningOnAnotherThread) {
  CancellationToken token;
  std::atomic<bool> entered{false}, finished{false};
  auto registration = token.on_cancel([&] {
    entered = true;
    std::this_thread::sleep_for(100ms);
    finished = true;
  });
  std::thread canceller([&] { token.cancel(); });
  while (!entered) std::this_thread::yield();
  registration.reset();
  EXPECT_TRUE(finished) << "reset returned while the callback was still running";
  canceller.join();
}

TEST(CancellationToken, ConcurrentCancelRunsEachCallbackOnce) {
  for (int round = 0; round < 20; ++round) {
    CancellationToken token;
    std::atomic<int> calls{0};
    std::vector<CancellationToken::Registration> registrations;
    for (int i = 0; i < 10; ++i) registrations.push_back(token.on_cancel([&] { ++calls; }));
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) threads.emplace_back([token]() mutable { token.cancel(); });
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(calls, 10);
  }
}

// The library drops a callback's exception only when it is itself built with
// exceptions (CI also runs this suite against a -fno-exceptions library):
// find out with a callback that runs at once on this thread.
bool library_drops_callback_exceptions() {
#if defined(__cpp_exceptions)
  CancellationToken probe;
  probe.cancel();
  try {
    auto registration = probe.on_cancel([] { throw 1; });
  } catch (...) {
    return false;
  }
  return true;
#else
  return false;
#endif
}

TEST(CancellationToken, ThrowingCallbackDoesNotStopTheOthers) {
  if (!library_drops_callback_exceptions()) GTEST_SKIP() << "library or tests built without exceptions";
  CancellationToken token;
  std::vector<int> order;
  auto a = token.on_cancel([&] { order.push_back(1); });
  auto b = token.on_cancel([&] {
    order.push_back(2);
    throw 42;
  });
  auto c = token.on_cancel([&] { order.push_back(3); });
  token.cancel();  // must not throw
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
  EXPECT_TRUE(token.is_cancelled());
  b.reset();  // the thrower is no longer "running": no wait
  bool late = false;
  auto d = token.on_cancel([&] { late = true; });
  EXPECT_TRUE(late);
}

TEST(CancellationToken, EmptyCallbackIsIgnored) {
  CancellationToken token;
  auto before = token.on_cancel(nullptr);
  token.cancel();
  auto after = token.on_cancel(std::function<void()>());
  EXPECT_TRUE(token.is_cancelled());
}

TEST(CancellationToken, CallbackOwningARegistrationIsDestroyedWithoutTheLock) {
  // A callback's captures are destroyed after it ran (or when it is
  // unregistered) without the token's lock held: a captured Registration of
  // the same token may unregister itself in its destructor.
  CancellationToken token;
  bool ran = false;
  auto owned = std::make_shared<CancellationToken::Registration>(token.on_cancel([] {}));
  auto outer = token.on_cancel([&ran, owned]() mutable { ran = true; });
  owned.reset();  // only the callback owns it now
  token.cancel();
  EXPECT_TRUE(ran);

  CancellationToken other;
  auto owned2 = std::make_shared<CancellationToken::Registration>(other.on_cancel([] {}));
  auto outer2 = other.on_cancel([owned2] {});
  owned2.reset();
  outer2.reset();  // destroys the callback, and with it the inner registration
  other.cancel();
}

}  // namespace
