// The per-instance state machine, driven deterministically: a fake process
// that records every call, and a manual clock (time is passed in).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/instance_lifecycle.hpp"

namespace modkit::core {
namespace {

using namespace std::chrono_literals;

class FakeProcess final : public platform::Process {
 public:
  std::int64_t pid() const override { return 4242; }
  std::unique_ptr<platform::PipeReader> take_stdout() override { return nullptr; }
  std::unique_ptr<platform::PipeReader> take_stderr() override { return nullptr; }
  std::intptr_t exit_handle() const override { return -1; }

  Result<bool> request_stop() override {
    calls.push_back(reaped ? "graceful-after-reap" : "graceful");
    if (refuse_signals) return denied();
    return has_graceful_step;
  }
  Result<void> kill_tree() override {
    calls.push_back(reaped ? "kill-after-reap" : "kill");
    if (refuse_signals) return denied();
    if (members_die_on_kill) members = 0;
    return {};
  }
  std::intptr_t contents_handle() const override { return -1; }
  bool contents_empty() override { return members == 0; }
  std::optional<std::int64_t> process_count() override { return members; }
  int kill_output_holders() override {
    calls.push_back(reaped ? "holders-after-reap" : "holders");
    return holders;
  }
  std::optional<ExitStatus> peek_exit() override { return exit; }
  std::optional<ExitStatus> wait_for_exit(std::chrono::milliseconds) override { return exit; }
  void reap() override {
    calls.push_back("reap");
    reaped = true;
  }

  static Error denied() { return make_error(std::errc::operation_not_permitted, "cannot signal pid 4242"); }
  int count(const std::string& call) const {
    int n = 0;
    for (const auto& c : calls) n += c == call ? 1 : 0;
    return n;
  }
  bool signalled_after_reap() const {
    for (const auto& c : calls) {
      if (c.find("after-reap") != std::string::npos) return true;
    }
    return false;
  }

  std::vector<std::string> calls;
  std::optional<ExitStatus> exit;
  bool has_graceful_step = true;
  bool refuse_signals = false;
  bool reaped = false;
  int members = 0;  // processes in the child's group (containment) other than the exited child
  bool members_die_on_kill = true;
  int holders = 0;
};

struct Machine {
  FakeProcess process;
  InstanceLifecycle lifecycle{process, LifecycleTimings{100ms, 200ms}};
  Clock::time_point t0{};  // the manual clock's origin
  Clock::time_point at(std::chrono::milliseconds offset) const { return t0 + offset; }
  void exits(ExitStatus status, std::chrono::milliseconds when) {
    process.exit = status;
    lifecycle.exit_signalled(at(when));
  }
};

bool mentions(const LifecycleEffects& effects, const std::string& text) {
  for (const auto& record : effects.records) {
    if (record.text.find(text) != std::string::npos) return true;
  }
  return false;
}

ExitStatus exited(int code) { return ExitStatus{ExitStatus::Kind::Exited, code, false}; }
ExitStatus signaled(int number) { return ExitStatus{ExitStatus::Kind::Signaled, number, false}; }

TEST(InstanceLifecycle, NaturalExitIsReapedOnlyAfterBothStreamsClose) {
  Machine m;
  m.exits(exited(3), 10ms);
  EXPECT_EQ(m.lifecycle.phase(), Phase::ExitedUnreaped);
  EXPECT_EQ(m.process.count("reap"), 0);
  m.lifecycle.stream_closed(0, m.at(11ms));
  EXPECT_EQ(m.process.count("reap"), 0) << "one stream still open";
  auto effects = m.lifecycle.stream_closed(1, m.at(12ms));
  EXPECT_TRUE(effects.finished);
  EXPECT_EQ(m.lifecycle.phase(), Phase::Reaped);
  ASSERT_TRUE(m.lifecycle.status());
  EXPECT_EQ(m.lifecycle.status()->code, 3);
  EXPECT_FALSE(m.lifecycle.status()->forced);
  EXPECT_EQ(m.process.calls, (std::vector<std::string>{"reap"})) << "a natural exit signals nothing";
}

TEST(InstanceLifecycle, StreamsClosingBeforeTheExitIsSeenFinishAtTheExit) {
  Machine m;
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  EXPECT_EQ(m.lifecycle.phase(), Phase::Running);
  m.process.exit = exited(0);
  EXPECT_TRUE(m.lifecycle.exit_signalled(m.at(5ms)).finished);
}

TEST(InstanceLifecycle, SpuriousExitSignalChangesNothing) {
  Machine m;
  auto effects = m.lifecycle.exit_signalled(m.at(1ms));  // peek_exit says: still running
  EXPECT_EQ(m.lifecycle.phase(), Phase::Running);
  EXPECT_TRUE(effects.records.empty());
}

TEST(InstanceLifecycle, GracefulStopEscalatesAtTheDeadlineOnlyOnce) {
  Machine m;
  m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  EXPECT_EQ(m.lifecycle.phase(), Phase::Stopping);
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(500ms));
  m.lifecycle.tick(m.at(499ms));
  EXPECT_EQ(m.process.count("kill"), 0) << "no kill before the deadline";
  auto effects = m.lifecycle.tick(m.at(500ms));
  EXPECT_TRUE(mentions(effects, "grace period expired"));
  EXPECT_EQ(m.lifecycle.phase(), Phase::Killed);
  m.lifecycle.tick(m.at(501ms));
  m.lifecycle.begin_stop(m.at(502ms), m.at(600ms));
  EXPECT_EQ(m.process.count("kill"), 1) << "escalated once, whoever drives";
  m.exits(signaled(9), 510ms);
  m.lifecycle.stream_closed(0, m.at(511ms));
  m.lifecycle.stream_closed(1, m.at(511ms));
  ASSERT_TRUE(m.lifecycle.status());
  EXPECT_TRUE(m.lifecycle.status()->forced);
  EXPECT_FALSE(m.process.signalled_after_reap());
}

TEST(InstanceLifecycle, ConcurrentStopsShareTheEarliestDeadline) {
  Machine m;
  m.lifecycle.begin_stop(m.at(0ms), m.at(2000ms));
  m.lifecycle.begin_stop(m.at(10ms), m.at(300ms));  // the shutdown's shorter deadline
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(300ms));
  m.lifecycle.begin_stop(m.at(20ms), m.at(5000ms));
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(300ms)) << "a later, longer stop does not extend it";
  EXPECT_EQ(m.process.count("graceful"), 1);
}

TEST(InstanceLifecycle, NoGracefulStepKillsAtOnce) {
  Machine m;
  m.process.has_graceful_step = false;
  auto effects = m.lifecycle.begin_stop(m.at(0ms), m.at(1000ms));
  EXPECT_EQ(m.lifecycle.phase(), Phase::Killed);
  EXPECT_EQ(m.process.count("kill"), 1);
  EXPECT_TRUE(mentions(effects, "no graceful step"));
}

TEST(InstanceLifecycle, LeaderStaysUnreapedUntilTheLeftoversAreKilled) {
  // The exit is seen, a descendant keeps the output open: the group and the
  // holders are killed at the drain deadline, and only then is it reaped.
  Machine m;
  m.process.holders = 2;
  m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  m.exits(signaled(15), 50ms);
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(150ms));
  m.lifecycle.tick(m.at(149ms));
  EXPECT_EQ(m.process.count("kill"), 0);
  auto effects = m.lifecycle.tick(m.at(150ms));
  EXPECT_EQ(m.process.calls, (std::vector<std::string>{"graceful", "kill", "holders"}));
  EXPECT_TRUE(mentions(effects, "2 process(es) outside it"));
  EXPECT_EQ(m.process.count("reap"), 0);
  m.lifecycle.stream_closed(0, m.at(160ms));
  m.lifecycle.stream_closed(1, m.at(161ms));
  ASSERT_EQ(m.process.calls.back(), "reap") << "reaped last";
  EXPECT_FALSE(m.process.signalled_after_reap());
}

TEST(InstanceLifecycle, OutputHeldByTheUnkillableIsAbandonedAfterTwoDrainBounds) {
  Machine m;
  m.exits(exited(0), 0ms);
  m.lifecycle.tick(m.at(100ms));  // leftovers killed, the output stays open
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(200ms));
  auto effects = m.lifecycle.tick(m.at(200ms));
  EXPECT_TRUE(effects.interrupt_readers);
  EXPECT_TRUE(effects.finished);
  EXPECT_TRUE(mentions(effects, "cannot kill"));
  EXPECT_EQ(m.lifecycle.phase(), Phase::Reaped);
  // The readers return later (interrupted): nothing more happens.
  EXPECT_FALSE(m.lifecycle.stream_closed(0, m.at(201ms)).finished);
  EXPECT_FALSE(m.process.signalled_after_reap());
}

TEST(InstanceLifecycle, ALateSinkIsBlamedOnTheSinkNotOnAProcess) {
  Machine m;
  m.lifecycle.delivering(1, true);  // stderr's reader is inside the sink
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.tick(m.at(100ms));
  auto effects = m.lifecycle.tick(m.at(200ms));
  EXPECT_TRUE(mentions(effects, "sink"));
  EXPECT_FALSE(mentions(effects, "cannot kill"));
}

TEST(InstanceLifecycle, ChildThatMayNotBeSignalledIsAStopErrorNotAHang) {
  Machine m;
  m.process.refuse_signals = true;
  auto effects = m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  ASSERT_TRUE(m.lifecycle.stop_error());
  EXPECT_EQ(m.lifecycle.stop_error()->code, std::make_error_code(std::errc::operation_not_permitted));
  EXPECT_TRUE(m.lifecycle.settled());
  EXPECT_FALSE(m.lifecycle.next_deadline()) << "nothing to wait for";
  EXPECT_TRUE(mentions(effects, "cannot stop"));
  // It exits later by itself: the error is gone, the instance finishes.
  m.exits(exited(0), 900ms);
  EXPECT_FALSE(m.lifecycle.stop_error());
}

TEST(InstanceLifecycle, KilledButNotExitingTimesOutAfterTheKillBound) {
  Machine m;
  m.process.has_graceful_step = false;
  m.lifecycle.begin_stop(m.at(0ms), m.at(0ms));
  m.lifecycle.tick(m.at(199ms));
  EXPECT_FALSE(m.lifecycle.stop_error());
  m.lifecycle.tick(m.at(200ms));
  ASSERT_TRUE(m.lifecycle.stop_error());
  EXPECT_EQ(m.lifecycle.stop_error()->code, std::make_error_code(std::errc::timed_out));
  EXPECT_TRUE(m.lifecycle.settled());
  // A second stop tries again with a fresh bound.
  m.lifecycle.begin_stop(m.at(300ms), m.at(300ms));
  EXPECT_FALSE(m.lifecycle.stop_error());
  EXPECT_EQ(m.process.count("kill"), 2);
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(500ms));
}

TEST(InstanceLifecycle, ExitTakenBySomeoneElseIsUnknownAndWarned) {
  Machine m;
  m.process.exit = ExitStatus{ExitStatus::Kind::Unknown, -1, false};
  auto effects = m.lifecycle.exit_signalled(m.at(0ms));
  EXPECT_TRUE(mentions(effects, "reaped by someone else"));
  EXPECT_EQ(m.lifecycle.phase(), Phase::ExitedUnreaped);
}

TEST(InstanceLifecycle, StopAfterReapSignalsNothing) {
  Machine m;
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  m.lifecycle.begin_stop(m.at(2ms), m.at(100ms));
  m.lifecycle.tick(m.at(10s));
  EXPECT_EQ(m.process.calls, (std::vector<std::string>{"reap"}));
}

TEST(InstanceLifecycle, StopEndsTheWholeGroupBeforeTheReap) {
  // Members that closed the output and outlive the leader: a stop kills the
  // group while the leader is still unreaped (so its id is still its own).
  Machine m;
  m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  m.exits(signaled(15), 5ms);
  m.lifecycle.stream_closed(0, m.at(6ms));
  m.lifecycle.stream_closed(1, m.at(6ms));
  EXPECT_EQ(m.process.calls, (std::vector<std::string>{"graceful", "kill", "reap"}));
}

TEST(InstanceLifecycle, EveryRecordIsCountedUntilDelivered) {
  Machine m;
  auto effects = m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  EXPECT_TRUE(m.lifecycle.records_pending());
  m.lifecycle.records_delivered(effects.records.size());
  EXPECT_FALSE(m.lifecycle.records_pending());
}

// --- A contained child: the instance ends when its group is empty ---------

TEST(InstanceLifecycleContained, ExitWithMembersLeftWaitsForTheGroupToEmpty) {
  Machine m;
  m.process.members = 2;  // e.g. setsid daemons that closed the pipes
  m.exits(exited(0), 10ms);
  m.lifecycle.stream_closed(0, m.at(11ms));
  auto effects = m.lifecycle.stream_closed(1, m.at(11ms));
  EXPECT_FALSE(effects.finished) << "two processes of the instance still run";
  EXPECT_EQ(m.lifecycle.phase(), Phase::ExitedUnreaped);
  EXPECT_EQ(m.process.count("kill"), 0) << "a natural exit gives the rest drain_timeout to end by itself";
  m.process.members = 0;
  effects = m.lifecycle.contents_changed(m.at(50ms));
  EXPECT_TRUE(effects.finished);
  EXPECT_EQ(m.process.calls, (std::vector<std::string>{"reap"}));
}

TEST(InstanceLifecycleContained, MembersOutlivingTheDrainTimeoutAreKilledThenTheInstanceEnds) {
  Machine m;
  m.process.members = 3;
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(100ms));
  auto effects = m.lifecycle.tick(m.at(100ms));
  EXPECT_EQ(m.process.count("kill"), 1);
  EXPECT_TRUE(mentions(effects, "processes of the instance still running")) << effects.records.size();
  EXPECT_TRUE(mentions(effects, "3 process(es) in its group"));
  EXPECT_FALSE(effects.finished) << "finished only once the group reports empty";
  effects = m.lifecycle.contents_changed(m.at(101ms));
  EXPECT_TRUE(effects.finished);
  EXPECT_EQ(m.process.count("reap"), 1);
}

TEST(InstanceLifecycleContained, UnkillableMembersAreAbandonedAtTheSecondDrainTimeout) {
  Machine m;
  m.process.members = 1;
  m.process.members_die_on_kill = false;  // stuck in the kernel
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  m.lifecycle.tick(m.at(100ms));
  m.lifecycle.contents_changed(m.at(150ms));
  EXPECT_EQ(m.lifecycle.phase(), Phase::ExitedUnreaped);
  auto effects = m.lifecycle.tick(m.at(200ms));
  EXPECT_TRUE(effects.finished) << "bounded: 2 * drain_timeout after the exit";
  EXPECT_TRUE(mentions(effects, "1 process(es) of the instance did not end"));
  EXPECT_FALSE(m.process.signalled_after_reap());
}

TEST(InstanceLifecycleContained, StopGivesTheRestOfTheGroupTheGraceThenKillsIt) {
  Machine m;
  m.process.members = 5;
  m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  m.exits(signaled(15), 20ms);  // the child obeyed SIGTERM; its daemons are still busy with theirs
  m.lifecycle.stream_closed(0, m.at(21ms));
  m.lifecycle.stream_closed(1, m.at(21ms));
  EXPECT_EQ(m.process.count("kill"), 0) << "the rest of the group is inside the same grace";
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(500ms)) << "not the drain deadline (120 ms): the grace comes first";
  m.lifecycle.tick(m.at(120ms));
  EXPECT_EQ(m.process.count("kill"), 0) << "not killed as leftovers while the grace runs";
  auto effects = m.lifecycle.tick(m.at(500ms));
  EXPECT_TRUE(mentions(effects, "grace period expired: killed the processes the instance left running"));
  EXPECT_TRUE(effects.finished) << "the kill emptied the group";
  EXPECT_EQ(m.process.count("kill"), 2) << "the remnants, then the group once more before the reap";
  EXPECT_FALSE(m.process.signalled_after_reap());
}

TEST(InstanceLifecycleContained, RestOfTheGroupEndingInItsGraceEndsTheInstanceWithoutAKill) {
  Machine m;
  m.process.members = 2;
  m.lifecycle.begin_stop(m.at(0ms), m.at(500ms));
  m.exits(signaled(15), 20ms);
  m.lifecycle.stream_closed(0, m.at(21ms));
  m.lifecycle.stream_closed(1, m.at(21ms));
  m.process.members = 0;  // they obeyed too
  auto effects = m.lifecycle.contents_changed(m.at(40ms));
  EXPECT_TRUE(effects.finished);
  EXPECT_EQ(m.process.count("kill"), 1) << "only finish's group kill (a no-op on an empty group)";
  EXPECT_FALSE(m.lifecycle.next_deadline());
}

TEST(InstanceLifecycleContained, StopAfterTheExitAsksTheRestFirstAndKillsThemAtItsDeadline) {
  Machine m;
  m.process.members = 1;
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  auto effects = m.lifecycle.begin_stop(m.at(10ms), m.at(510ms));
  EXPECT_EQ(m.process.count("graceful"), 1) << "the daemon gets the graceful step";
  EXPECT_EQ(m.process.count("kill"), 0);
  EXPECT_TRUE(mentions(effects, "graceful stop requested for the processes the instance left running"));
  EXPECT_EQ(m.lifecycle.next_deadline(), m.at(510ms)) << "the drain deadline (100 ms) waits for the stop's grace";
  m.lifecycle.tick(m.at(100ms));
  EXPECT_EQ(m.process.count("kill"), 0);
  effects = m.lifecycle.tick(m.at(510ms));
  EXPECT_TRUE(mentions(effects, "grace period expired"));
  EXPECT_TRUE(effects.finished);
}

TEST(InstanceLifecycleContained, StopWithoutAGracefulStepKillsTheRestAtOnce) {
  Machine m;
  m.process.members = 1;
  m.process.has_graceful_step = false;
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  auto effects = m.lifecycle.begin_stop(m.at(10ms), m.at(510ms));
  EXPECT_TRUE(mentions(effects, "stopping: killed the processes the instance left running"));
  EXPECT_TRUE(effects.finished);
}

TEST(InstanceLifecycleContained, KillAtTheDeadlineEndsTheWholeGroupWithTheChild) {
  Machine m;
  m.process.members = 3;
  m.lifecycle.begin_stop(m.at(0ms), m.at(100ms));
  m.lifecycle.tick(m.at(100ms));  // the child ignored SIGTERM: the group is killed, members too
  EXPECT_EQ(m.process.count("kill"), 1);
  m.exits(signaled(9), 110ms);
  m.lifecycle.stream_closed(0, m.at(111ms));
  auto effects = m.lifecycle.stream_closed(1, m.at(111ms));
  EXPECT_TRUE(effects.finished);
  EXPECT_EQ(m.process.count("kill"), 2) << "no separate kill of the rest: it went with the child";
}

TEST(InstanceLifecycleContained, EmptiedGroupWhoseNoticeWasLostIsFoundAtTheNextTick) {
  Machine m;
  m.process.members = 1;
  m.exits(exited(0), 0ms);
  m.lifecycle.stream_closed(0, m.at(1ms));
  m.lifecycle.stream_closed(1, m.at(1ms));
  m.process.members = 0;  // emptied, but no contents_changed arrives
  auto effects = m.lifecycle.tick(m.at(100ms));
  EXPECT_TRUE(effects.finished);
  EXPECT_EQ(m.process.count("kill"), 0) << "nothing was left to kill";
  EXPECT_FALSE(mentions(effects, "still running"));
}

}  // namespace
}  // namespace modkit::core
