// Regression tests: calls into the backend from inside the sink, and a sink
// that blocks, must never hang the caller (defect 4).
//
// (a) stop_instance for an instance, called from the sink while it handles a
//     line of that same instance: c31190c waited for its own reader thread
//     to drain, forever. Now it returns at once (status, or
//     resource_deadlock_would_occur) and the stop goes on.
// (b) the backend destroyed from inside the sink: c31190c's destructor waited
//     for the calling reader, forever. Now it returns and the teardown
//     finishes after the callback.
// (c) a sink that blocks 10 s: c31190c's stop_instance, cancel +
//     wait_for_shutdown and destructor each took the sink's 10 s (with 0.5 s
//     graces and drain), then blamed "a process modkit cannot kill". Now each
//     returns within G + K + 2*D and a library record blames the sink.
//
// Every scenario runs in a forked host under a watchdog (forked_host.hpp).
#ifndef _WIN32

#include <gtest/gtest.h>
#include <signal.h>

#include "forked_host.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::forked;

namespace {

/// What a backend call made from inside a callback returned.
struct CallOutcome {
  double seconds = 0;
  bool ok = false;
  std::optional<ExitStatus> status;
  Error error;
};

/// Sends SIGUSR1 to a module waiting in `await-usr1` once it said "armed".
void release_armed_module(const RecordingSink& sink, const InstanceHandle& handle) {
  HOST_ASSERT(sink.wait_for_line(handle.instance_id, "armed", Ms(5000))) << "the module never said 'armed'";
  HOST_ASSERT(kill(pid_of(handle), SIGUSR1) == 0) << "cannot signal the module: " << std::strerror(errno);
}

}  // namespace

// (a) stop_instance from the sink, on a line of the very instance it stops.
TEST(RegressionReentry, StopInstanceFromSinkOnItsOwnLineDoesNotSelfDeadlock) {
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    ExitRecorder exits;
    options.on_exit = exits.callback();
    const double bound = stop_bound_s(options);

    LocalProcessBackend* backend_in_sink = nullptr;  // set before the first spawn
    Handoff<InstanceHandle> target;
    Handoff<CallOutcome> from_sink;
    auto sink = std::make_shared<RecordingSink>([&](const LogRecord& record) {
      if (record.stream != LogStream::Stdout || record.line != "stop-me") return;
      auto handle = target.wait(Ms(5000));
      if (!handle) return;
      CallOutcome outcome;
      auto start = Clock::now();
      auto stopped = backend_in_sink->stop_instance(*handle);
      outcome.seconds = seconds_since(start);
      outcome.ok = static_cast<bool>(stopped);
      if (stopped) {
        outcome.status = *stopped;
      } else {
        outcome.error = stopped.error();
      }
      from_sink.set(outcome);
    });
    CancellationToken token;
    auto backend = create_backend(token, sink, options);
    backend_in_sink = backend.get();

    auto handle = backend->spawn_instance(
        hostile_config("reentry", {"out", "armed", "await-usr1", "10", "out", "stop-me", "sleep", "30"}));
    HOST_ASSERT(handle) << handle.error();
    target.set(*handle);
    release_armed_module(*sink, *handle);

    auto outcome = from_sink.wait(Ms(static_cast<long>(bound * 1000) + 3000));
    HOST_ASSERT(outcome) << "stop_instance, called from the sink while it handled a line of that same instance, "
                            "did not return within "
                         << bound + 3 << " s (self-deadlock on its own reader thread)";
    HOST_NOTE() << "stop_instance from the sink returned after " << outcome->seconds
                << " s: " << (outcome->ok ? describe(outcome->status) : outcome->error.message);
    HOST_CHECK(outcome->seconds <= bound)
        << "stop_instance from the sink took " << outcome->seconds << " s; the bound is " << bound << " s";
    if (outcome->ok) {
      HOST_CHECK(outcome->status && is_sigterm_exit(*outcome->status))
          << "stop_instance from the sink returned " << describe(outcome->status)
          << ", expected the module's SIGTERM exit";
    } else {
      HOST_CHECK(outcome->error.code == std::errc::resource_deadlock_would_occur)
          << "stop_instance from the sink failed with " << outcome->error
          << ", expected a status or resource_deadlock_would_occur";
    }

    // The stop goes on: the module ends of its SIGTERM and its exit is reported.
    auto exit = exits.wait_for(handle->instance_id, Ms(static_cast<long>(bound * 1000) + 2000));
    HOST_CHECK(exit) << "the stop started from the sink did not go on: no on_exit for the instance";
    if (exit) {
      HOST_CHECK(is_sigterm_exit(*exit)) << "on_exit reported " << describe(exit);
    }
    HOST_CHECK(wait_gone(pid_of(*handle), Ms(2000))) << "the module still runs";
    auto listed = backend->list_instances("reentry");
    HOST_CHECK(listed && listed->empty()) << "the stopped instance is still listed";

    // A stop from the host's own thread now returns at once.
    auto start = Clock::now();
    auto again = backend->stop_instance(*handle);
    double took = seconds_since(start);
    HOST_CHECK(again) << "a second stop_instance failed: " << again.error();
    HOST_CHECK(took <= bound) << "a second stop_instance took " << took << " s";
    if (again && again->has_value()) {
      HOST_CHECK(is_sigterm_exit(**again)) << describe(*again);
    }

    start = Clock::now();
    backend.reset();
    took = seconds_since(start);
    HOST_CHECK(took <= bound) << "the destructor took " << took << " s";
    HOST_CHECK(wait_host_threads_back(Ms(3000))) << "threads left after the backend was destroyed: " << thread_count();
    HOST_CHECK(wait_no_children(Ms(2000))) << "a child (or zombie) is left";
  });
}

// (a') wait_for_shutdown from the sink (after cancelling the token there):
// c31190c waited for the shutdown, which waited for the calling reader.
TEST(RegressionReentry, WaitForShutdownFromSinkReturnsAtOnce) {
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    ExitRecorder exits;
    options.on_exit = exits.callback();
    const double bound = shutdown_bound_s(options);

    CancellationToken token;
    LocalProcessBackend* backend_in_sink = nullptr;
    Handoff<double> from_sink;
    auto sink = std::make_shared<RecordingSink>([&](const LogRecord& record) {
      if (record.stream != LogStream::Stdout || record.line != "cancel-now") return;
      auto start = Clock::now();
      token.cancel();
      backend_in_sink->wait_for_shutdown();
      from_sink.set(seconds_since(start));
    });
    auto backend = create_backend(token, sink, options);
    backend_in_sink = backend.get();

    auto handle = backend->spawn_instance(
        hostile_config("reentry", {"out", "armed", "await-usr1", "10", "out", "cancel-now", "sleep", "30"}));
    HOST_ASSERT(handle) << handle.error();
    release_armed_module(*sink, *handle);

    auto took_in_sink = from_sink.wait(Ms(static_cast<long>(bound * 1000) + 3000));
    HOST_ASSERT(took_in_sink) << "cancel() + wait_for_shutdown(), called from the sink, did not return within "
                              << bound + 3 << " s (the shutdown waits for the calling reader thread)";
    HOST_NOTE() << "cancel + wait_for_shutdown from the sink returned after " << *took_in_sink << " s";
    HOST_CHECK(*took_in_sink <= 1.0) << "wait_for_shutdown from a sink must return at once; it took " << *took_in_sink
                                     << " s";

    auto start = Clock::now();
    backend->wait_for_shutdown();
    double took = seconds_since(start);
    HOST_CHECK(took <= bound) << "wait_for_shutdown on the host's thread took " << took << " s";
    auto exit = exits.wait_for(handle->instance_id, Ms(2000));
    HOST_CHECK(exit) << "the shutdown did not report the instance's exit";
    if (exit) {
      HOST_CHECK(is_sigterm_exit(*exit)) << "on_exit reported " << describe(exit);
    }
    HOST_CHECK(wait_gone(pid_of(*handle), Ms(2000))) << "the module still runs after the shutdown";

    start = Clock::now();
    backend.reset();
    took = seconds_since(start);
    HOST_CHECK(took <= bound) << "the destructor took " << took << " s";
    HOST_CHECK(wait_host_threads_back(Ms(3000))) << "threads left after the backend was destroyed: " << thread_count();
    HOST_CHECK(wait_no_children(Ms(2000))) << "a child (or zombie) is left";
  });
}

// (b) The sink owns the backend and destroys it on a certain line.
TEST(RegressionReentry, BackendDestroyedFromSinkTearsDownAfterTheCallback) {
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    const double bound = shutdown_bound_s(options);

    // The sink holds the only owner of the backend (the backend holds the sink).
    struct Owner {
      std::unique_ptr<LocalProcessBackend> backend;
    };
    auto owner = std::make_shared<Owner>();
    Handoff<double> reset_took;
    auto sink = std::make_shared<RecordingSink>([owner, &reset_took](const LogRecord& record) {
      if (record.stream != LogStream::Stdout || record.line != "destroy-now") return;
      auto start = Clock::now();
      owner->backend.reset();
      reset_took.set(seconds_since(start));
    });
    CancellationToken token;
    owner->backend = create_backend(token, sink, options);

    // A bystander the teardown must stop too, then the module whose line
    // triggers the destruction.
    auto bystander = owner->backend->spawn_instance(hostile_config("bystander", {"out", "up", "sleep", "30"}));
    HOST_ASSERT(bystander) << bystander.error();
    HOST_ASSERT(sink->wait_for_line(bystander->instance_id, "up", Ms(5000)));
    auto trigger = owner->backend->spawn_instance(
        hostile_config("trigger", {"out", "armed", "await-usr1", "10", "out", "destroy-now", "sleep", "30"}));
    HOST_ASSERT(trigger) << trigger.error();
    // From here on the host's thread does not touch the backend: the sink may
    // destroy it at any moment.
    release_armed_module(*sink, *trigger);

    auto took = reset_took.wait(Ms(static_cast<long>(bound * 1000) + 3000));
    HOST_ASSERT(took) << "destroying the backend from inside the sink did not return within " << bound + 3
                      << " s (the destructor waits for the reader thread that called it)";
    HOST_NOTE() << "the destructor called from the sink returned after " << *took << " s";
    HOST_CHECK(*took <= bound) << "the destructor called from the sink took " << *took << " s; the bound is " << bound;

    // The teardown completes once the callback has returned: both modules
    // stopped and reaped, every thread of the backend gone.
    HOST_CHECK(wait_gone(pid_of(*trigger), Ms(static_cast<long>(bound * 1000) + 1000)))
        << "the module whose line destroyed the backend still runs";
    HOST_CHECK(wait_gone(pid_of(*bystander), Ms(static_cast<long>(bound * 1000) + 1000)))
        << "the bystander module still runs after the backend was destroyed";
    HOST_CHECK(wait_no_children(Ms(static_cast<long>(bound * 1000) + 1000)))
        << "a child (or zombie) is left after the teardown";
    HOST_CHECK(wait_host_threads_back(Ms(static_cast<long>(bound * 1000) + 3000)))
        << "threads left after the teardown: " << thread_count();
  });
}

namespace {

enum class SlowSinkCall { Stop, Shutdown, Destructor };

// (c) A sink that blocks 10 s on one line while the backend stops the module.
void slow_sink_scenario(SlowSinkCall call) {
  LocalProcessOptions options = short_options();
  ExitRecorder exits;
  options.on_exit = exits.callback();
  auto sink = std::make_shared<BlockingSink>("block-here", Ms(10000));
  CancellationToken token;
  auto backend = create_backend(token, sink, options);
  auto handle = backend->spawn_instance(hostile_config("laggard", {"out", "block-here", "sleep", "30"}));
  HOST_ASSERT(handle) << handle.error();
  HOST_ASSERT(sink->wait_entered(Ms(5000))) << "the sink never got the module's line";

  const char* what = "";
  double bound = 0;
  auto start = Clock::now();
  switch (call) {
    case SlowSinkCall::Stop: {
      what = "stop_instance";
      bound = stop_bound_s(options);
      auto stopped = backend->stop_instance(*handle);
      HOST_CHECK(stopped) << "stop_instance failed: " << stopped.error();
      if (stopped) {
        HOST_CHECK(stopped->has_value() && is_sigterm_exit(**stopped))
            << "stop_instance returned " << describe(*stopped) << ", expected the module's SIGTERM exit";
      }
      break;
    }
    case SlowSinkCall::Shutdown:
      what = "cancel + wait_for_shutdown";
      bound = shutdown_bound_s(options);
      token.cancel();
      backend->wait_for_shutdown();
      break;
    case SlowSinkCall::Destructor:
      what = "the destructor";
      bound = shutdown_bound_s(options);
      backend.reset();
      break;
  }
  double took = seconds_since(start);
  HOST_NOTE() << what << " with the sink blocked took " << took << " s (bound " << bound << " s)";
  // The module's name, path and arguments say nothing of sinks, so only a
  // record about the sink matches.
  HOST_CHECK(took <= bound) << what << " took " << took << " s while a sink call was blocked; the bound is " << bound
                            << " s (stop_grace/shutdown_grace 0.5 s, kill_timeout 0.5 s, drain_timeout 0.5 s)";
  HOST_CHECK(wait_gone(pid_of(*handle), Ms(1000))) << "the module still runs after " << what;
  HOST_CHECK(sink->recorder().wait_for_library_containing("sink", Ms(2000)))
      << "no library record says that a sink call is late; library records: " << sink->recorder().library_dump();

  // Release the sink: the reader stuck in it (possibly abandoned by the
  // library) ends, and no thread is left.
  sink->release();
  HOST_CHECK(sink->wait_all_returned(Ms(1000))) << "the blocked sink call did not return once released";
  if (backend) {
    start = Clock::now();
    backend.reset();
    double destroy = seconds_since(start);
    HOST_CHECK(destroy <= shutdown_bound_s(options)) << "the destructor took " << destroy << " s";
  }
  HOST_CHECK(wait_host_threads_back(Ms(3000)))
      << "threads left once the sink was released and the backend gone: " << thread_count();
  HOST_CHECK(wait_no_children(Ms(2000))) << "a child (or zombie) is left";
  auto wrong = sink->recorder().library_lines_containing("cannot kill");
  HOST_CHECK(wrong.empty()) << "a slow sink was blamed on a process modkit cannot kill: '" << wrong.front() << "'";
  HOST_NOTE() << "library records: " << sink->recorder().library_dump();
}

}  // namespace

TEST(RegressionSlowSink, StopInstanceBoundedAndBlamesTheSinkNotAnUnkillableProcess) {
  RUN_IN_HOST(Ms(40000), [] { slow_sink_scenario(SlowSinkCall::Stop); });
}

TEST(RegressionSlowSink, ShutdownBoundedAndBlamesTheSinkNotAnUnkillableProcess) {
  RUN_IN_HOST(Ms(40000), [] { slow_sink_scenario(SlowSinkCall::Shutdown); });
}

TEST(RegressionSlowSink, DestructorBoundedAndBlamesTheSinkNotAnUnkillableProcess) {
  RUN_IN_HOST(Ms(40000), [] { slow_sink_scenario(SlowSinkCall::Destructor); });
}

#endif  // !_WIN32
