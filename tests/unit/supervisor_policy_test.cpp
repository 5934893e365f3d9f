// The Supervisor's policy as pure logic: classification, backoff, give-up
// limits, reset_after and the per-child state machine, with time and random
// numbers passed in (no threads, no backend).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include "supervision/restart_policy.hpp"

namespace modkit::supervision {
namespace {

using namespace std::chrono_literals;
using Outcome = EndDecision::Outcome;

ExitStatus exited(int code) {
  ExitStatus status;
  status.kind = ExitStatus::Kind::Exited;
  status.code = code;
  return status;
}

ExitStatus signaled(int signal, bool forced = false) {
  ExitStatus status;
  status.kind = ExitStatus::Kind::Signaled;
  status.code = signal;
  status.forced = forced;
  return status;
}

ExitStatus with_reason(ExitStatus status, ExitStatus::Reason reason) {
  status.reason = reason;
  return status;
}

ChildSpec spec_named(const std::string& id) {
  ChildSpec spec;
  spec.id = id;
  spec.config = OopModuleConfig(id, BackendKind::Mock);
  return spec;
}

// The crash loop of the README: backoff 100 ms x2, no jitter, give up after
// 4 failures in a row.
ChildSpec crash_loop_spec() {
  ChildSpec spec = spec_named("a");
  spec.restart = RestartPolicy::Always;
  spec.backoff.initial = 100ms;
  spec.backoff.multiplier = 2.0;
  spec.backoff.jitter = 0.0;
  spec.give_up.max_consecutive_failures = 4;
  return spec;
}

TimePoint t0() { return TimePoint{} + 24h; }

// The jitter's draw for the machine tests: u = 0 (they use jitter 0 anyway).
const std::function<double()> half = [] { return 0.5; };

// --- Classification --------------------------------------------------------

TEST(RestartPolicy, ExitCodesAreFailuresUnlessListedAsSuccess) {
  ChildSpec spec = spec_named("a");
  EXPECT_FALSE(is_failure(spec, exited(0)));
  EXPECT_TRUE(is_failure(spec, exited(3)));
  EXPECT_TRUE(is_failure(spec, exited(255)));
  spec.success_exit_codes = {0, 3};
  EXPECT_FALSE(is_failure(spec, exited(3)));
  spec.success_exit_codes.clear();
  EXPECT_TRUE(is_failure(spec, exited(0)));
}

TEST(RestartPolicy, CleanSignalsAreNotFailuresUnlessForced) {
  ChildSpec spec = spec_named("a");
  for (int clean : {1, 2, 13, 15}) EXPECT_FALSE(is_failure(spec, signaled(clean))) << clean;
  EXPECT_TRUE(is_failure(spec, signaled(15, /*forced=*/true)));
  EXPECT_TRUE(is_failure(spec, signaled(11)));
  EXPECT_TRUE(is_failure(spec, signaled(9)));
  EXPECT_TRUE(is_failure(spec, signaled(6)));
  spec.clean_signals = {11};
  EXPECT_FALSE(is_failure(spec, signaled(11)));
  EXPECT_TRUE(is_failure(spec, signaled(15)));
}

TEST(RestartPolicy, UnknownStatusIsAFailure) {
  ExitStatus unknown;
  unknown.kind = ExitStatus::Kind::Unknown;
  unknown.code = -1;
  EXPECT_TRUE(is_failure(spec_named("a"), unknown));
}

TEST(RestartPolicy, ReadinessAndWatchdogReasonsAreFailuresWhateverTheStatus) {
  ChildSpec spec = spec_named("a");
  EXPECT_TRUE(is_failure(spec, with_reason(signaled(15), ExitStatus::Reason::ReadinessTimeout)));
  EXPECT_TRUE(is_failure(spec, with_reason(exited(0), ExitStatus::Reason::NotReady)));
  EXPECT_TRUE(is_failure(spec, with_reason(signaled(15), ExitStatus::Reason::WatchdogTimeout)));
  // A stop by the host with a clean signal is not.
  EXPECT_FALSE(is_failure(spec, with_reason(signaled(15), ExitStatus::Reason::Stopped)));
}

TEST(RestartPolicy, PreventCodesApplyToExitsOnly) {
  ChildSpec spec = spec_named("a");
  spec.prevent_restart_exit_codes = {78};
  EXPECT_TRUE(prevents_restart(spec, exited(78)));
  EXPECT_FALSE(prevents_restart(spec, exited(77)));
  EXPECT_FALSE(prevents_restart(spec, signaled(78)));
}

// --- Backoff ---------------------------------------------------------------

TEST(RestartPolicy, BackoffDoublesFromInitialUpToMaximum) {
  Backoff backoff;
  backoff.initial = 100ms;
  backoff.multiplier = 2.0;
  backoff.maximum = 1000ms;
  backoff.jitter = 0.0;
  std::vector<long long> got;
  for (std::uint64_t n = 1; n <= 6; ++n) got.push_back(backoff_delay(backoff, n, 0.5).count());
  EXPECT_EQ(got, (std::vector<long long>{100, 200, 400, 800, 1000, 1000}));
  // Far into a streak: no overflow, still the maximum.
  EXPECT_EQ(backoff_delay(backoff, 100000, 0.5), 1000ms);
  // n = 0 is taken as the first.
  EXPECT_EQ(backoff_delay(backoff, 0, 0.5), 100ms);
}

TEST(RestartPolicy, BackoffMultiplierOneIsConstant) {
  Backoff backoff;
  backoff.initial = 250ms;
  backoff.multiplier = 1.0;
  backoff.jitter = 0.0;
  for (std::uint64_t n = 1; n <= 5; ++n) EXPECT_EQ(backoff_delay(backoff, n, 0.0), 250ms);
}

TEST(RestartPolicy, BackoffTableIsIndexedAndItsLastEntryRepeats) {
  Backoff backoff;
  backoff.jitter = 0.0;
  backoff.initial = 5000ms;  // ignored with a table, as maximum is
  backoff.maximum = 1ms;
  backoff.table = {50ms, 70ms, 300ms};
  EXPECT_EQ(backoff_delay(backoff, 1, 0.9), 50ms);
  EXPECT_EQ(backoff_delay(backoff, 2, 0.9), 70ms);
  EXPECT_EQ(backoff_delay(backoff, 3, 0.9), 300ms);
  EXPECT_EQ(backoff_delay(backoff, 4, 0.9), 300ms);
  EXPECT_EQ(backoff_delay(backoff, 1000, 0.9), 300ms);
}

TEST(RestartPolicy, JitterScalesByOnePlusJitterTimesU) {
  Backoff backoff;
  backoff.initial = 1000ms;
  backoff.jitter = 0.1;
  EXPECT_EQ(backoff_delay(backoff, 1, 0.0), 900ms);   // u = -1
  EXPECT_EQ(backoff_delay(backoff, 1, 0.5), 1000ms);  // u = 0
  EXPECT_EQ(backoff_delay(backoff, 1, 0.75), 1050ms);
  EXPECT_EQ(backoff_delay(backoff, 1, 1.0), 1100ms);  // u = +1
  // Draws outside [0, 1] (a host's bad generator) are clamped.
  EXPECT_EQ(backoff_delay(backoff, 1, -3.0), 900ms);
  EXPECT_EQ(backoff_delay(backoff, 1, 7.0), 1100ms);
  EXPECT_EQ(backoff_delay(backoff, 1, std::nan("")), 900ms);
  // Jitter applies to table entries too.
  backoff.table = {200ms};
  EXPECT_EQ(backoff_delay(backoff, 3, 0.0), 180ms);
}

TEST(RestartPolicy, JitterStaysWithinItsBandForEveryDraw) {
  Backoff backoff;
  backoff.initial = 100ms;
  backoff.multiplier = 2.0;
  backoff.jitter = 0.25;
  for (std::uint64_t n = 1; n <= 5; ++n) {
    const double base = 100.0 * std::pow(2.0, static_cast<double>(n - 1));
    for (int i = 0; i <= 100; ++i) {
      const double draw = i / 100.0;
      const double got = static_cast<double>(backoff_delay(backoff, n, draw).count());
      EXPECT_GE(got, std::floor(base * 0.75)) << n << " " << draw;
      EXPECT_LE(got, std::ceil(base * 1.25)) << n << " " << draw;
    }
  }
}

TEST(RestartPolicy, FullJitterMayReachZeroButNeverBelow) {
  Backoff backoff;
  backoff.initial = 100ms;
  backoff.jitter = 1.0;
  EXPECT_EQ(backoff_delay(backoff, 1, 0.0), 0ms);
  EXPECT_EQ(backoff_delay(backoff, 1, 1.0), 200ms);
  backoff.initial = 0ms;
  EXPECT_EQ(backoff_delay(backoff, 4, 1.0), 0ms);
}

TEST(RestartPolicy, HugeDelaysAreCapped) {
  Backoff backoff;
  backoff.initial = 1000ms;
  backoff.multiplier = 10.0;
  backoff.maximum = std::chrono::milliseconds(std::numeric_limits<long long>::max() / 2);
  backoff.jitter = 1.0;
  EXPECT_EQ(backoff_delay(backoff, 1000, 1.0), kMaxDelay);
}

// 0 * pow(2, n) is NaN once pow overflows: it must stay 0, not become maximum.
TEST(RestartPolicy, ZeroInitialStaysZeroWhateverTheStreak) {
  Backoff backoff;
  backoff.initial = 0ms;
  backoff.multiplier = 2.0;
  backoff.maximum = 30000ms;
  backoff.jitter = 1.0;
  EXPECT_EQ(backoff_delay(backoff, 2, 1.0), 0ms);
  EXPECT_EQ(backoff_delay(backoff, 5000, 1.0), 0ms);
}

TEST(RestartPolicy, HugeDurationsCountAsTheBound) {
  Backoff backoff;
  backoff.initial = std::chrono::milliseconds::max();
  backoff.maximum = std::chrono::milliseconds::max();
  backoff.jitter = 0.0;
  EXPECT_EQ(backoff_delay(backoff, 1, 0.5), kMaxDelay);
  backoff.table = {std::chrono::milliseconds::max()};
  EXPECT_EQ(backoff_delay(backoff, 3, 0.5), kMaxDelay);
}

// --- Validation ------------------------------------------------------------

void expect_invalid(const ChildSpec& spec, const std::string& field) {
  auto valid = validate(spec);
  ASSERT_FALSE(valid) << field;
  EXPECT_EQ(valid.error().code, std::make_error_code(std::errc::invalid_argument)) << field;
  EXPECT_NE(valid.error().message.find(field), std::string::npos) << valid.error().message;
}

TEST(RestartPolicy, ValidationNamesTheField) {
  EXPECT_TRUE(validate(spec_named("a")));
  expect_invalid(spec_named(""), "id");
  {
    ChildSpec spec = spec_named("a");
    spec.backoff.initial = -1ms;
    expect_invalid(spec, "backoff.initial");
  }
  {
    ChildSpec spec = spec_named("a");
    spec.backoff.multiplier = 0.5;
    expect_invalid(spec, "backoff.multiplier");
    spec.backoff.multiplier = std::nan("");
    expect_invalid(spec, "backoff.multiplier");
    spec.backoff.multiplier = std::numeric_limits<double>::infinity();
    expect_invalid(spec, "backoff.multiplier");
  }
  {
    // Huge durations are "forever", not errors.
    ChildSpec spec = spec_named("a");
    spec.backoff.initial = std::chrono::milliseconds::max();
    spec.backoff.maximum = std::chrono::milliseconds::max();
    spec.give_up.period = std::chrono::milliseconds::max();
    spec.reset_after = std::chrono::milliseconds::max();
    EXPECT_TRUE(validate(spec));
  }
  {
    ChildSpec spec = spec_named("a");
    spec.backoff.initial = 500ms;
    spec.backoff.maximum = 400ms;
    expect_invalid(spec, "backoff.maximum");
    spec.backoff.table = {10ms};  // the table makes maximum irrelevant
    EXPECT_TRUE(validate(spec));
  }
  {
    ChildSpec spec = spec_named("a");
    spec.backoff.jitter = 1.5;
    expect_invalid(spec, "backoff.jitter");
    spec.backoff.jitter = -0.1;
    expect_invalid(spec, "backoff.jitter");
    spec.backoff.jitter = 1.0;
    EXPECT_TRUE(validate(spec));
  }
  {
    ChildSpec spec = spec_named("a");
    spec.backoff.table = {10ms, -5ms};
    expect_invalid(spec, "backoff.table[1]");
  }
  {
    ChildSpec spec = spec_named("a");
    spec.give_up.max_restarts = -1;
    expect_invalid(spec, "give_up.max_restarts");
  }
  {
    ChildSpec spec = spec_named("a");
    spec.give_up.period = -1ms;
    expect_invalid(spec, "give_up.period");
  }
  {
    ChildSpec spec = spec_named("a");
    spec.give_up.max_consecutive_failures = -2;
    expect_invalid(spec, "give_up.max_consecutive_failures");
  }
  {
    ChildSpec spec = spec_named("a");
    spec.reset_after = -1ms;
    expect_invalid(spec, "reset_after");
  }
}

// --- Give-up limits --------------------------------------------------------

TEST(RestartPolicy, RowLimitTripsWhenTheRowExceedsIt) {
  GiveUp limits;
  limits.max_restarts = 0;
  limits.max_consecutive_failures = 2;
  GiveUpTracker tracker(limits);
  tracker.failure();
  EXPECT_FALSE(tracker.admit_restart(t0()));
  tracker.failure();
  EXPECT_FALSE(tracker.admit_restart(t0()));
  tracker.failure();
  auto why = tracker.admit_restart(t0());
  ASSERT_TRUE(why);
  EXPECT_NE(why->find("3 failures in a row"), std::string::npos) << *why;
  EXPECT_NE(why->find("max_consecutive_failures"), std::string::npos) << *why;
  // A success starts a new row.
  tracker.success();
  tracker.failure();
  EXPECT_FALSE(tracker.admit_restart(t0()));
}

TEST(RestartPolicy, WindowCountsRestartsScheduledWithinThePeriod) {
  GiveUp limits;
  limits.max_restarts = 3;
  limits.period = 1000ms;
  GiveUpTracker tracker(limits);
  EXPECT_FALSE(tracker.admit_restart(t0()));
  EXPECT_FALSE(tracker.admit_restart(t0() + 100ms));
  EXPECT_FALSE(tracker.admit_restart(t0() + 200ms));
  // A fourth within 1 s: 4 > 3.
  auto why = tracker.admit_restart(t0() + 999ms);
  ASSERT_TRUE(why);
  EXPECT_NE(why->find("4 restarts within 1000 ms"), std::string::npos) << *why;
  // The refused one did not enter the window; at t0 + 1 s the first has left it.
  EXPECT_EQ(tracker.restarts_in_window(), 3u);
  EXPECT_FALSE(tracker.admit_restart(t0() + 1000ms));
  EXPECT_TRUE(tracker.admit_restart(t0() + 1050ms));
  EXPECT_FALSE(tracker.admit_restart(t0() + 1100ms));  // t0+100ms left exactly now
}

// milliseconds::max() overflowed once converted to the clock's nanoseconds.
TEST(RestartPolicy, HugePeriodIsForever) {
  GiveUp limits;
  limits.max_restarts = 2;
  limits.period = std::chrono::milliseconds::max();
  GiveUpTracker tracker(limits);
  EXPECT_FALSE(tracker.admit_restart(t0()));
  EXPECT_FALSE(tracker.admit_restart(t0() + 24h * 365));
  EXPECT_TRUE(tracker.admit_restart(t0() + 24h * 365 * 20));
}

TEST(RestartPolicy, ZeroLimitsAreOff) {
  GiveUp limits;
  limits.max_restarts = 0;
  limits.max_consecutive_failures = 0;
  GiveUpTracker tracker(limits);
  for (int i = 0; i < 1000; ++i) {
    tracker.failure();
    ASSERT_FALSE(tracker.admit_restart(t0()));
  }
  EXPECT_EQ(tracker.restarts_in_window(), 0u);  // nothing kept when nothing reads it
}

// --- The state machine -----------------------------------------------------

TEST(RestartPolicy, CrashLoopGivesUpAfterFiveStartsWithDoublingDelays) {
  ChildMachine machine(crash_loop_spec());
  TimePoint now = t0();
  std::vector<long long> delays;
  int starts = 0;
  for (;;) {
    machine.begin_start(now);
    ++starts;
    ASSERT_EQ(machine.state(), ChildState::Running);  // Immediate readiness
    EndDecision decision = machine.ended(exited(3), now + 10ms, half);
    EXPECT_TRUE(decision.failure);
    EXPECT_EQ(decision.row, starts);
    if (decision.outcome != Outcome::Restart) {
      EXPECT_EQ(decision.outcome, Outcome::GaveUp);
      EXPECT_NE(decision.reason.find("5 failures in a row"), std::string::npos) << decision.reason;
      break;
    }
    ASSERT_LT(starts, 10);
    EXPECT_EQ(machine.state(), ChildState::Restarting);
    ASSERT_TRUE(machine.due());
    EXPECT_EQ(*machine.due(), now + 10ms + decision.delay);
    EXPECT_EQ(machine.restart_delay(), decision.delay);
    delays.push_back(decision.delay.count());
    now = *machine.due();
  }
  EXPECT_EQ(starts, 5);
  EXPECT_EQ(delays, (std::vector<long long>{100, 200, 400, 800}));
  EXPECT_EQ(machine.state(), ChildState::GaveUp);
  EXPECT_EQ(machine.generation(), 5u);
  EXPECT_EQ(machine.restarts(), 4u);
  EXPECT_EQ(machine.consecutive_failures(), 5);
  EXPECT_FALSE(machine.due());
  ASSERT_TRUE(machine.last_exit());
  EXPECT_EQ(machine.last_exit()->code, 3);
}

// milliseconds::max() overflowed once converted: every end reset the row.
TEST(RestartPolicy, HugeResetAfterNeverResets) {
  ChildSpec spec = crash_loop_spec();
  spec.reset_after = std::chrono::milliseconds::max();
  ChildMachine machine(spec);
  TimePoint now = t0();
  for (int row = 1; row <= 3; ++row) {
    machine.begin_start(now);
    EndDecision decision = machine.ended(exited(3), now + 24h * 365, half);
    EXPECT_EQ(decision.row, row);
    now = *machine.due();
  }
}

TEST(RestartPolicy, LongRunResetsStreakAndRow) {
  ChildSpec spec = crash_loop_spec();
  spec.reset_after = 1000ms;
  ChildMachine machine(spec);
  TimePoint now = t0();
  machine.begin_start(now);
  EXPECT_EQ(machine.ended(exited(3), now, half).delay, 100ms);
  now = *machine.due();
  machine.begin_start(now);
  EndDecision second = machine.ended(exited(3), now + 999ms, half);  // just short of reset_after
  EXPECT_EQ(second.delay, 200ms);
  EXPECT_EQ(second.row, 2);
  now = *machine.due();
  machine.begin_start(now);
  EndDecision third = machine.ended(exited(3), now + 1000ms, half);  // exactly reset_after
  EXPECT_EQ(third.row, 1);
  EXPECT_EQ(third.restart_number, 1u);
  EXPECT_EQ(third.delay, 100ms);
  EXPECT_EQ(machine.restarts(), 2u);  // the counter is not reset
}

TEST(RestartPolicy, ResetAfterCountsFromReadiness) {
  ChildSpec spec = crash_loop_spec();
  spec.config.readiness.mode = Readiness::Mode::Notify;
  spec.reset_after = 1000ms;
  ChildMachine machine(spec);
  TimePoint now = t0();
  machine.begin_start(now);
  machine.ended(exited(3), now, half);
  now = *machine.due();
  machine.begin_start(now);
  EXPECT_EQ(machine.state(), ChildState::Starting);
  machine.became_ready(now + 800ms);
  EXPECT_EQ(machine.state(), ChildState::Running);
  // 1500 ms after the start but 700 ms after readiness: no reset.
  EndDecision decision = machine.ended(exited(3), now + 1500ms, half);
  EXPECT_EQ(decision.row, 2);
  EXPECT_EQ(decision.delay, 200ms);
  // An incarnation that never became ready never resets, however long.
  now = *machine.due();
  machine.begin_start(now);
  decision = machine.ended(with_reason(signaled(15), ExitStatus::Reason::ReadinessTimeout), now + 1h, half);
  EXPECT_EQ(decision.row, 3);
  EXPECT_EQ(decision.delay, 400ms);
}

TEST(RestartPolicy, OnFailureDoesNotRestartACleanEnd) {
  ChildSpec spec = spec_named("a");  // OnFailure by default
  ChildMachine machine(spec);
  machine.begin_start(t0());
  EndDecision decision = machine.ended(exited(0), t0() + 5ms, half);
  EXPECT_EQ(decision.outcome, Outcome::Exited);
  EXPECT_FALSE(decision.failure);
  EXPECT_NE(decision.reason.find("on_failure"), std::string::npos);
  EXPECT_EQ(machine.state(), ChildState::Exited);
  machine.begin_start(t0() + 1s);
  EXPECT_EQ(machine.ended(signaled(15), t0() + 2s, half).outcome, Outcome::Exited);
  machine.begin_start(t0() + 3s);
  EXPECT_EQ(machine.ended(signaled(11), t0() + 4s, half).outcome, Outcome::Restart);
}

TEST(RestartPolicy, NeverAndPreventCodesDoNotRestart) {
  ChildSpec never = spec_named("a");
  never.restart = RestartPolicy::Never;
  ChildMachine machine(never);
  machine.begin_start(t0());
  EndDecision decision = machine.ended(exited(3), t0(), half);
  EXPECT_EQ(decision.outcome, Outcome::Exited);
  EXPECT_TRUE(decision.failure);
  EXPECT_EQ(decision.row, 1);

  ChildSpec prevented = spec_named("b");
  prevented.restart = RestartPolicy::Always;
  prevented.prevent_restart_exit_codes = {78};
  ChildMachine other(prevented);
  other.begin_start(t0());
  decision = other.ended(exited(78), t0(), half);
  EXPECT_EQ(decision.outcome, Outcome::Exited);
  EXPECT_NE(decision.reason.find("78"), std::string::npos);
  EXPECT_EQ(other.state(), ChildState::Exited);
}

TEST(RestartPolicy, AlwaysRestartsCleanEndsAndTheStreakKeepsGrowing) {
  ChildSpec spec = crash_loop_spec();
  ChildMachine machine(spec);
  TimePoint now = t0();
  machine.begin_start(now);
  EXPECT_EQ(machine.ended(exited(3), now, half).delay, 100ms);
  now = *machine.due();
  machine.begin_start(now);
  EndDecision clean = machine.ended(exited(0), now, half);
  EXPECT_EQ(clean.outcome, Outcome::Restart);
  EXPECT_FALSE(clean.failure);
  EXPECT_EQ(clean.row, 0);             // the row starts again...
  EXPECT_EQ(clean.restart_number, 2u);  // ...but not the streak
  EXPECT_EQ(clean.delay, 200ms);
  now = *machine.due();
  machine.begin_start(now);
  EndDecision next = machine.ended(exited(3), now, half);
  EXPECT_EQ(next.row, 1);
  EXPECT_EQ(next.delay, 400ms);
}

TEST(RestartPolicy, StartFailuresCountAsFailures) {
  ChildMachine machine(crash_loop_spec());
  TimePoint now = t0();
  machine.begin_start(now);
  machine.ended(exited(3), now, half);
  for (int failed = 2; failed <= 4; ++failed) {
    now = *machine.due();
    machine.begin_start(now);
    EndDecision decision = machine.start_failed(now, half);
    EXPECT_TRUE(decision.failure);
    EXPECT_EQ(decision.row, failed);
    EXPECT_EQ(decision.outcome, Outcome::Restart);
  }
  now = *machine.due();
  machine.begin_start(now);
  EXPECT_EQ(machine.start_failed(now, half).outcome, Outcome::GaveUp);
  EXPECT_EQ(machine.generation(), 5u);  // every attempt is a generation
}

TEST(RestartPolicy, WindowLimitGivesUpThroughTheMachine) {
  ChildSpec spec = spec_named("a");
  spec.restart = RestartPolicy::Always;
  spec.backoff.initial = 0ms;
  spec.backoff.jitter = 0.0;
  spec.give_up.max_restarts = 2;
  spec.give_up.period = 10s;
  ChildMachine machine(spec);
  TimePoint now = t0();
  for (int i = 0; i < 2; ++i) {
    machine.begin_start(now);
    EXPECT_EQ(machine.ended(exited(0), now + 1s, half).outcome, Outcome::Restart);
    now += 1s;
  }
  machine.begin_start(now);
  EndDecision decision = machine.ended(exited(0), now + 1s, half);
  EXPECT_EQ(decision.outcome, Outcome::GaveUp);
  EXPECT_NE(decision.reason.find("3 restarts within 10000 ms"), std::string::npos) << decision.reason;
}

TEST(RestartPolicy, ManualRestartLeavesGaveUpAndStartsAFreshStreak) {
  ChildMachine machine(crash_loop_spec());
  TimePoint now = t0();
  for (int i = 0; i < 5; ++i) {
    machine.begin_start(now);
    machine.ended(exited(3), now, half);
    if (machine.due()) now = *machine.due();
  }
  ASSERT_EQ(machine.state(), ChildState::GaveUp);
  machine.manual_restart();
  machine.begin_start(now);
  EXPECT_EQ(machine.state(), ChildState::Running);
  EXPECT_EQ(machine.generation(), 6u);
  EXPECT_EQ(machine.restarts(), 4u);  // restart(id) is not the policy's
  EXPECT_EQ(machine.consecutive_failures(), 0);
  EndDecision decision = machine.ended(exited(3), now, half);
  EXPECT_EQ(decision.outcome, Outcome::Restart);
  EXPECT_EQ(decision.row, 1);
  EXPECT_EQ(decision.delay, 100ms);
}

TEST(RestartPolicy, StopCancelsAPendingRestart) {
  ChildMachine machine(crash_loop_spec());
  machine.begin_start(t0());
  machine.ended(exited(3), t0(), half);
  ASSERT_EQ(machine.state(), ChildState::Restarting);
  machine.stopped();
  EXPECT_EQ(machine.state(), ChildState::Stopped);
  EXPECT_FALSE(machine.due());
  EXPECT_FALSE(machine.restart_owed());
  machine.begin_start(t0() + 1s);
  EXPECT_EQ(machine.restarts(), 0u);  // a start after a stop is not a policy restart
}

TEST(RestartPolicy, GroupStopKeepsTheOwedRestart) {
  ChildMachine machine(crash_loop_spec());
  machine.begin_start(t0());
  machine.ended(exited(3), t0(), half);
  auto due = machine.stopped_for_group();
  ASSERT_TRUE(due);
  EXPECT_EQ(*due, t0() + 100ms);
  EXPECT_EQ(machine.state(), ChildState::Stopped);
  EXPECT_TRUE(machine.restart_owed());
  machine.waiting_for_group();
  EXPECT_EQ(machine.state(), ChildState::Restarting);
  EXPECT_FALSE(machine.due());  // the group starts it, not its own timer
  machine.begin_start(t0() + 1s);
  EXPECT_EQ(machine.restarts(), 1u);
  // A running child stopped for a group owes nothing.
  EXPECT_FALSE(machine.stopped_for_group());
  EXPECT_FALSE(machine.restart_owed());
}

TEST(RestartPolicy, ReadinessStatesOfTheMachine) {
  ChildSpec spec = spec_named("a");
  spec.config.readiness.mode = Readiness::Mode::StdoutLine;
  spec.config.readiness.line_prefix = "up";
  ChildMachine machine(spec);
  EXPECT_EQ(machine.state(), ChildState::Stopped);
  EXPECT_EQ(machine.generation(), 0u);
  machine.begin_start(t0());
  EXPECT_EQ(machine.state(), ChildState::Starting);
  machine.became_ready(t0() + 1ms);
  EXPECT_EQ(machine.state(), ChildState::Running);
  machine.became_ready(t0() + 2ms);  // a second one changes nothing
  EXPECT_EQ(machine.state(), ChildState::Running);
  machine.manual_start_failed(exited(1));
  EXPECT_EQ(machine.state(), ChildState::Exited);
  ASSERT_TRUE(machine.last_exit());
  EXPECT_EQ(machine.last_exit()->code, 1);
}

TEST(RestartPolicy, RandomIsDrawnOnlyForAScheduledRestart) {
  int draws = 0;
  const std::function<double()> counted = [&] {
    ++draws;
    return 1.0;
  };
  ChildSpec spec = crash_loop_spec();
  spec.restart = RestartPolicy::OnFailure;
  spec.backoff.jitter = 0.5;
  spec.give_up.max_consecutive_failures = 1;
  ChildMachine machine(spec);
  machine.begin_start(t0());
  EXPECT_EQ(machine.ended(exited(0), t0(), counted).outcome, Outcome::Exited);
  EXPECT_EQ(draws, 0);
  machine.begin_start(t0());
  EndDecision decision = machine.ended(exited(3), t0(), counted);
  EXPECT_EQ(draws, 1);
  EXPECT_EQ(decision.delay, 150ms);  // 100 ms * (1 + 0.5 * 1)
  machine.begin_start(t0());
  EXPECT_EQ(machine.ended(exited(3), t0(), counted).outcome, Outcome::GaveUp);
  EXPECT_EQ(draws, 1);
}

TEST(RestartPolicy, NamesOfTheEnums) {
  EXPECT_EQ(to_string(RestartPolicy::OnFailure), "on_failure");
  EXPECT_EQ(to_string(Strategy::RestForOne), "rest_for_one");
  EXPECT_EQ(to_string(ChildState::GaveUp), "gave_up");
  EXPECT_EQ(to_string(SupervisorEvent::Kind::RestartScheduled), "restart_scheduled");
}

}  // namespace
}  // namespace modkit::supervision
