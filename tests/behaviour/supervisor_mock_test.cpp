// The Supervisor on the Mock backend and a ManualClock: its policy in exact
// manual time. Every wait is bounded (kWait).
//
// Synchronisation. After ManualClock::advance() the Supervisor's thread may
// not have looked yet. fence() makes sure it has: it starts a probe child
// that ends at once and waits for its Exited event, twice. The Supervisor's
// thread handles the probe's end in a step that began after the advance
// (the step reads the clock first), and the second probe's end is handled in
// a later step, after everything the earlier one started (a due restart
// included) has been done and reported. So "nothing started after a fence"
// means nothing was due.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "collecting_sink.hpp"
#include "modkit/modkit.hpp"

#if defined(__cpp_exceptions)
#include <stdexcept>
#endif

namespace modkit {
namespace {

using namespace std::chrono_literals;
using Kind = SupervisorEvent::Kind;
using testing::CollectingSink;
constexpr std::chrono::milliseconds kWait = 10s;

// Every event, kept in order, with bounded waits.
class EventLog {
 public:
  void add(const SupervisorEvent& event) {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(event);
    changed_.notify_all();
  }
  std::vector<SupervisorEvent> all() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }
  std::vector<SupervisorEvent> of(const std::string& child, std::optional<Kind> kind = std::nullopt) const {
    std::vector<SupervisorEvent> result;
    for (const auto& event : all()) {
      if (event.child_id == child && (!kind || event.kind == *kind)) result.push_back(event);
    }
    return result;
  }
  std::size_t count(const std::string& child, Kind kind) const { return of(child, kind).size(); }
  bool wait_count(const std::string& child, Kind kind, std::size_t n, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
      std::size_t seen = 0;
      for (const auto& event : events_) seen += event.child_id == child && event.kind == kind ? 1 : 0;
      return seen >= n;
    });
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<SupervisorEvent> events_;
};

ExitStatus exited(int code) {
  ExitStatus status;
  status.kind = ExitStatus::Kind::Exited;
  status.code = code;
  return status;
}

ExitStatus signaled(int signal) {
  ExitStatus status;
  status.kind = ExitStatus::Kind::Signaled;
  status.code = signal;
  return status;
}

/// Ends by itself `after` its start, with `status`.
MockScript ends(ExitStatus status, std::chrono::milliseconds after = 0ms) {
  MockScript script;
  script.exit_after = after;
  script.exit_status = status;
  return script;
}

/// Ends `after` its start without ever being ready (when its config asks).
MockScript ends_unready(ExitStatus status, std::chrono::milliseconds after) {
  MockScript script = ends(status, after);
  script.ready_after.reset();
  return script;
}

/// Runs until stopped; ready `ready_after` its start (when its config asks).
MockScript runs(std::chrono::milliseconds ready_after = 0ms) {
  MockScript script;
  script.ready_after = ready_after;
  return script;
}

ChildSpec mock_spec(const std::string& id, RestartPolicy policy = RestartPolicy::OnFailure) {
  ChildSpec spec;
  spec.id = id;
  spec.config = OopModuleConfig(id, BackendKind::Mock);
  spec.restart = policy;
  spec.backoff.initial = 100ms;
  spec.backoff.multiplier = 2.0;
  spec.backoff.jitter = 0.0;
  return spec;
}

ChildSpec with_notify(ChildSpec spec, std::chrono::milliseconds timeout = 5000ms) {
  spec.config.readiness.mode = Readiness::Mode::Notify;
  spec.config.readiness.timeout = timeout;
  return spec;
}

struct MockWorld {
  explicit MockWorld(SupervisorOptions options = {}) {
    options.time = clock;
    auto user = std::move(options.on_event);
    options.on_event = [this, user](const SupervisorEvent& event) {
      events.add(event);
      if (user) user(event);
    };
    MockBackend::Options mock_options;
    mock_options.time = clock;
    auto backend = MockBackend::create(token, sink, mock_options);
    EXPECT_TRUE(backend) << backend.error();
    mock = backend->get();
    auto created = Supervisor::create(std::move(*backend), token, sink, std::move(options));
    EXPECT_TRUE(created) << created.error();
    supervisor = std::move(*created);
  }
  ~MockWorld() { supervisor.reset(); }

  /// Waits until the Supervisor's thread has acted on everything before (see the top).
  void fence() {
    for (int i = 0; i < 2; ++i) {
      std::string id = "fence-" + std::to_string(++fences);
      mock->script(id, {ends(exited(0))});
      auto started = supervisor->start(mock_spec(id, RestartPolicy::Never));
      ASSERT_TRUE(started) << started.error();
      ASSERT_TRUE(events.wait_count(id, Kind::Exited, 1)) << "no end of " << id;
    }
  }

  /// Runs start() on another thread (it waits for readiness, which needs the clock moved).
  std::future<Result<ChildStatus>> start_async(ChildSpec spec) {
    return std::async(std::launch::async, [this, spec]() { return supervisor->start(spec); });
  }

  CancellationToken token;
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<CollectingSink> sink = std::make_shared<CollectingSink>();
  EventLog events;
  MockBackend* mock = nullptr;  // owned by the Supervisor
  std::unique_ptr<Supervisor> supervisor;
  int fences = 0;
};

std::chrono::milliseconds between(const SupervisorEvent& earlier, const SupervisorEvent& later) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(later.instance->created_at -
                                                               earlier.instance->created_at);
}

ChildSpec crash_loop_spec() {
  ChildSpec spec = mock_spec("a", RestartPolicy::OnFailure);
  spec.give_up.max_consecutive_failures = 4;
  return spec;
}

// Advances through a crash loop of `id` whose restarts come after `delays`,
// checking that none comes a millisecond early and each comes exactly then.
void expect_restarts_after(MockWorld& world, const std::string& id, const std::vector<std::chrono::milliseconds>& delays) {
  for (std::size_t k = 0; k < delays.size(); ++k) {
    ASSERT_TRUE(world.events.wait_count(id, Kind::RestartScheduled, k + 1)) << "restart " << k + 1;
    EXPECT_EQ(world.events.of(id, Kind::RestartScheduled)[k].delay, delays[k]) << "restart " << k + 1;
    auto status = world.supervisor->status(id);
    ASSERT_TRUE(status);
    EXPECT_EQ(status->state, ChildState::Restarting);
    EXPECT_EQ(status->restart_delay, delays[k]);
    world.clock->advance(delays[k] - 1ms);
    world.fence();
    EXPECT_EQ(world.events.count(id, Kind::Started), k + 1) << "restart " << k + 1 << " came early";
    world.clock->advance(1ms);
    ASSERT_TRUE(world.events.wait_count(id, Kind::Started, k + 2)) << "restart " << k + 1 << " never came";
    auto started = world.events.of(id, Kind::Started);
    EXPECT_EQ(between(started[k], started[k + 1]), delays[k]) << "restart " << k + 1;
    EXPECT_EQ(started[k + 1].generation, k + 2);
  }
}

TEST(SupervisorMock, CrashLoopGivesUpAfterExactlyFiveStarts) {
  MockWorld world;
  world.mock->script("a", {ends(exited(3))});
  auto started = world.supervisor->start(crash_loop_spec());
  ASSERT_TRUE(started) << started.error();
  EXPECT_EQ(started->generation, 1u);
  expect_restarts_after(world, "a", {100ms, 200ms, 400ms, 800ms});
  ASSERT_TRUE(world.events.wait_count("a", Kind::GaveUp, 1));
  world.clock->advance(1h);
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 5);
  EXPECT_EQ(world.events.count("a", Kind::Started), 5u);
  EXPECT_EQ(world.events.count("a", Kind::Exited), 5u);
  EXPECT_EQ(world.events.count("a", Kind::GaveUp), 1u);
  EXPECT_EQ(world.events.count("a", Kind::RestartScheduled), 4u);
  EXPECT_NE(world.events.of("a", Kind::GaveUp)[0].message.find("5 failures in a row"), std::string::npos);
  for (const auto& exit : world.events.of("a", Kind::Exited)) EXPECT_TRUE(exit.failure);
  auto status = world.supervisor->status("a");
  ASSERT_TRUE(status);
  EXPECT_EQ(status->state, ChildState::GaveUp);
  EXPECT_EQ(status->generation, 5u);
  EXPECT_EQ(status->restarts, 4u);
  EXPECT_EQ(status->consecutive_failures, 5);
  EXPECT_FALSE(status->instance);
  ASSERT_TRUE(status->last_exit);
  EXPECT_EQ(status->last_exit->code, 3);
  EXPECT_TRUE(world.supervisor->any_gave_up());
  EXPECT_TRUE(world.mock->list_instances("a")->empty());
  // Each event is a library record too: Error for the give-up.
  EXPECT_TRUE(world.sink->wait_for([](const testing::StoredRecord& r) {
    return r.stream == LogStream::Library && r.module == "a" && r.level == LogLevel::Error &&
           r.line.find("child 'a' generation 5: gave up") == 0;
  }));
  EXPECT_TRUE(world.sink->wait_for([](const testing::StoredRecord& r) {
    return r.module == "a" && r.level == LogLevel::Info &&
           r.line == "child 'a' generation 2: restart scheduled in 200 ms (failure 2 in a row)";
  }));
}

TEST(SupervisorMock, JitteredDelaysStayInTheirBands) {
  // u = 2r - 1 for r = 0, 1, 0.25, 0.9: factors 0.9, 1.1, 0.95, 1.08.
  auto draws = std::make_shared<std::vector<double>>(std::vector<double>{0.0, 1.0, 0.25, 0.9, 0.5, 0.5});
  auto next = std::make_shared<std::atomic<std::size_t>>(0);
  SupervisorOptions options;
  options.random = [draws, next] { return (*draws)[next->fetch_add(1) % draws->size()]; };
  MockWorld world(std::move(options));
  world.mock->script("a", {ends(exited(3))});
  ChildSpec spec = crash_loop_spec();
  spec.backoff.jitter = 0.1;
  ASSERT_TRUE(world.supervisor->start(spec));
  const std::vector<std::chrono::milliseconds> expected{90ms, 220ms, 380ms, 864ms};
  expect_restarts_after(world, "a", expected);
  const double base[] = {100, 200, 400, 800};
  auto scheduled = world.events.of("a", Kind::RestartScheduled);
  for (std::size_t k = 0; k < 4; ++k) {
    EXPECT_GE(static_cast<double>(scheduled[k].delay.count()), base[k] * 0.9);
    EXPECT_LE(static_cast<double>(scheduled[k].delay.count()), base[k] * 1.1);
  }
  ASSERT_TRUE(world.events.wait_count("a", Kind::GaveUp, 1));
}

TEST(SupervisorMock, LongRunResetsTheStreakAndTheRow) {
  MockWorld world;
  // Fails at once, then runs 2 s (longer than reset_after) and fails, then fails at once.
  world.mock->script("a", {ends(exited(3)), ends(exited(3), 2000ms), ends(exited(3))});
  ChildSpec spec = crash_loop_spec();
  spec.reset_after = 1000ms;
  ASSERT_TRUE(world.supervisor->start(spec));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Started, 2));
  world.clock->advance(2000ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 2));
  auto second = world.events.of("a", Kind::RestartScheduled)[1];
  EXPECT_EQ(second.delay, 100ms) << "a run of 2 s must reset the streak";
  EXPECT_EQ(second.message, "restart scheduled in 100 ms (failure 1 in a row)");
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 3));
  auto third = world.events.of("a", Kind::RestartScheduled)[2];
  EXPECT_EQ(third.delay, 200ms) << "a run of 0 ms must not reset it";
  auto status = world.supervisor->status("a");
  ASSERT_TRUE(status);
  EXPECT_EQ(status->consecutive_failures, 2);
  EXPECT_EQ(status->restarts, 2u);
}

TEST(SupervisorMock, CleanExitUnderOnFailureIsNotRestarted) {
  MockWorld world;
  world.mock->script("a", {ends(exited(0), 50ms)});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::OnFailure)));
  world.clock->advance(50ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Exited, 1));
  EXPECT_FALSE(world.events.of("a", Kind::Exited)[0].failure);
  world.clock->advance(1h);
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 1);
  EXPECT_EQ(world.events.count("a", Kind::RestartScheduled), 0u);
  auto status = world.supervisor->status("a");
  ASSERT_TRUE(status);
  EXPECT_EQ(status->state, ChildState::Exited);
  EXPECT_EQ(status->consecutive_failures, 0);
  EXPECT_FALSE(world.supervisor->any_gave_up());
}

TEST(SupervisorMock, PreventedCodeUnderAlwaysIsNotRestarted) {
  MockWorld world;
  world.mock->script("a", {ends(exited(78))});
  ChildSpec spec = mock_spec("a", RestartPolicy::Always);
  spec.prevent_restart_exit_codes = {78};
  ASSERT_TRUE(world.supervisor->start(spec));
  ASSERT_TRUE(world.events.wait_count("a", Kind::Exited, 1));
  EXPECT_TRUE(world.events.of("a", Kind::Exited)[0].failure);
  EXPECT_NE(world.events.of("a", Kind::Exited)[0].message.find("prevent_restart_exit_codes"), std::string::npos);
  world.clock->advance(1h);
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 1);
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Exited);
}

TEST(SupervisorMock, AlwaysRestartsACleanExit) {
  MockWorld world;
  world.mock->script("a", {ends(exited(0)), runs()});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::Always)));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  EXPECT_FALSE(world.events.of("a", Kind::RestartScheduled)[0].failure);
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Ready, 2));
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Running);
}

TEST(SupervisorMock, SegfaultIsRestarted) {
  MockWorld world;
  world.mock->script("a", {ends(signaled(11), 10ms), runs()});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::OnFailure)));
  world.clock->advance(10ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  auto exit = world.events.of("a", Kind::Exited).at(0);
  EXPECT_TRUE(exit.failure);
  ASSERT_TRUE(exit.status);
  EXPECT_EQ(exit.status->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(exit.status->code, 11);
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Ready, 2));
  auto status = world.supervisor->status("a");
  EXPECT_EQ(status->generation, 2u);
  EXPECT_EQ(status->restarts, 1u);
  EXPECT_TRUE(status->instance);
}

// The Supervisor's exit events say a status in the backend's words
// (to_string), not words of their own.
TEST(SupervisorMock, ExitedEventSaysTheStatusAsTheExitRecordsDo) {
  MockWorld world;
  ExitStatus forced = signaled(9);
  forced.forced = true;
  world.mock->script("a", {ends(forced, 10ms)});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::Never)));
  world.clock->advance(10ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Exited, 1));
  auto exit = world.events.of("a", Kind::Exited).at(0);
  ASSERT_TRUE(exit.status);
  EXPECT_EQ(exit.message.rfind(to_string(*exit.status), 0), 0u) << exit.message;
  EXPECT_EQ(exit.message.rfind("killed by signal 9 (forced after the grace period), ", 0), 0u) << exit.message;
}

TEST(SupervisorMock, CleanSignalIsNotAFailure) {
  MockWorld world;
  world.mock->script("a", {ends(signaled(15), 10ms)});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::OnFailure)));
  world.clock->advance(10ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Exited, 1));
  EXPECT_FALSE(world.events.of("a", Kind::Exited)[0].failure);
  world.fence();
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Exited);
}

TEST(SupervisorMock, OwnStopIsNeitherCountedNorRestarted) {
  MockWorld world;
  world.mock->script("a", {runs()});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::Always)));
  ASSERT_TRUE(world.supervisor->stop("a"));
  auto stopped = world.events.of("a", Kind::Stopped);
  ASSERT_EQ(stopped.size(), 1u);
  ASSERT_TRUE(stopped[0].status);  // the Mock's stop: Signaled 15, reason Stopped
  EXPECT_EQ(stopped[0].status->reason, ExitStatus::Reason::Stopped);
  world.clock->advance(1h);
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 1);
  EXPECT_EQ(world.events.count("a", Kind::Exited), 0u);
  auto status = world.supervisor->status("a");
  EXPECT_EQ(status->state, ChildState::Stopped);
  EXPECT_EQ(status->consecutive_failures, 0);
  EXPECT_FALSE(status->instance);
  ASSERT_TRUE(status->last_exit);
  EXPECT_EQ(status->last_exit->code, 15);
  // stop() of a stopped child is not an error, remove() forgets it.
  EXPECT_TRUE(world.supervisor->stop("a"));
  EXPECT_TRUE(world.supervisor->remove("a"));
  EXPECT_EQ(world.supervisor->status("a").error().code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(world.supervisor->stop("a").error().code, std::make_error_code(std::errc::invalid_argument));
}

TEST(SupervisorMock, StopDuringBackoffCancelsTheRestart) {
  MockWorld world;
  world.mock->script("a", {ends(exited(3))});
  ASSERT_TRUE(world.supervisor->start(crash_loop_spec()));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  ASSERT_TRUE(world.supervisor->stop("a"));
  EXPECT_EQ(world.events.count("a", Kind::Stopped), 1u);
  world.clock->advance(200ms);  // twice the delay
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 1);
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Stopped);
  EXPECT_FALSE(world.supervisor->status("a")->restart_delay);
}

TEST(SupervisorMock, CancelDuringBackoffStopsEverythingAndRestartsNothing) {
  MockWorld world;
  world.mock->script("a", {ends(exited(3))});
  world.mock->script("b", {runs()});
  ASSERT_TRUE(world.supervisor->start(crash_loop_spec()));
  ASSERT_TRUE(world.supervisor->start(mock_spec("b", RestartPolicy::Always)));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  world.token.cancel();
  world.supervisor->wait_for_shutdown();
  // Both reported Stopped once the shutdown is done; b's end (signal 15 from
  // the Mock) is not a failure and not restarted though its policy is Always.
  EXPECT_EQ(world.events.count("a", Kind::Stopped), 1u);
  EXPECT_EQ(world.events.count("b", Kind::Stopped), 1u);
  EXPECT_EQ(world.events.count("b", Kind::Exited), 0u);
  for (const auto& status : world.supervisor->list()) {
    EXPECT_EQ(status.state, ChildState::Stopped) << status.id;
    EXPECT_FALSE(status.instance) << status.id;
  }
  auto refused = world.supervisor->start(mock_spec("c"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, std::make_error_code(std::errc::operation_canceled));
  EXPECT_EQ(world.supervisor->restart("a").error().code, std::make_error_code(std::errc::operation_canceled));
  world.clock->advance(1h);
  // No fence is possible after the shutdown: this bounded wait is the check
  // itself (a restart would come within it), not a synchronisation.
  EXPECT_FALSE(world.events.wait_count("a", Kind::Started, 2, 300ms));
  EXPECT_EQ(world.mock->starts("a"), 1);
  EXPECT_EQ(world.mock->starts("b"), 1);
}

TEST(SupervisorMock, RestartGivesANewGenerationAndLeavesTheOthersAlone) {
  MockWorld world;
  world.mock->script("a", {runs()});
  world.mock->script("b", {runs()});
  auto a = world.supervisor->start(mock_spec("a"));
  auto b = world.supervisor->start(mock_spec("b"));
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->instance && b->instance);
  const std::size_t b_events = world.events.of("b").size();
  auto restarted = world.supervisor->restart("a");
  ASSERT_TRUE(restarted) << restarted.error();
  EXPECT_EQ(restarted->generation, 2u);
  EXPECT_EQ(restarted->state, ChildState::Running);
  ASSERT_TRUE(restarted->instance);
  EXPECT_NE(restarted->instance->instance_id, a->instance->instance_id);
  EXPECT_EQ(restarted->restarts, 0u);  // restart(id) is not the policy's
  // a: Started, Ready, Stopped (generation 1), Started, Ready (generation 2).
  std::vector<std::pair<Kind, std::uint64_t>> a_events;
  for (const auto& event : world.events.of("a")) a_events.emplace_back(event.kind, event.generation);
  EXPECT_EQ(a_events, (std::vector<std::pair<Kind, std::uint64_t>>{
                          {Kind::Started, 1}, {Kind::Ready, 1}, {Kind::Stopped, 1}, {Kind::Started, 2}, {Kind::Ready, 2}}));
  world.fence();
  auto b_now = world.supervisor->status("b");
  ASSERT_TRUE(b_now && b_now->instance);
  EXPECT_EQ(b_now->generation, 1u);
  EXPECT_EQ(b_now->instance->instance_id, b->instance->instance_id);
  EXPECT_EQ(world.events.of("b").size(), b_events);
  EXPECT_EQ(world.mock->list_instances("a")->size(), 1u);
}

// The order of starts and stops, as (kind, child) pairs.
std::vector<std::string> starts_and_stops(const EventLog& log) {
  std::vector<std::string> result;
  for (const auto& event : log.all()) {
    if (event.child_id.rfind("fence-", 0) == 0) continue;
    if (event.kind == Kind::Started || event.kind == Kind::Stopped || event.kind == Kind::Exited ||
        event.kind == Kind::Ready) {
      result.push_back(std::string(to_string(event.kind)) + " " + event.child_id);
    }
  }
  return result;
}

TEST(SupervisorMock, OneForAllStopsTheOthersInReverseAndStartsAllInOrder) {
  SupervisorOptions options;
  options.strategy = Strategy::OneForAll;
  MockWorld world(std::move(options));
  world.mock->script("a", {runs()});
  world.mock->script("b", {ends(exited(3), 50ms), runs()});
  world.mock->script("c", {runs()});
  world.mock->script("d", {ends(exited(0))});  // Exited before b fails: never touched
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(world.supervisor->start(mock_spec(id)));
  ASSERT_TRUE(world.supervisor->start(mock_spec("d")));
  ASSERT_TRUE(world.events.wait_count("d", Kind::Exited, 1));
  world.clock->advance(50ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Stopped, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("c", Kind::Ready, 2));
  EXPECT_EQ(starts_and_stops(world.events),
            (std::vector<std::string>{"started a", "ready a", "started b", "ready b", "started c", "ready c",
                                      "started d", "ready d", "exited d",  //
                                      "exited b", "stopped c", "stopped a",  //
                                      "started a", "ready a", "started b", "ready b", "started c", "ready c"}));
  for (const char* id : {"a", "b", "c"}) {
    auto status = world.supervisor->status(id);
    EXPECT_EQ(status->state, ChildState::Running) << id;
    EXPECT_EQ(status->generation, 2u) << id;
    EXPECT_EQ(status->restarts, std::string(id) == "b" ? 1u : 0u) << id;
  }
  EXPECT_EQ(world.supervisor->status("d")->state, ChildState::Exited);
  EXPECT_EQ(world.mock->starts("d"), 1);
}

TEST(SupervisorMock, RestForOneTouchesOnlyTheChildrenStartedAfter) {
  SupervisorOptions options;
  options.strategy = Strategy::RestForOne;
  MockWorld world(std::move(options));
  world.mock->script("a", {runs()});
  world.mock->script("b", {ends(exited(3), 50ms), runs()});
  world.mock->script("c", {runs()});
  world.mock->script("d", {runs()});
  std::optional<InstanceHandle> a_instance;
  for (const char* id : {"a", "b", "c", "d"}) {
    auto started = world.supervisor->start(mock_spec(id));
    ASSERT_TRUE(started);
    if (std::string(id) == "a") a_instance = started->instance;
  }
  world.clock->advance(50ms);
  ASSERT_TRUE(world.events.wait_count("c", Kind::Stopped, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("d", Kind::Ready, 2));
  auto order = starts_and_stops(world.events);
  std::vector<std::string> after(order.begin() + 8, order.end());
  EXPECT_EQ(after, (std::vector<std::string>{"exited b", "stopped d", "stopped c", "started b", "ready b", "started c",
                                             "ready c", "started d", "ready d"}));
  auto a = world.supervisor->status("a");
  EXPECT_EQ(a->generation, 1u);
  EXPECT_EQ(a->instance->instance_id, a_instance->instance_id);
}

TEST(SupervisorMock, GroupSequenceWaitsForEachReadiness) {
  SupervisorOptions options;
  options.strategy = Strategy::OneForAll;
  MockWorld world(std::move(options));
  world.mock->script("a", {runs(0ms), runs(30ms)});  // its second incarnation is ready 30 ms in
  world.mock->script("b", {ends(exited(3), 50ms), runs()});
  ASSERT_TRUE(world.supervisor->start(with_notify(mock_spec("a"))));
  ASSERT_TRUE(world.supervisor->start(with_notify(mock_spec("b"))));
  world.clock->advance(50ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Stopped, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Started, 2));
  world.fence();
  EXPECT_EQ(world.events.count("b", Kind::Started), 1u) << "b started before a was ready";
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Starting);
  EXPECT_EQ(world.supervisor->status("b")->state, ChildState::Restarting);
  world.clock->advance(30ms);
  ASSERT_TRUE(world.events.wait_count("b", Kind::Ready, 2));
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Running);
  EXPECT_EQ(world.supervisor->status("b")->state, ChildState::Running);
}

TEST(SupervisorMock, GroupMemberThatFailsBeforeReadyAbortsTheSequence) {
  SupervisorOptions options;
  options.strategy = Strategy::OneForAll;
  MockWorld world(std::move(options));
  // a: its second incarnation ends before it is ready; a never restarts again.
  world.mock->script("a", {runs(0ms), ends_unready(exited(3), 10ms)});
  world.mock->script("b", {ends(exited(3), 50ms), runs()});
  ChildSpec a = with_notify(mock_spec("a", RestartPolicy::Never));
  ASSERT_TRUE(world.supervisor->start(a));
  ASSERT_TRUE(world.supervisor->start(with_notify(mock_spec("b"))));
  world.clock->advance(50ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Stopped, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Started, 2));
  world.clock->advance(10ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Exited, 1));
  ASSERT_TRUE(world.events.wait_count("b", Kind::Stopped, 1));
  world.clock->advance(1h);
  world.fence();
  EXPECT_EQ(world.mock->starts("b"), 1);
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Exited);
  EXPECT_EQ(world.supervisor->status("b")->state, ChildState::Stopped);
  EXPECT_NE(world.events.of("b", Kind::Stopped).back().message.find("abandoned"), std::string::npos);
}

TEST(SupervisorMock, StartWaitsForReadiness) {
  MockWorld world;
  world.mock->script("a", {runs(500ms)});
  auto pending = world.start_async(with_notify(mock_spec("a")));
  ASSERT_TRUE(world.events.wait_count("a", Kind::Started, 1));
  world.clock->advance(499ms);
  world.fence();
  EXPECT_EQ(pending.wait_for(0ms), std::future_status::timeout) << "start() returned before readiness";
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Starting);
  world.clock->advance(1ms);
  ASSERT_EQ(pending.wait_for(kWait), std::future_status::ready);
  auto started = pending.get();
  ASSERT_TRUE(started) << started.error();
  EXPECT_EQ(started->state, ChildState::Running);
  auto a = world.events.of("a");
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].kind, Kind::Started);
  EXPECT_EQ(a[1].kind, Kind::Ready);
}

TEST(SupervisorMock, StartFailsWhenNotReadyInTimeAndForgetsTheChild) {
  MockWorld world;
  MockScript never_ready = runs();
  never_ready.ready_after.reset();
  world.mock->script("a", {never_ready});
  auto pending = world.start_async(with_notify(mock_spec("a"), 1000ms));
  ASSERT_TRUE(world.events.wait_count("a", Kind::Started, 1));
  world.clock->advance(1000ms);
  ASSERT_EQ(pending.wait_for(kWait), std::future_status::ready);
  auto started = pending.get();
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, std::make_error_code(std::errc::timed_out)) << started.error();
  EXPECT_FALSE(world.supervisor->status("a"));
  EXPECT_TRUE(world.supervisor->list().empty());
  // The id is free again.
  world.mock->script("a", {runs()});
  EXPECT_TRUE(world.supervisor->start(mock_spec("a")));
}

TEST(SupervisorMock, StartFailsWhenTheChildEndsBeforeReady) {
  MockWorld world;
  world.mock->script("a", {ends_unready(exited(1), 10ms)});
  auto pending = world.start_async(with_notify(mock_spec("a")));
  ASSERT_TRUE(world.events.wait_count("a", Kind::Started, 1));
  world.clock->advance(10ms);
  ASSERT_EQ(pending.wait_for(kWait), std::future_status::ready);
  auto started = pending.get();
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().code, std::make_error_code(std::errc::no_such_process)) << started.error();
  EXPECT_FALSE(world.supervisor->status("a"));
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 1);
}

TEST(SupervisorMock, StartRefusesInvalidSpecsAndBackendErrors) {
  MockWorld world;
  auto expect_invalid = [&](ChildSpec spec, const std::string& field) {
    auto started = world.supervisor->start(std::move(spec));
    ASSERT_FALSE(started) << field;
    EXPECT_EQ(started.error().code, std::make_error_code(std::errc::invalid_argument)) << field;
    EXPECT_NE(started.error().message.find(field), std::string::npos) << started.error().message;
  };
  expect_invalid(mock_spec(""), "id");
  ChildSpec bad = mock_spec("a");
  bad.backoff.multiplier = 0.5;
  expect_invalid(bad, "backoff.multiplier");
  bad = mock_spec("a");
  bad.give_up.max_restarts = -1;
  expect_invalid(bad, "give_up.max_restarts");
  world.mock->script("a", {runs()});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a")));
  expect_invalid(mock_spec("a"), "already exists");
  MockScript fails;
  fails.spawn_error = make_error(std::errc::no_such_file_or_directory, "mock: no such program");
  world.mock->script("b", {fails});
  auto refused = world.supervisor->start(mock_spec("b"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, std::make_error_code(std::errc::no_such_file_or_directory));
  EXPECT_FALSE(world.supervisor->status("b"));
  EXPECT_EQ(world.supervisor->list().size(), 1u);
}

TEST(SupervisorMock, StartFailureDuringARestartCountsAsAFailure) {
  MockWorld world;
  MockScript fails;
  fails.spawn_error = make_error(std::errc::permission_denied, "mock: denied");
  world.mock->script("a", {ends(exited(3)), fails, runs()});
  ASSERT_TRUE(world.supervisor->start(crash_loop_spec()));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::StartFailed, 1));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 2));
  auto failed = world.events.of("a", Kind::StartFailed)[0];
  EXPECT_NE(failed.message.find("mock: denied"), std::string::npos) << failed.message;
  EXPECT_EQ(failed.generation, 2u);
  auto second = world.events.of("a", Kind::RestartScheduled)[1];
  EXPECT_EQ(second.delay, 200ms);
  EXPECT_EQ(world.supervisor->status("a")->consecutive_failures, 2);
  world.clock->advance(200ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::Ready, 2));
  EXPECT_EQ(world.supervisor->status("a")->generation, 3u);
  EXPECT_EQ(world.supervisor->status("a")->restarts, 2u);
  EXPECT_TRUE(world.sink->wait_for([](const testing::StoredRecord& r) {
    return r.level == LogLevel::Warn && r.line.find("child 'a' generation 2: start failed") == 0;
  }));
}

TEST(SupervisorMock, RestartRevivesAGaveUpChild) {
  MockWorld world;
  world.mock->script("a", {ends(exited(3))});
  ChildSpec spec = crash_loop_spec();
  spec.give_up.max_consecutive_failures = 1;
  ASSERT_TRUE(world.supervisor->start(spec));
  ASSERT_TRUE(world.events.wait_count("a", Kind::RestartScheduled, 1));
  world.clock->advance(100ms);
  ASSERT_TRUE(world.events.wait_count("a", Kind::GaveUp, 1));
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::GaveUp);
  world.mock->script("a", {runs()});
  auto revived = world.supervisor->restart("a");
  ASSERT_TRUE(revived) << revived.error();
  EXPECT_EQ(revived->state, ChildState::Running);
  EXPECT_EQ(revived->generation, 3u);
  EXPECT_EQ(revived->consecutive_failures, 0);
  EXPECT_TRUE(world.supervisor->any_gave_up());  // sticky
  EXPECT_EQ(world.events.count("a", Kind::Stopped), 0u);  // nothing ran to be stopped
}

TEST(SupervisorMock, UnknownIdsAreInvalid) {
  MockWorld world;
  EXPECT_EQ(world.supervisor->stop("x").error().code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(world.supervisor->restart("x").error().code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(world.supervisor->remove("x").error().code, std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(world.supervisor->status("x").error().code, std::make_error_code(std::errc::invalid_argument));
  world.supervisor->wait_for_shutdown();  // not cancelled: returns at once
}

TEST(SupervisorMock, CreateRefusesMissingParts) {
  CancellationToken token;
  auto sink = std::make_shared<CollectingSink>();
  EXPECT_EQ(Supervisor::create(nullptr, token, sink).error().code, std::make_error_code(std::errc::invalid_argument));
  auto backend = MockBackend::create(token, sink, {});
  ASSERT_TRUE(backend);
  EXPECT_EQ(Supervisor::create(std::move(*backend), token, nullptr).error().code,
            std::make_error_code(std::errc::invalid_argument));
}

TEST(SupervisorMock, ListIsInStartOrder) {
  MockWorld world;
  for (const char* id : {"zeta", "alpha", "mid"}) {
    world.mock->script(id, {runs()});
    ASSERT_TRUE(world.supervisor->start(mock_spec(id)));
  }
  std::vector<std::string> ids;
  for (const auto& status : world.supervisor->list()) ids.push_back(status.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"zeta", "alpha", "mid"}));
}

TEST(SupervisorMock, OnEventThatThrowsIsDropped) {
#if !defined(__cpp_exceptions) || defined(MODKIT_LIBRARY_NO_EXCEPTIONS)
  GTEST_SKIP() << "the library cannot catch exceptions";
#else
  SupervisorOptions options;
  options.on_event = [](const SupervisorEvent&) { throw std::runtime_error("host bug"); };
  MockWorld world(std::move(options));
  world.mock->script("a", {ends(exited(3))});
  ASSERT_TRUE(world.supervisor->start(crash_loop_spec()));
  expect_restarts_after(world, "a", {100ms, 200ms, 400ms, 800ms});
  ASSERT_TRUE(world.events.wait_count("a", Kind::GaveUp, 1));
  EXPECT_TRUE(world.sink->wait_for([](const testing::StoredRecord& r) { return r.line.find("gave up") != std::string::npos; }));
#endif
}

TEST(SupervisorMock, OnEventMayCallTheSupervisor) {
  std::atomic<Supervisor*> self{nullptr};
  std::atomic<int> stops{0};
  SupervisorOptions options;
  options.on_event = [&](const SupervisorEvent& event) {
    Supervisor* supervisor = self.load();
    if (!supervisor || event.child_id != "a") return;
    EXPECT_FALSE(supervisor->list().empty());
    EXPECT_TRUE(supervisor->status("a"));
    supervisor->wait_for_shutdown();  // not cancelled: at once
    if (event.kind == Kind::RestartScheduled) {
      // Re-entrant stop from the Supervisor's own thread.
      if (supervisor->stop("a")) ++stops;
    }
  };
  MockWorld world(std::move(options));
  self = world.supervisor.get();
  world.mock->script("a", {ends(exited(3))});
  ASSERT_TRUE(world.supervisor->start(crash_loop_spec()));
  ASSERT_TRUE(world.events.wait_count("a", Kind::Stopped, 1));
  world.clock->advance(1h);
  world.fence();  // also: the callback that called stop() has returned
  EXPECT_EQ(stops.load(), 1);
  EXPECT_EQ(world.mock->starts("a"), 1);
  EXPECT_EQ(world.supervisor->status("a")->state, ChildState::Stopped);
  // Kinds in order: the Stopped comes from inside the RestartScheduled callback.
  std::vector<Kind> kinds;
  for (const auto& event : world.events.of("a")) kinds.push_back(event.kind);
  EXPECT_EQ(kinds, (std::vector<Kind>{Kind::Started, Kind::Ready, Kind::Exited, Kind::RestartScheduled, Kind::Stopped}));
  self = nullptr;
}

TEST(SupervisorMock, DestroyedFromItsOwnCallback) {
  std::mutex mutex;
  std::condition_variable done;
  bool destroyed = false;
  std::unique_ptr<Supervisor>* holder = nullptr;
  SupervisorOptions options;
  options.on_event = [&](const SupervisorEvent& event) {
    if (event.kind != Kind::GaveUp) return;
    std::unique_ptr<Supervisor> doomed;
    {
      std::lock_guard<std::mutex> lock(mutex);
      doomed = std::move(*holder);
    }
    doomed.reset();  // on the Supervisor's own thread: stops b, returns, the thread ends by itself
    std::lock_guard<std::mutex> lock(mutex);
    destroyed = true;
    done.notify_all();
  };
  MockWorld world(std::move(options));
  {
    std::lock_guard<std::mutex> lock(mutex);
    holder = &world.supervisor;
  }
  world.mock->script("a", {ends(exited(3))});
  world.mock->script("b", {runs()});
  auto b = world.supervisor->start(mock_spec("b"));
  ASSERT_TRUE(b && b->instance);
  // Fails at once, is restarted at once (no delay), fails again: 2 > 1 in a row.
  ChildSpec spec = crash_loop_spec();
  spec.backoff.initial = 0ms;
  spec.give_up.max_consecutive_failures = 1;
  ASSERT_TRUE(world.supervisor->start(spec));
  std::unique_lock<std::mutex> lock(mutex);
  ASSERT_TRUE(done.wait_for(lock, kWait, [&] { return destroyed; }));
  lock.unlock();
  // b was stopped by the backend's destructor before the callback went on.
  const std::string b_id = b->instance->instance_id;
  EXPECT_TRUE(world.sink->wait_for(
      [&](const testing::StoredRecord& r) { return r.instance_id == b_id && r.line == "killed by signal 15"; }));
  std::lock_guard<std::mutex> guard(mutex);
  EXPECT_FALSE(world.supervisor);
}

TEST(SupervisorMock, RemoveForgetsARunningChild) {
  MockWorld world;
  world.mock->script("a", {runs()});
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::Always)));
  ASSERT_TRUE(world.supervisor->remove("a"));
  EXPECT_FALSE(world.supervisor->status("a"));
  EXPECT_EQ(world.events.count("a", Kind::Stopped), 1u);
  EXPECT_TRUE(world.mock->list_instances("a")->empty());
  world.clock->advance(1h);
  world.fence();
  EXPECT_EQ(world.mock->starts("a"), 1);
}


// A generic backend that does not stop its instances on the token and whose
// stop reports the end only through on_exit (stop_instance returns nothing):
// the Supervisor must still know which ends it caused.
class ReportOnlyBackend final : public ModuleRuntimeBackend {
 public:
  struct State {
    std::mutex mutex;
    std::vector<std::pair<InstanceHandle, InstanceEvents>> live;
    int stops = 0;
  };
  explicit ReportOnlyBackend(std::shared_ptr<State> state) : state_(std::move(state)) {}
  Result<InstanceHandle> spawn_instance(const OopModuleConfig&) override {
    return make_error(std::errc::operation_not_supported, "fake: start_instance only");
  }
  Result<InstanceHandle> start_instance(const OopModuleConfig& config, InstanceEvents events) override {
    InstanceHandle handle;
    handle.module = config.name;
    handle.instance_id = new_uuid_v7();
    handle.backend = BackendKind::Mock;
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->live.emplace_back(handle, std::move(events));
    return handle;
  }
  /// Ends `module`'s instance by itself with `status`.
  void end(const std::string& module, const ExitStatus& status) { finish(module, status); }
  Result<std::optional<ExitStatus>> stop_instance(const InstanceHandle& handle) override {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      ++state_->stops;
    }
    finish(handle.module, exited(3));  // a status that would count as a failure
    return std::optional<ExitStatus>();
  }
  Result<std::vector<InstanceHandle>> list_instances(std::string_view module) override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    std::vector<InstanceHandle> result;
    for (const auto& entry : state_->live) {
      if (entry.first.module == module) result.push_back(entry.first);
    }
    return result;
  }

 private:
  void finish(const std::string& module, const ExitStatus& status) {
    std::optional<std::pair<InstanceHandle, InstanceEvents>> found;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      for (auto it = state_->live.begin(); it != state_->live.end(); ++it) {
        if (it->first.module == module) {
          found = std::move(*it);
          state_->live.erase(it);
          break;
        }
      }
    }
    if (found && found->second.on_exit) found->second.on_exit(found->first, status);
  }
  std::shared_ptr<State> state_;
};

struct FakeWorld {
  FakeWorld() {
    SupervisorOptions options;
    options.time = clock;
    options.on_event = [this](const SupervisorEvent& event) { events.add(event); };
    auto owned = std::make_unique<ReportOnlyBackend>(state);
    backend = owned.get();
    auto created = Supervisor::create(std::move(owned), token, sink, std::move(options));
    EXPECT_TRUE(created) << created.error();
    supervisor = std::move(*created);
  }
  ~FakeWorld() { supervisor.reset(); }
  /// A probe whose end is handled after everything queued before it.
  void fence() {
    std::string id = "probe-" + std::to_string(++probes);
    ASSERT_TRUE(supervisor->start(mock_spec(id, RestartPolicy::Never)));
    backend->end(id, exited(0));
    ASSERT_TRUE(events.wait_count(id, Kind::Exited, 1));
  }

  CancellationToken token;
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<CollectingSink> sink = std::make_shared<CollectingSink>();
  std::shared_ptr<ReportOnlyBackend::State> state = std::make_shared<ReportOnlyBackend::State>();
  EventLog events;
  ReportOnlyBackend* backend = nullptr;  // owned by the Supervisor
  std::unique_ptr<Supervisor> supervisor;
  int probes = 0;
};

TEST(SupervisorMock, OwnStopReportedOnlyThroughOnExitStillDoesNotCount) {
  FakeWorld world;
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::Always)));
  ASSERT_TRUE(world.supervisor->stop("a"));
  world.fence();
  EXPECT_EQ(world.events.count("a", Kind::Exited), 0u);
  EXPECT_EQ(world.events.count("a", Kind::RestartScheduled), 0u);
  auto status = world.supervisor->status("a");
  EXPECT_EQ(status->state, ChildState::Stopped);
  EXPECT_EQ(status->consecutive_failures, 0);
  ASSERT_TRUE(status->last_exit);  // the status on_exit reported
  EXPECT_EQ(status->last_exit->code, 3);
  // The same status from an end nobody asked for is a failure.
  ASSERT_TRUE(world.supervisor->start(mock_spec("b", RestartPolicy::Always)));
  world.backend->end("b", exited(3));
  ASSERT_TRUE(world.events.wait_count("b", Kind::RestartScheduled, 1));
  EXPECT_TRUE(world.events.of("b", Kind::Exited).at(0).failure);
}

TEST(SupervisorMock, WaitForShutdownStopsWhatAGenericBackendLeftRunning) {
  FakeWorld world;
  ASSERT_TRUE(world.supervisor->start(mock_spec("a", RestartPolicy::Always)));
  ASSERT_TRUE(world.supervisor->start(mock_spec("b", RestartPolicy::Always)));
  world.token.cancel();
  world.supervisor->wait_for_shutdown();
  {
    std::lock_guard<std::mutex> lock(world.state->mutex);
    EXPECT_TRUE(world.state->live.empty());
    EXPECT_EQ(world.state->stops, 2);
  }
  for (const char* id : {"a", "b"}) {
    EXPECT_EQ(world.events.count(id, Kind::Stopped), 1u) << id;
    EXPECT_EQ(world.events.count(id, Kind::Exited), 0u) << id;
    EXPECT_EQ(world.supervisor->status(id)->state, ChildState::Stopped) << id;
  }
}

}  // namespace
}  // namespace modkit
