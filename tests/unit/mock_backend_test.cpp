// MockBackend: scripted instances on a ManualClock (and once on the steady
// clock). Every wait is bounded: the Mock's thread may not have acted yet when
// ManualClock::advance() returns, so the tests wait for what it reports.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "modkit/modkit.hpp"
#include "modkit/ostream.hpp"

#if defined(__cpp_exceptions)
#include <stdexcept>
#endif

namespace modkit {
namespace {

using namespace std::chrono_literals;
constexpr std::chrono::milliseconds kWait = 5s;  // the bound of every wait for the Mock's thread

// Everything one Mock reports, sink records and events alike, in one order.
struct Entry {
  enum class Kind { Record, Ready, Exit };
  Kind kind = Kind::Record;
  std::string module;
  std::string instance_id;
  LogStream stream = LogStream::Library;
  LogLevel level = LogLevel::Info;
  std::string text;
  ExitStatus status;
  std::thread::id thread;
};

class Journal final : public LogSink {
 public:
  /// Runs before each record is kept (set before the backend is made).
  std::function<void(const LogRecord&)> on_write;
  /// Run after an event is kept (set before the instance is started).
  std::function<void(const InstanceHandle&)> after_ready;
  std::function<void(const InstanceHandle&, const ExitStatus&)> after_exit;

  void write(const LogRecord& record) override {
    Entry entry;
    entry.kind = Entry::Kind::Record;
    entry.module = std::string(record.module);
    entry.instance_id = std::string(record.instance_id);
    entry.stream = record.stream;
    entry.level = record.level;
    entry.text = std::string(record.line);
    add(std::move(entry));
    if (on_write) on_write(record);
  }

  InstanceEvents events() {
    InstanceEvents events;
    events.on_ready = [this](const InstanceHandle& handle) {
      Entry entry;
      entry.kind = Entry::Kind::Ready;
      entry.module = handle.module;
      entry.instance_id = handle.instance_id;
      add(std::move(entry));
      if (after_ready) after_ready(handle);
    };
    events.on_exit = [this](const InstanceHandle& handle, const ExitStatus& status) {
      Entry entry;
      entry.kind = Entry::Kind::Exit;
      entry.module = handle.module;
      entry.instance_id = handle.instance_id;
      entry.status = status;
      add(std::move(entry));
      if (after_exit) after_exit(handle, status);
    };
    return events;
  }

  std::vector<Entry> entries() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_;
  }

  /// What one instance reported, in order: "out:<text>", "err:<text>",
  /// "lib:<text>", "ready", "exit".
  std::vector<std::string> sequence(const std::string& id) const {
    std::vector<std::string> result;
    for (const auto& entry : entries()) {
      if (entry.instance_id != id) continue;
      if (entry.kind == Entry::Kind::Ready) {
        result.push_back("ready");
      } else if (entry.kind == Entry::Kind::Exit) {
        result.push_back("exit");
      } else {
        const char* prefix = entry.stream == LogStream::Stdout ? "out:" : entry.stream == LogStream::Stderr ? "err:" : "lib:";
        result.push_back(prefix + entry.text);
      }
    }
    return result;
  }

  int count(Entry::Kind kind, const std::string& id) const {
    int n = 0;
    for (const auto& entry : entries()) n += entry.kind == kind && entry.instance_id == id;
    return n;
  }
  bool has_ready(const std::string& id) const { return count(Entry::Kind::Ready, id) > 0; }
  bool has_exit(const std::string& id) const { return count(Entry::Kind::Exit, id) > 0; }
  std::optional<ExitStatus> exit_of(const std::string& id) const {
    for (const auto& entry : entries()) {
      if (entry.kind == Entry::Kind::Exit && entry.instance_id == id) return entry.status;
    }
    return std::nullopt;
  }

  bool wait_for(const std::function<bool(const Entry&)>& match, std::chrono::milliseconds timeout = kWait) const {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
      for (const auto& entry : entries_) {
        if (match(entry)) return true;
      }
      return false;
    });
  }
  bool wait_line(const std::string& id, const std::string& text) const {
    return wait_for([&](const Entry& e) { return e.kind == Entry::Kind::Record && e.instance_id == id && e.text == text; });
  }
  bool wait_ready(const std::string& id) const {
    return wait_for([&](const Entry& e) { return e.kind == Entry::Kind::Ready && e.instance_id == id; });
  }
  std::optional<ExitStatus> wait_exit(const std::string& id) const {
    if (!wait_for([&](const Entry& e) { return e.kind == Entry::Kind::Exit && e.instance_id == id; })) {
      return std::nullopt;
    }
    return exit_of(id);
  }

 private:
  void add(Entry entry) {
    entry.thread = std::this_thread::get_id();
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_back(std::move(entry));
    changed_.notify_all();
  }
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::vector<Entry> entries_;
};

// A backend on a manual clock, reporting to a Journal.
struct Fixture {
  explicit Fixture(std::shared_ptr<TimeSource> time = nullptr, bool use_manual_clock = true) {
    MockBackend::Options options;
    if (time) {
      options.time = std::move(time);
    } else if (use_manual_clock) {
      options.time = clock;
    }
    auto created = MockBackend::create(token, journal, options);
    if (created) backend = std::move(*created);
  }
  CancellationToken token;
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<Journal> journal = std::make_shared<Journal>();  // outlives the backend
  std::unique_ptr<MockBackend> backend;
};

OopModuleConfig immediate(const std::string& name) { return OopModuleConfig(name, BackendKind::Mock); }

OopModuleConfig notify(const std::string& name, std::chrono::milliseconds timeout) {
  OopModuleConfig config(name, BackendKind::Mock);
  config.readiness.mode = Readiness::Mode::Notify;
  config.readiness.timeout = timeout;
  return config;
}

MockScript::Line line(std::chrono::milliseconds at, LogStream stream, std::string text) {
  MockScript::Line result;
  result.at = at;
  result.stream = stream;
  result.text = std::move(text);
  return result;
}

ExitStatus exited(int code) {
  ExitStatus status;
  status.kind = ExitStatus::Kind::Exited;
  status.code = code;
  return status;
}

// spawn_instance on a thread of its own, so that the test can move the clock.
class AsyncSpawn {
 public:
  AsyncSpawn(MockBackend& backend, OopModuleConfig config, CancellationToken token) : token_(std::move(token)) {
    thread_ = std::thread([this, &backend, config = std::move(config)] {
      auto result = backend.spawn_instance(config);
      std::lock_guard<std::mutex> lock(mutex_);
      result_.emplace(std::move(result));
      changed_.notify_all();
    });
  }
  ~AsyncSpawn() {
    // A spawn still waiting (a failed test) is ended through the token, which
    // the Mock must honour: the join below is then bounded too.
    if (!wait(0ms)) token_.cancel();
    thread_.join();
  }
  AsyncSpawn(const AsyncSpawn&) = delete;
  AsyncSpawn& operator=(const AsyncSpawn&) = delete;

  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return result_.has_value(); });
  }
  Result<InstanceHandle> result() {
    std::lock_guard<std::mutex> lock(mutex_);
    return *result_;
  }

 private:
  CancellationToken token_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<Result<InstanceHandle>> result_;
  std::thread thread_;
};

// ---------------------------------------------------------------------------

TEST(MockBackend, CreateRefusesANullSink) {
  CancellationToken token;
  auto created = MockBackend::create(token, nullptr, MockBackend::Options{});
  ASSERT_FALSE(created);
  EXPECT_EQ(created.error().code, std::errc::invalid_argument);
}

TEST(MockBackend, InvalidConfigIsRefusedAndNotCounted) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  auto nameless = f.backend->start_instance(OopModuleConfig("", BackendKind::Mock), f.journal->events());
  ASSERT_FALSE(nameless);
  EXPECT_EQ(nameless.error().code, std::errc::invalid_argument);
  auto no_timeout = f.backend->start_instance(notify("m", 0ms), f.journal->events());
  ASSERT_FALSE(no_timeout);
  EXPECT_EQ(no_timeout.error().code, std::errc::invalid_argument);
  // LocalProcessBackend's bound: at most a day (a longer one overflowed).
  auto huge_timeout =
      f.backend->start_instance(notify("m", std::chrono::milliseconds::max()), f.journal->events());
  ASSERT_FALSE(huge_timeout);
  EXPECT_EQ(huge_timeout.error().code, std::errc::invalid_argument);
  EXPECT_FALSE(f.backend->start_instance(notify("m", std::chrono::hours(24) + 1ms), f.journal->events()));
  EXPECT_EQ(f.backend->starts("m"), 0);
  auto listed = f.backend->list_instances("m");
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->empty());
}

TEST(MockBackend, UnscriptedModuleIsReadyAtOnceAndRunsUntilStopped) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  auto before = f.clock->now();
  auto handle = f.backend->start_instance(immediate("plain"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_EQ(handle->module, "plain");
  EXPECT_EQ(handle->backend, BackendKind::Mock);
  EXPECT_FALSE(handle->pid.has_value());
  EXPECT_EQ(handle->created_at, before);
  EXPECT_EQ(handle->instance_id.size(), 36u);
  EXPECT_EQ(handle->instance_id[14], '7');  // UUID version 7
  EXPECT_TRUE(f.journal->wait_ready(handle->instance_id));
  EXPECT_EQ(f.backend->starts("plain"), 1);

  f.clock->advance(24h);
  auto listed = f.backend->list_instances("plain");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].instance_id, handle->instance_id);
  EXPECT_FALSE(f.journal->has_exit(handle->instance_id));
}

TEST(MockBackend, ScriptedLinesReachTheSinkAtTheirTime) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript script;
  // Out of order on purpose: lines are written by their time.
  script.lines = {line(200ms, LogStream::Stdout, "third"), line(0ms, LogStream::Stdout, "first"),
                  line(100ms, LogStream::Stderr, "2024-01-01 ERROR second")};
  f.backend->script("talker", {script});
  auto handle = f.backend->start_instance(immediate("talker"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  const std::string& id = handle->instance_id;

  ASSERT_TRUE(f.journal->wait_line(id, "first"));
  f.clock->advance(99ms);
  // The listing moves the instance to the clock's time before it answers.
  ASSERT_TRUE(f.backend->list_instances("talker"));
  EXPECT_EQ(f.journal->sequence(id), (std::vector<std::string>{"ready", "out:first"}));
  f.clock->advance(1ms);
  ASSERT_TRUE(f.journal->wait_line(id, "2024-01-01 ERROR second"));
  EXPECT_EQ(f.journal->sequence(id), (std::vector<std::string>{"ready", "out:first", "err:2024-01-01 ERROR second"}));
  f.clock->advance(100ms);
  ASSERT_TRUE(f.journal->wait_line(id, "third"));

  for (const auto& entry : f.journal->entries()) {
    if (entry.kind != Entry::Kind::Record) continue;
    EXPECT_EQ(entry.module, "talker");
    EXPECT_EQ(entry.instance_id, id);
    if (entry.text == "2024-01-01 ERROR second") {
      EXPECT_EQ(entry.stream, LogStream::Stderr);
      EXPECT_EQ(entry.level, LogLevel::Error);
    } else {
      EXPECT_EQ(entry.stream, LogStream::Stdout);
      EXPECT_EQ(entry.level, LogLevel::Info);
    }
  }
  EXPECT_EQ(f.journal->sequence(id),
            (std::vector<std::string>{"ready", "out:first", "err:2024-01-01 ERROR second", "out:third"}));
}

TEST(MockBackend, ReadyAtReadyAfterAndNotBefore) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript script;
  script.ready_after = 300ms;
  // A marker just before readiness: once it is written, the Mock has handled 299 ms.
  script.lines = {line(0ms, LogStream::Stdout, "starting"), line(299ms, LogStream::Stdout, "almost")};
  f.backend->script("slow", {script});
  auto handle = f.backend->start_instance(notify("slow", 1000ms), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  const std::string& id = handle->instance_id;

  ASSERT_TRUE(f.journal->wait_line(id, "starting"));
  EXPECT_FALSE(f.journal->has_ready(id));
  f.clock->advance(299ms);
  ASSERT_TRUE(f.journal->wait_line(id, "almost"));
  EXPECT_FALSE(f.journal->has_ready(id));
  f.clock->advance(1ms);
  EXPECT_TRUE(f.journal->wait_ready(id));
  EXPECT_EQ(f.journal->count(Entry::Kind::Ready, id), 1);
  EXPECT_EQ(f.journal->sequence(id), (std::vector<std::string>{"out:starting", "out:almost", "ready"}));
  // Ready instances run on.
  f.clock->advance(10s);
  auto listed = f.backend->list_instances("slow");
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), 1u);
  EXPECT_FALSE(f.journal->has_exit(id));
}

TEST(MockBackend, ReadinessTimeoutEndsTheInstance) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript late;
  late.ready_after = 2000ms;  // after the timeout
  MockScript never;
  never.ready_after = std::nullopt;
  f.backend->script("late", {late});
  f.backend->script("never", {never});
  auto a = f.backend->start_instance(notify("late", 1000ms), f.journal->events());
  auto b = f.backend->start_instance(notify("never", 1000ms), f.journal->events());
  ASSERT_TRUE(a && b);

  f.clock->advance(999ms);
  auto listed = f.backend->list_instances("late");
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), 1u);
  EXPECT_FALSE(f.journal->has_exit(a->instance_id));
  f.clock->advance(1ms);
  for (const auto* handle : {&*a, &*b}) {
    auto status = f.journal->wait_exit(handle->instance_id);
    ASSERT_TRUE(status) << handle->module;
    EXPECT_EQ(status->kind, ExitStatus::Kind::Signaled);
    EXPECT_EQ(status->code, 15);
    EXPECT_FALSE(status->forced);
    EXPECT_EQ(status->reason, ExitStatus::Reason::ReadinessTimeout);
    EXPECT_EQ(f.journal->sequence(handle->instance_id), (std::vector<std::string>{"lib:killed by signal 15", "exit"}));
  }
  // Not ready later either, and no longer listed.
  f.clock->advance(5s);
  EXPECT_FALSE(f.journal->has_ready(a->instance_id));
  listed = f.backend->list_instances("late");
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->empty());
}

TEST(MockBackend, ExitAfterEndsWithTheScriptedStatus) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript script;
  script.exit_after = 500ms;
  script.exit_status = exited(3);
  script.lines = {line(500ms, LogStream::Stdout, "last words"), line(501ms, LogStream::Stdout, "never written")};
  f.backend->script("crasher", {script});
  auto handle = f.backend->start_instance(immediate("crasher"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  const std::string& id = handle->instance_id;

  f.clock->advance(499ms);
  auto listed = f.backend->list_instances("crasher");
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), 1u);
  f.clock->advance(10s);  // one step far past the end: events still come in their order
  auto status = f.journal->wait_exit(id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->kind, ExitStatus::Kind::Exited);
  EXPECT_EQ(status->code, 3);
  EXPECT_FALSE(status->forced);
  EXPECT_EQ(status->reason, ExitStatus::Reason::Exited);
  EXPECT_EQ(f.journal->sequence(id),
            (std::vector<std::string>{"ready", "out:last words", "lib:exited with code 3", "exit"}));
  for (const auto& entry : f.journal->entries()) {
    if (entry.kind == Entry::Kind::Record && entry.stream == LogStream::Library && entry.instance_id == id) {
      EXPECT_EQ(entry.module, "crasher");
      EXPECT_EQ(entry.level, LogLevel::Warn);
    }
  }
  listed = f.backend->list_instances("crasher");
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->empty());
  // A finished instance is not an error to stop: the result is empty.
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  EXPECT_FALSE(stopped->has_value());
  EXPECT_EQ(f.journal->count(Entry::Kind::Exit, id), 1);
}

// A script time of milliseconds::max() ("never") overflowed in nanoseconds.
TEST(MockBackend, HugeScriptTimesNeverCome) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript script;
  script.exit_after = std::chrono::milliseconds::max();
  script.exit_status = exited(3);
  script.lines = {line(std::chrono::milliseconds::max(), LogStream::Stdout, "never")};
  f.backend->script("m", {script});
  auto handle = f.backend->start_instance(notify("m", std::chrono::hours(24)), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  f.clock->advance(std::chrono::hours(24 * 365));
  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
}

TEST(MockBackend, ExitBeforeReadinessIsNotReady) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript early;
  early.ready_after = 1000ms;
  early.exit_after = 200ms;
  early.exit_status = exited(0);
  MockScript tie;  // ready and exit at once: readiness first
  tie.ready_after = 200ms;
  tie.exit_after = 200ms;
  tie.exit_status = exited(0);
  MockScript watchdog;  // a scripted reason other than Exited is kept
  watchdog.exit_after = 200ms;
  watchdog.exit_status.kind = ExitStatus::Kind::Signaled;
  watchdog.exit_status.code = 9;
  watchdog.exit_status.forced = true;
  watchdog.exit_status.reason = ExitStatus::Reason::WatchdogTimeout;
  f.backend->script("early", {early});
  f.backend->script("tie", {tie});
  f.backend->script("watchdog", {watchdog});
  auto a = f.backend->start_instance(notify("early", 5000ms), f.journal->events());
  auto b = f.backend->start_instance(notify("tie", 5000ms), f.journal->events());
  auto c = f.backend->start_instance(notify("watchdog", 5000ms), f.journal->events());
  ASSERT_TRUE(a && b && c);
  f.clock->advance(200ms);

  auto not_ready = f.journal->wait_exit(a->instance_id);
  ASSERT_TRUE(not_ready);
  EXPECT_EQ(not_ready->kind, ExitStatus::Kind::Exited);
  EXPECT_EQ(not_ready->code, 0);
  EXPECT_EQ(not_ready->reason, ExitStatus::Reason::NotReady);
  EXPECT_FALSE(f.journal->has_ready(a->instance_id));

  auto ready_then_exit = f.journal->wait_exit(b->instance_id);
  ASSERT_TRUE(ready_then_exit);
  EXPECT_EQ(ready_then_exit->reason, ExitStatus::Reason::Exited);
  EXPECT_EQ(f.journal->sequence(b->instance_id),
            (std::vector<std::string>{"ready", "lib:exited with code 0", "exit"}));

  auto killed = f.journal->wait_exit(c->instance_id);
  ASSERT_TRUE(killed);
  EXPECT_EQ(killed->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(killed->code, 9);
  EXPECT_TRUE(killed->forced);
  EXPECT_EQ(killed->reason, ExitStatus::Reason::WatchdogTimeout);
}

TEST(MockBackend, NthStartTakesTheNthScriptAndTheLastRepeats) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript first;
  first.exit_after = 10ms;
  first.exit_status = exited(1);
  MockScript second = first;
  second.exit_status = exited(2);
  f.backend->script("seq", {first, second});
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    auto handle = f.backend->start_instance(immediate("seq"), f.journal->events());
    ASSERT_TRUE(handle) << handle.error();
    ids.push_back(handle->instance_id);
  }
  EXPECT_EQ(f.backend->starts("seq"), 4);
  EXPECT_EQ(f.backend->starts("other"), 0);
  f.clock->advance(10ms);
  std::vector<int> codes;
  for (const auto& id : ids) {
    auto status = f.journal->wait_exit(id);
    ASSERT_TRUE(status);
    codes.push_back(status->code);
  }
  EXPECT_EQ(codes, (std::vector<int>{1, 2, 2, 2}));

  // Scripting again: the next start takes the new first script.
  MockScript third = first;
  third.exit_status = exited(3);
  f.backend->script("seq", {third, second});
  auto handle = f.backend->start_instance(immediate("seq"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_EQ(f.backend->starts("seq"), 5);
  f.clock->advance(10ms);
  auto status = f.journal->wait_exit(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->code, 3);
}

TEST(MockBackend, SpawnErrorStartsNothingButCounts) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript broken;
  broken.spawn_error = make_error(std::errc::no_such_file_or_directory, "no binary");
  MockScript works;
  f.backend->script("flaky", {broken, works});

  auto failed = f.backend->start_instance(immediate("flaky"), f.journal->events());
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, std::errc::no_such_file_or_directory);
  EXPECT_EQ(failed.error().message, "no binary");
  EXPECT_EQ(f.backend->starts("flaky"), 1);
  auto listed = f.backend->list_instances("flaky");
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->empty());

  auto spawned = f.backend->spawn_instance(immediate("flaky"));  // the second script: runs
  ASSERT_TRUE(spawned) << spawned.error();
  EXPECT_EQ(f.backend->starts("flaky"), 2);
  listed = f.backend->list_instances("flaky");
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), 1u);
  // Nothing was reported for the failed start: only the running one's records.
  for (const auto& entry : f.journal->entries()) EXPECT_EQ(entry.instance_id, spawned->instance_id);

  // spawn_instance fails the same way.
  f.backend->script("broken", {broken});
  auto refused = f.backend->spawn_instance(immediate("broken"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, std::errc::no_such_file_or_directory);
  EXPECT_EQ(f.backend->starts("broken"), 1);
}

TEST(MockBackend, StopEndsAtOnceAndDeliversOnExitFirst) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  auto handle = f.backend->start_instance(immediate("svc"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  const std::string& id = handle->instance_id;
  ASSERT_TRUE(f.journal->wait_ready(id));

  auto stopped = f.backend->stop_instance(*handle);  // no clock movement needed
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  const ExitStatus& status = **stopped;
  EXPECT_EQ(status.kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ(status.code, 15);
  EXPECT_FALSE(status.forced);
  EXPECT_EQ(status.reason, ExitStatus::Reason::Stopped);
  // Delivered before stop_instance returned: no wait here.
  auto reported = f.journal->exit_of(id);
  ASSERT_TRUE(reported);
  EXPECT_EQ(reported->code, 15);
  EXPECT_EQ(reported->reason, ExitStatus::Reason::Stopped);
  EXPECT_EQ(f.journal->sequence(id), (std::vector<std::string>{"ready", "lib:killed by signal 15", "exit"}));

  auto again = f.backend->stop_instance(*handle);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->has_value());
  InstanceHandle unknown = *handle;
  unknown.instance_id = new_uuid_v7();
  auto none = f.backend->stop_instance(unknown);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(f.journal->count(Entry::Kind::Exit, id), 1);
}

TEST(MockBackend, StopOfAModuleIgnoringTheGracefulStepIsForced) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript stubborn;
  stubborn.ignores_graceful_stop = true;
  f.backend->script("stubborn", {stubborn});
  auto handle = f.backend->start_instance(immediate("stubborn"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();

  auto stopped = f.backend->stop_instance(*handle);
  ASSERT_TRUE(stopped) << stopped.error();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->kind, ExitStatus::Kind::Signaled);
  EXPECT_EQ((*stopped)->code, 9);
  EXPECT_TRUE((*stopped)->forced);
  EXPECT_EQ((*stopped)->reason, ExitStatus::Reason::Stopped);
  auto reported = f.journal->exit_of(handle->instance_id);
  ASSERT_TRUE(reported);
  EXPECT_EQ(reported->code, 9);
  EXPECT_TRUE(reported->forced);
  auto sequence = f.journal->sequence(handle->instance_id);
  ASSERT_GE(sequence.size(), 2u);
  EXPECT_EQ(sequence[sequence.size() - 2].rfind("lib:killed by signal 9", 0), 0u) << sequence[sequence.size() - 2];
  EXPECT_EQ(sequence.back(), "exit");
}

TEST(MockBackend, ListInstancesShowsLiveOnesSortedById) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  std::vector<InstanceHandle> started;
  for (int i = 0; i < 3; ++i) {
    auto handle = f.backend->start_instance(immediate("many"), f.journal->events());
    ASSERT_TRUE(handle) << handle.error();
    started.push_back(*handle);
  }
  auto other = f.backend->start_instance(immediate("other"), f.journal->events());
  ASSERT_TRUE(other);

  auto listed = f.backend->list_instances("many");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 3u);
  for (std::size_t i = 0; i + 1 < listed->size(); ++i) {
    EXPECT_LT((*listed)[i].instance_id, (*listed)[i + 1].instance_id);
  }
  for (const auto& handle : started) {
    bool found = false;
    for (const auto& item : *listed) found = found || item.instance_id == handle.instance_id;
    EXPECT_TRUE(found) << handle.instance_id;
  }
  for (const auto& item : *listed) {
    EXPECT_EQ(item.module, "many");
    EXPECT_EQ(item.backend, BackendKind::Mock);
  }

  ASSERT_TRUE(f.backend->stop_instance(started[1]));
  listed = f.backend->list_instances("many");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 2u);
  for (const auto& item : *listed) EXPECT_NE(item.instance_id, started[1].instance_id);
  auto none = f.backend->list_instances("nobody");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(MockBackend, SpawnInstanceWaitsUntilAnotherThreadMakesItReady) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript script;
  script.ready_after = 1000ms;
  script.lines = {line(0ms, LogStream::Stdout, "booting")};
  f.backend->script("waited", {script});
  AsyncSpawn spawn(*f.backend, notify("waited", 5000ms), f.token);

  // Moves the clock only once the instance has started (its first line is out).
  ASSERT_TRUE(f.journal->wait_for([](const Entry& e) { return e.text == "booting"; }));
  f.clock->advance(999ms);
  EXPECT_FALSE(spawn.wait(50ms));  // not ready yet (a late return would show below)
  f.clock->advance(1ms);
  ASSERT_TRUE(spawn.wait(kWait));
  auto result = spawn.result();
  ASSERT_TRUE(result) << result.error();
  EXPECT_EQ(result->module, "waited");
  EXPECT_LE(f.clock->now() - result->created_at, std::chrono::steady_clock::duration(1000ms));
  auto listed = f.backend->list_instances("waited");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].instance_id, result->instance_id);

  // Immediate readiness: spawn_instance returns without any clock movement.
  auto at_once = f.backend->spawn_instance(immediate("quick"));
  ASSERT_TRUE(at_once) << at_once.error();
}

TEST(MockBackend, SpawnInstanceReportsWhyItWasNotReady) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript never;
  never.ready_after = std::nullopt;
  never.lines = {line(0ms, LogStream::Stdout, "up")};
  MockScript dies;
  dies.ready_after = 1000ms;
  dies.exit_after = 100ms;
  dies.exit_status = exited(1);
  dies.lines = {line(0ms, LogStream::Stdout, "up")};
  f.backend->script("never", {never});
  f.backend->script("dies", {dies});
  auto started = [&](const std::string& module) {
    return f.journal->wait_for([&](const Entry& e) { return e.module == module && e.text == "up"; });
  };

  {
    AsyncSpawn spawn(*f.backend, notify("never", 500ms), f.token);
    ASSERT_TRUE(started("never"));
    f.clock->advance(500ms);
    ASSERT_TRUE(spawn.wait(kWait));
    auto result = spawn.result();
    ASSERT_FALSE(result);
    EXPECT_EQ(result.error().code, std::errc::timed_out);
  }
  {
    AsyncSpawn spawn(*f.backend, notify("dies", 5000ms), f.token);
    ASSERT_TRUE(started("dies"));
    f.clock->advance(100ms);
    ASSERT_TRUE(spawn.wait(kWait));
    auto result = spawn.result();
    ASSERT_FALSE(result);
    EXPECT_EQ(result.error().code, std::errc::no_such_process);
  }
  {
    // Waiting on a manual clock that no one moves: the token ends the wait.
    MockScript slow;
    slow.ready_after = 1000ms;
    f.backend->script("slow", {slow});
    AsyncSpawn spawn(*f.backend, notify("slow", 5000ms), f.token);
    EXPECT_FALSE(spawn.wait(50ms));
    f.token.cancel();
    ASSERT_TRUE(spawn.wait(kWait));
    auto result = spawn.result();
    ASSERT_FALSE(result);
    EXPECT_EQ(result.error().code, std::errc::operation_canceled);
  }
}

TEST(MockBackend, TokenCancelEndsEverythingAndRefusesNewStarts) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript stubborn;
  stubborn.ignores_graceful_stop = true;
  f.backend->script("stubborn", {stubborn});
  MockScript waiting;
  waiting.ready_after = std::nullopt;
  f.backend->script("waiting", {waiting});
  std::vector<InstanceHandle> handles;
  for (const auto& config : {immediate("a"), immediate("a"), immediate("stubborn"), notify("waiting", 60000ms)}) {
    auto handle = f.backend->start_instance(config, f.journal->events());
    ASSERT_TRUE(handle) << handle.error();
    handles.push_back(*handle);
  }

  f.token.cancel();
  f.backend->wait_for_shutdown();
  // wait_for_shutdown returned: every on_exit has been delivered, no wait here.
  for (const auto& handle : handles) {
    auto status = f.journal->exit_of(handle.instance_id);
    ASSERT_TRUE(status) << handle.module;
    EXPECT_EQ(status->kind, ExitStatus::Kind::Signaled);
    EXPECT_EQ(status->reason, ExitStatus::Reason::Stopped);
    EXPECT_EQ(status->code, handle.module == "stubborn" ? 9 : 15);
    EXPECT_EQ(f.journal->count(Entry::Kind::Exit, handle.instance_id), 1);
  }
  for (const auto* module : {"a", "stubborn", "waiting"}) {
    auto listed = f.backend->list_instances(module);
    ASSERT_TRUE(listed);
    EXPECT_TRUE(listed->empty()) << module;
  }
  auto refused = f.backend->start_instance(immediate("a"), f.journal->events());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, std::errc::operation_canceled);
  auto refused_spawn = f.backend->spawn_instance(immediate("a"));
  ASSERT_FALSE(refused_spawn);
  EXPECT_EQ(refused_spawn.error().code, std::errc::operation_canceled);
}

TEST(MockBackend, AlreadyCancelledTokenRefusesStarts) {
  CancellationToken token;
  token.cancel();
  auto journal = std::make_shared<Journal>();
  MockBackend::Options options;
  options.time = std::make_shared<ManualClock>();
  auto created = MockBackend::create(token, journal, options);
  ASSERT_TRUE(created) << created.error();
  auto refused = (*created)->start_instance(immediate("a"), journal->events());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, std::errc::operation_canceled);
  (*created)->wait_for_shutdown();  // nothing to wait for
}

TEST(MockBackend, DestructorEndsEverythingWithoutMovingTheClock) {
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockScript stubborn;
  stubborn.ignores_graceful_stop = true;
  f.backend->script("stubborn", {stubborn});
  MockScript waiting;
  waiting.ready_after = 10s;
  f.backend->script("waiting", {waiting});
  auto a = f.backend->start_instance(immediate("plain"), f.journal->events());
  auto b = f.backend->start_instance(immediate("stubborn"), f.journal->events());
  auto c = f.backend->start_instance(notify("waiting", 20s), f.journal->events());
  ASSERT_TRUE(a && b && c);

  f.backend.reset();
  // on_exit was delivered before the destructor returned.
  auto sa = f.journal->exit_of(a->instance_id);
  auto sb = f.journal->exit_of(b->instance_id);
  auto sc = f.journal->exit_of(c->instance_id);
  ASSERT_TRUE(sa && sb && sc);
  EXPECT_EQ(sa->code, 15);
  EXPECT_EQ(sa->reason, ExitStatus::Reason::Stopped);
  EXPECT_EQ(sb->code, 9);
  EXPECT_TRUE(sb->forced);
  EXPECT_EQ(sc->code, 15);
  EXPECT_EQ(sc->reason, ExitStatus::Reason::Stopped);
  EXPECT_FALSE(f.journal->has_ready(c->instance_id));
  // Nothing more comes after the destructor.
  auto count = f.journal->entries().size();
  f.clock->advance(1h);
  EXPECT_EQ(f.journal->entries().size(), count);
}

TEST(MockBackend, CallbacksMayCallTheBackend) {
  // Declared before the backend, which may call the hooks until it is destroyed.
  std::mutex mutex;
  std::condition_variable exit_handled;
  std::optional<ExitStatus> stopped_from_ready;
  std::vector<std::size_t> listed_from_exit;
  Fixture f;
  ASSERT_TRUE(f.backend);
  MockBackend* backend = f.backend.get();
  f.journal->after_ready = [&](const InstanceHandle& handle) {
    if (handle.module != "self-stopping") return;
    auto stopped = backend->stop_instance(handle);  // from its own on_ready, on the Mock's thread
    std::lock_guard<std::mutex> lock(mutex);
    if (stopped && stopped->has_value()) stopped_from_ready = **stopped;
  };
  f.journal->after_exit = [&](const InstanceHandle& handle, const ExitStatus&) {
    auto listed = backend->list_instances(handle.module);
    std::lock_guard<std::mutex> lock(mutex);
    listed_from_exit.push_back(listed ? listed->size() : 99);
    exit_handled.notify_all();
  };
  auto handle = f.backend->start_instance(immediate("self-stopping"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  auto status = f.journal->wait_exit(handle->instance_id);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->reason, ExitStatus::Reason::Stopped);
  EXPECT_EQ(f.journal->sequence(handle->instance_id),
            (std::vector<std::string>{"ready", "lib:killed by signal 15", "exit"}));
  std::unique_lock<std::mutex> lock(mutex);
  // The journal keeps on_exit before its hook has run: wait for the hook too.
  ASSERT_TRUE(exit_handled.wait_for(lock, kWait, [&] { return !listed_from_exit.empty(); }));
  ASSERT_TRUE(stopped_from_ready);
  EXPECT_EQ(stopped_from_ready->code, 15);
  EXPECT_EQ(listed_from_exit, (std::vector<std::size_t>{0}));
}

TEST(MockBackend, RunsOnTheSteadyClockWhenGivenNoTimeSource) {
  Fixture f(nullptr, /*use_manual_clock=*/false);
  ASSERT_TRUE(f.backend);
  MockScript script;
  script.lines = {line(20ms, LogStream::Stdout, "tick"), line(40ms, LogStream::Stderr, "tock")};
  script.ready_after = 30ms;
  script.exit_after = 60ms;
  script.exit_status = exited(0);
  f.backend->script("real", {script});
  auto begin = std::chrono::steady_clock::now();
  auto handle = f.backend->spawn_instance(notify("real", 1000ms));  // waits in real time
  ASSERT_TRUE(handle) << handle.error();
  EXPECT_GE(std::chrono::steady_clock::now() - begin, std::chrono::steady_clock::duration(30ms));
  ASSERT_TRUE(f.journal->wait_for([&](const Entry& e) {
    return e.kind == Entry::Kind::Record && e.stream == LogStream::Library && e.instance_id == handle->instance_id &&
           e.text == "exited with code 0";
  }));
  EXPECT_GE(std::chrono::steady_clock::now() - begin, std::chrono::steady_clock::duration(60ms));
  EXPECT_EQ(f.journal->sequence(handle->instance_id),
            (std::vector<std::string>{"out:tick", "err:tock", "lib:exited with code 0"}));

  // start_instance's events on the steady clock.
  auto started = f.backend->start_instance(notify("real", 1000ms), f.journal->events());
  ASSERT_TRUE(started) << started.error();
  auto status = f.journal->wait_exit(started->instance_id);
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->success());
  EXPECT_EQ(status->reason, ExitStatus::Reason::Exited);
  EXPECT_EQ(f.journal->sequence(started->instance_id),
            (std::vector<std::string>{"out:tick", "ready", "err:tock", "lib:exited with code 0", "exit"}));
}

TEST(MockBackend, CallbacksThatThrowAreDropped) {
#if !defined(__cpp_exceptions)
  GTEST_SKIP() << "built without exceptions";
#elif defined(MODKIT_LIBRARY_NO_EXCEPTIONS)
  GTEST_SKIP() << "the library is built with -fno-exceptions: a callback's exception cannot cross it";
#else
  Fixture f;
  ASSERT_TRUE(f.backend);
  f.journal->on_write = [](const LogRecord& record) {
    if (record.line.substr(0, 5) == "throw") throw std::runtime_error("sink refuses");
  };
  f.journal->after_ready = [](const InstanceHandle&) { throw std::runtime_error("on_ready refuses"); };
  f.journal->after_exit = [](const InstanceHandle&, const ExitStatus&) { throw 42; };
  MockScript script;
  script.lines = {line(0ms, LogStream::Stdout, "throw 1"), line(0ms, LogStream::Stderr, "throw 2"),
                  line(10ms, LogStream::Stdout, "after")};
  script.exit_after = 20ms;
  f.backend->script("thrower", {script});
  auto handle = f.backend->start_instance(immediate("thrower"), f.journal->events());
  ASSERT_TRUE(handle) << handle.error();
  f.clock->advance(10ms);
  ASSERT_TRUE(f.journal->wait_line(handle->instance_id, "after"));
  f.clock->advance(10ms);
  ASSERT_TRUE(f.journal->wait_exit(handle->instance_id));
  EXPECT_EQ(f.journal->sequence(handle->instance_id),
            (std::vector<std::string>{"ready", "out:throw 1", "err:throw 2", "out:after", "lib:exited with code 0",
                                      "exit"}));
  // The backend works on; a stop whose on_exit throws still returns its status.
  auto next = f.backend->start_instance(immediate("thrower2"), f.journal->events());
  ASSERT_TRUE(next) << next.error();
  auto stopped = f.backend->stop_instance(*next);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->code, 15);
  EXPECT_TRUE(f.journal->has_exit(next->instance_id));
#endif
}

}  // namespace
}  // namespace modkit
