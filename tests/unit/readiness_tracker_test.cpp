// ReadinessTracker on a manual clock: the notification protocol's parsing,
// the timeout, the watchdog and the end-of-file grace.
#include <gtest/gtest.h>

#include "core/readiness_tracker.hpp"

namespace modkit::core {
namespace {

using std::chrono::milliseconds;
using Clock = ReadinessTracker::Clock;

Readiness notify_mode(milliseconds timeout = milliseconds(1000), milliseconds watchdog = milliseconds(0)) {
  Readiness config;
  config.mode = Readiness::Mode::Notify;
  config.timeout = timeout;
  config.watchdog = watchdog;
  return config;
}

bool became_ready(const ReadinessTracker::Effects& effects) {
  for (const auto& notice : effects.notices) {
    if (!notice) return true;
  }
  return false;
}

const Clock::time_point t0 = Clock::time_point{} + std::chrono::hours(1);

TEST(ReadinessTracker, ALineSplitAcrossReadsIsJoined) {
  ReadinessTracker tracker(notify_mode(), t0);
  EXPECT_FALSE(became_ready(tracker.notify_data("REA", t0)));
  EXPECT_FALSE(became_ready(tracker.notify_data("DY=", t0)));
  EXPECT_TRUE(became_ready(tracker.notify_data("1\n", t0)));
  EXPECT_EQ(tracker.state(), ReadyState::Ready);
}

TEST(ReadinessTracker, OnlyWholeLinesCount) {
  ReadinessTracker tracker(notify_mode(), t0);
  EXPECT_FALSE(became_ready(tracker.notify_data("READY=10\nXREADY=1\nREADY=1 \n", t0)));
  EXPECT_TRUE(became_ready(tracker.notify_data("READY=1\r\n", t0)));  // CRLF accepted
}

TEST(ReadinessTracker, StatusLinesKeepTheirOrderAroundReady) {
  ReadinessTracker tracker(notify_mode(), t0);
  auto effects = tracker.notify_data("STATUS=a\nREADY=1\nSTATUS=b\n", t0);
  ASSERT_EQ(effects.notices.size(), 3u);
  EXPECT_EQ(effects.notices[0], std::optional<std::string>("a"));
  EXPECT_FALSE(effects.notices[1].has_value());
  EXPECT_EQ(effects.notices[2], std::optional<std::string>("b"));
}

TEST(ReadinessTracker, AnOverlongLineIsDroppedWhole) {
  ReadinessTracker tracker(notify_mode(), t0);
  std::string overlong = "STATUS=" + std::string(ReadinessTracker::kMaxNotifyLine, 'x');
  auto effects = tracker.notify_data(overlong.substr(0, 100), t0);
  effects = tracker.notify_data(overlong.substr(100) + "\nSTATUS=ok\n", t0);
  ASSERT_EQ(effects.notices.size(), 1u);
  EXPECT_EQ(effects.notices[0], std::optional<std::string>("ok"));
}

TEST(ReadinessTracker, TimesOutAtTheTimeoutNotBefore) {
  ReadinessTracker tracker(notify_mode(milliseconds(200)), t0);
  EXPECT_EQ(tracker.deadline_hint(), t0 + milliseconds(200));
  EXPECT_FALSE(tracker.tick(t0 + milliseconds(199)).failed);
  auto effects = tracker.tick(t0 + milliseconds(200));
  ASSERT_TRUE(effects.failed);
  EXPECT_EQ(*effects.failed, ExitStatus::Reason::ReadinessTimeout);
  EXPECT_FALSE(tracker.tick(t0 + milliseconds(300)).failed);  // once
}

TEST(ReadinessTracker, EndOfFileBeforeReadyFailsAfterTheExitGraceUnlessTheExitComes) {
  ReadinessTracker closed(notify_mode(), t0);
  auto closing = closed.notify_closed(t0);
  EXPECT_FALSE(closing.failed);
  EXPECT_TRUE(closing.deadline_moved);  // whoever times the readiness must look again
  EXPECT_FALSE(closed.tick(t0 + ReadinessTracker::kExitGrace - milliseconds(1)).failed);
  auto effects = closed.tick(t0 + ReadinessTracker::kExitGrace);
  ASSERT_TRUE(effects.failed);
  EXPECT_EQ(*effects.failed, ExitStatus::Reason::NotReady);
  EXPECT_TRUE(closed.closed_early());

  ReadinessTracker exited(notify_mode(), t0);
  EXPECT_FALSE(exited.notify_closed(t0).failed);
  effects = exited.exited(t0 + milliseconds(1));
  ASSERT_TRUE(effects.failed);
  EXPECT_FALSE(exited.closed_early());
}

TEST(ReadinessTracker, ALastLineWithoutNewlineCountsAtEndOfFile) {
  ReadinessTracker tracker(notify_mode(), t0);
  EXPECT_FALSE(became_ready(tracker.notify_data("READY=1", t0)));
  auto effects = tracker.notify_closed(t0);
  EXPECT_TRUE(became_ready(effects));
  EXPECT_FALSE(effects.failed);
}

TEST(ReadinessTracker, WatchdogPingsMoveTheDeadline) {
  ReadinessTracker tracker(notify_mode(milliseconds(1000), milliseconds(100)), t0);
  ASSERT_TRUE(became_ready(tracker.notify_data("\n", t0)));
  EXPECT_EQ(tracker.deadline_hint(), t0 + milliseconds(100));
  tracker.notify_data("WATCHDOG=1\n", t0 + milliseconds(90));
  EXPECT_FALSE(tracker.tick(t0 + milliseconds(150)).failed);
  auto effects = tracker.tick(t0 + milliseconds(190));
  ASSERT_TRUE(effects.failed);
  EXPECT_EQ(*effects.failed, ExitStatus::Reason::WatchdogTimeout);
}

TEST(ReadinessTracker, PingsBeforeReadyDoNotCount) {
  ReadinessTracker tracker(notify_mode(milliseconds(200), milliseconds(100)), t0);
  tracker.notify_data("WATCHDOG=1\n", t0);
  EXPECT_EQ(tracker.state(), ReadyState::Waiting);
  EXPECT_EQ(tracker.deadline_hint(), t0 + milliseconds(200));
}

TEST(ReadinessTracker, StdoutLineModeIgnoresTheDescriptorAndWaitsForStdoutsEnd) {
  Readiness config;
  config.mode = Readiness::Mode::StdoutLine;
  config.line_prefix = "up";
  ReadinessTracker tracker(config, t0);
  EXPECT_TRUE(tracker.awaits_stdout_line());
  EXPECT_FALSE(became_ready(tracker.notify_data("READY=1\n", t0)));
  EXPECT_FALSE(tracker.exited(t0).failed);  // its line may still be in the pipe
  EXPECT_TRUE(became_ready(tracker.stdout_line("up and running", t0)));
  EXPECT_FALSE(tracker.awaits_stdout_line());
  EXPECT_FALSE(tracker.stdout_closed(t0).failed);
}

TEST(ReadinessTracker, ImmediateIsReadyFromTheStart) {
  ReadinessTracker tracker(Readiness{}, t0);
  EXPECT_EQ(tracker.state(), ReadyState::Ready);
  EXPECT_EQ(tracker.deadline_hint(), Clock::time_point::max());
}

}  // namespace
}  // namespace modkit::core
