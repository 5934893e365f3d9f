// CancellationToken: waiting, shared state, callbacks and registrations.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

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

}  // namespace
