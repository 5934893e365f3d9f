// Regression tests: nothing a callback does, and no shortage of threads, may
// crash the host or leave a ghost instance (defects 5 and 10).
//
// 5(a) A sink whose write() throws (for child lines, for library records,
//      including the one logged inside spawn_instance) and an on_exit that
//      throws: c31190c let the exception reach a modkit thread (std::terminate)
//      or the caller of spawn_instance.
// 5(b) The backend destroyed from on_exit: c31190c joined the supervisor from
//      itself (std::system_error in a destructor: std::terminate).
// 5(c) No thread to be had (RLIMIT_NPROC): c31190c's constructor threw
//      std::system_error from std::thread.
// 10   A reader thread that cannot start: c31190c failed the spawn but left
//      the child listed, unreaped, and reported its exit to on_exit under an
//      id the caller never received.
//
// RLIMIT_NPROC does not apply to root, so the thread-limit tests drop to uid
// 65534 in the forked host (and skip when the test does not run as root).
#ifndef _WIN32

#include <gtest/gtest.h>
#include <signal.h>

#include <stdexcept>

#include "forked_host.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::forked;

namespace {

void release_armed_module(const RecordingSink& sink, const InstanceHandle& handle) {
  HOST_ASSERT(sink.wait_for_line(handle.instance_id, "armed", Ms(5000))) << "the module never said 'armed'";
  HOST_ASSERT(kill(pid_of(handle), SIGUSR1) == 0) << "cannot signal the module: " << std::strerror(errno);
}

bool starts_with(std::string_view text, std::string_view prefix) { return text.substr(0, prefix.size()) == prefix; }

}  // namespace

// 5(a) write() throws for some child lines, on both streams; the lines after
// them still arrive and the host lives on.
TEST(RegressionHostSafety, SinkThrowingOnChildLinesDoesNotTerminateHost) {
#ifdef MODKIT_LIBRARY_NO_EXCEPTIONS
  GTEST_SKIP() << "the library is built with -fno-exceptions: a sink's exception cannot cross it";
#endif
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    ExitRecorder exits;
    options.on_exit = exits.callback();
    auto sink = std::make_shared<RecordingSink>([](const LogRecord& record) {
      if (record.stream != LogStream::Library && starts_with(record.line, "throw")) {
        throw std::runtime_error("sink refuses '" + std::string(record.line) + "'");
      }
    });
    CancellationToken token;
    auto backend = create_backend(token, sink, options);
    auto handle =
        backend->spawn_instance(hostile_config("throwing-sink", {"out", "throw-out", "err", "throw-err", "sleep", "0.2",
                                                                 "out", "after-out", "err", "after-err", "exit", "0"}));
    HOST_ASSERT(handle) << handle.error();
    HOST_CHECK(sink->wait_for_line(handle->instance_id, "after-out", Ms(5000)))
        << "the stdout line after the one whose write() threw never arrived";
    HOST_CHECK(sink->wait_for_line(handle->instance_id, "after-err", Ms(5000)))
        << "the stderr line after the one whose write() threw never arrived";
    auto exit = exits.wait_for(handle->instance_id, Ms(5000));
    HOST_CHECK(exit && exit->success()) << "on_exit reported " << describe(exit);
    auto stopped = backend->stop_instance(*handle);
    HOST_CHECK(stopped) << stopped.error();
    auto start = Clock::now();
    backend.reset();
    double took = seconds_since(start);
    HOST_CHECK(took <= shutdown_bound_s(options)) << "the destructor took " << took << " s";
    HOST_CHECK(wait_host_threads_back(Ms(3000))) << "threads left: " << thread_count();
  });
}

// 5(a) write() throws (a non-std exception) for every library record: the
// "spawned" record inside spawn_instance, the stop records, the exit reports,
// the shutdown records. No call lets it out, no modkit thread dies of it.
TEST(RegressionHostSafety, SinkThrowingOnLibraryRecordsDoesNotEscapeSpawnInstance) {
#ifdef MODKIT_LIBRARY_NO_EXCEPTIONS
  GTEST_SKIP() << "the library is built with -fno-exceptions: a sink's exception cannot cross it";
#endif
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    ExitRecorder exits;
    options.on_exit = exits.callback();
    auto sink = std::make_shared<RecordingSink>([](const LogRecord& record) {
      if (record.stream == LogStream::Library) throw 42;
    });
    CancellationToken token;
    auto backend = create_backend(token, sink, options);

    std::optional<Result<InstanceHandle>> first;
    try {
      first.emplace(backend->spawn_instance(hostile_config("throwing-sink", {"out", "hello", "sleep", "30"})));
    } catch (...) {
      HOST_FATAL() << "spawn_instance let the exception thrown by the sink's write() (for its own library record) "
                      "escape to its caller";
    }
    HOST_ASSERT(*first) << "spawn_instance failed: " << first->error();
    const InstanceHandle handle = **first;
    HOST_CHECK(sink->wait_for_line(handle.instance_id, "hello", Ms(5000))) << "the child's line never arrived";

    try {
      auto stopped = backend->stop_instance(handle);
      HOST_CHECK(stopped) << "stop_instance failed: " << stopped.error();
      if (stopped) {
        HOST_CHECK(stopped->has_value() && is_sigterm_exit(**stopped)) << describe(*stopped);
      }
    } catch (...) {
      HOST_FAIL() << "stop_instance let the sink's exception escape";
    }
    auto exit = exits.wait_for(handle.instance_id, Ms(3000));
    HOST_CHECK(exit) << "no on_exit after the exit report's write() threw";

    // The shutdown path, whose records are not tied to one instance.
    std::optional<Result<InstanceHandle>> second;
    try {
      second.emplace(backend->spawn_instance(hostile_config("throwing-sink", {"out", "hello", "sleep", "30"})));
    } catch (...) {
      HOST_FATAL() << "the second spawn_instance let the sink's exception escape";
    }
    HOST_ASSERT(*second) << "spawn_instance failed: " << second->error();
    HOST_CHECK(sink->wait_for_line((*second)->instance_id, "hello", Ms(5000)));
    try {
      auto start = Clock::now();
      token.cancel();
      backend->wait_for_shutdown();
      double took = seconds_since(start);
      HOST_CHECK(took <= shutdown_bound_s(options)) << "the shutdown took " << took << " s";
    } catch (...) {
      HOST_FAIL() << "cancel() or wait_for_shutdown() let the sink's exception escape";
    }
    HOST_CHECK(exits.wait_for((*second)->instance_id, Ms(3000))) << "the shutdown did not report the exit";
    try {
      backend.reset();
    } catch (...) {
      HOST_FAIL() << "the destructor let the sink's exception escape";
    }
    HOST_CHECK(wait_host_threads_back(Ms(3000))) << "threads left: " << thread_count();
    HOST_CHECK(wait_no_children(Ms(2000))) << "a child (or zombie) is left";
  });
}

// 5(a) on_exit throws: the exception is caught and logged, and later exits
// are still reported (the thread that reports them survived).
TEST(RegressionHostSafety, OnExitThrowingDoesNotTerminateHost) {
#ifdef MODKIT_LIBRARY_NO_EXCEPTIONS
  GTEST_SKIP() << "the library is built with -fno-exceptions: on_exit's exception cannot cross it";
#endif
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    ExitRecorder exits;
    options.on_exit = [&exits](const InstanceHandle& handle, const ExitStatus& status) {
      exits.record(handle, status);
      throw std::runtime_error("on_exit refuses " + handle.instance_id);
    };
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    auto backend = create_backend(token, sink, options);

    auto first = backend->spawn_instance(hostile_config("throwing-exit", {"exit", "3"}));
    HOST_ASSERT(first) << first.error();
    auto exit = exits.wait_for(first->instance_id, Ms(5000));
    HOST_ASSERT(exit) << "on_exit was never called";
    HOST_CHECK(exit->kind == ExitStatus::Kind::Exited && exit->code == 3) << describe(exit);

    auto second = backend->spawn_instance(hostile_config("throwing-exit", {"exit", "4"}));
    HOST_ASSERT(second) << second.error();
    exit = exits.wait_for(second->instance_id, Ms(5000));
    HOST_CHECK(exit) << "after on_exit threw once, later exits are no longer reported";
    if (exit) {
      HOST_CHECK(exit->kind == ExitStatus::Kind::Exited && exit->code == 4) << describe(exit);
    }

    // "caught and logged": some library record says so.
    bool logged =
        !sink->library_lines_containing("on_exit").empty() || !sink->library_lines_containing("exception").empty() ||
        !sink->library_lines_containing("threw").empty() || !sink->library_lines_containing("refuses").empty();
    HOST_CHECK(logged) << "no library record reports the exception on_exit threw; library records: "
                       << sink->library_dump();

    auto start = Clock::now();
    backend.reset();
    double took = seconds_since(start);
    HOST_CHECK(took <= shutdown_bound_s(options)) << "the destructor took " << took << " s";
    HOST_CHECK(wait_host_threads_back(Ms(3000))) << "threads left: " << thread_count();
  });
}

// 5(b) on_exit destroys the backend (the callback's owner lets go of it).
TEST(RegressionHostSafety, BackendDestroyedFromOnExitDoesNotTerminateHost) {
  RUN_IN_HOST(Ms(30000), [] {
    LocalProcessOptions options = short_options();
    const double bound = shutdown_bound_s(options);
    struct Owner {
      std::unique_ptr<LocalProcessBackend> backend;
    };
    auto owner = std::make_shared<Owner>();
    Handoff<double> reset_took;
    options.on_exit = [owner, &reset_took](const InstanceHandle& handle, const ExitStatus&) {
      if (handle.module != "trigger") return;
      auto start = Clock::now();
      owner->backend.reset();
      reset_took.set(seconds_since(start));
    };
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    owner->backend = create_backend(token, sink, options);

    auto bystander = owner->backend->spawn_instance(hostile_config("bystander", {"out", "up", "sleep", "30"}));
    HOST_ASSERT(bystander) << bystander.error();
    HOST_ASSERT(sink->wait_for_line(bystander->instance_id, "up", Ms(5000)));
    auto trigger =
        owner->backend->spawn_instance(hostile_config("trigger", {"out", "armed", "await-usr1", "10", "exit", "0"}));
    HOST_ASSERT(trigger) << trigger.error();
    // From here on the host's thread leaves the backend alone: on_exit owns its fate.
    release_armed_module(*sink, *trigger);

    auto took = reset_took.wait(Ms(static_cast<long>(bound * 1000) + 5000));
    HOST_ASSERT(took) << "destroying the backend from on_exit did not return within " << bound + 5 << " s";
    HOST_NOTE() << "the destructor called from on_exit returned after " << *took << " s";
    HOST_CHECK(*took <= bound) << "the destructor called from on_exit took " << *took << " s; the bound is " << bound;
    HOST_CHECK(wait_gone(pid_of(*bystander), Ms(static_cast<long>(bound * 1000) + 1000)))
        << "the bystander module still runs after the backend was destroyed";
    HOST_CHECK(wait_no_children(Ms(static_cast<long>(bound * 1000) + 1000))) << "a child (or zombie) is left";
    HOST_CHECK(wait_host_threads_back(Ms(static_cast<long>(bound * 1000) + 3000)))
        << "threads left after the teardown: " << thread_count();
  });
}

namespace {

/// In a forked root host: become uid 65534 and count its tasks, or skip.
int become_nobody_and_count_tasks() {
  if (chdir("/") != 0) HOST_FATAL() << "chdir /: " << std::strerror(errno);
  if (!drop_to_nobody()) HOST_SKIP() << "cannot switch to uid 65534: " << std::strerror(errno);
  int tasks = tasks_of_real_uid(kNobody);
  HOST_ASSERT(tasks > 0) << "cannot count the tasks of uid 65534 in /proc";
  return tasks;
}

/// Sets RLIMIT_NPROC to the tasks uid 65534 has now, so no thread can start,
/// and checks that it holds; skips when the kernel lets threads start anyway.
void exhaust_threads(int tasks) {
  HOST_ASSERT(set_nproc_soft_limit(static_cast<rlim_t>(tasks))) << "setrlimit: " << std::strerror(errno);
  if (!thread_creation_refused()) {
    restore_nproc_soft_limit();
    HOST_SKIP() << "RLIMIT_NPROC at " << tasks << " does not stop thread creation here";
  }
}

}  // namespace

// 5(c) LocalProcessBackend::create with no thread to be had.
TEST(RegressionHostSafety, CreateOutOfThreadsReturnsErrorInsteadOfThrowing) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (to run as uid 65534, for which RLIMIT_NPROC applies)";
  RUN_IN_HOST(Ms(30000), [] {
    int tasks = become_nobody_and_count_tasks();
    CancellationToken token;
    auto sink = std::make_shared<RecordingSink>();
    exhaust_threads(tasks);
    std::optional<Result<std::unique_ptr<LocalProcessBackend>>> created;
    std::string thrown;
    try {
      created.emplace(LocalProcessBackend::create(token, sink, short_options()));
    } catch (const std::exception& error) {
      thrown = std::string("threw ") + error.what();
    } catch (...) {
      thrown = "threw a non-std exception";
    }
    restore_nproc_soft_limit();
    HOST_ASSERT(thrown.empty()) << "LocalProcessBackend::create " << thrown << " when no thread could be started";
    HOST_ASSERT(!*created) << "create succeeded although no thread could be started";
    HOST_NOTE() << "create: " << created->error();
    HOST_CHECK(created->error().code == std::errc::resource_unavailable_try_again) << created->error();
    HOST_CHECK(!created->error().message.empty());
    HOST_CHECK(wait_host_threads_back(Ms(2000))) << "threads left: " << thread_count();
  });
}

// 5(c) The constructor with no thread to be had: no exception, and a backend
// that refuses every spawn with resource_unavailable_try_again.
TEST(RegressionHostSafety, ConstructorOutOfThreadsRefusesSpawnsInsteadOfThrowing) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (to run as uid 65534, for which RLIMIT_NPROC applies)";
  RUN_IN_HOST(Ms(30000), [] {
    int tasks = become_nobody_and_count_tasks();
    CancellationToken token;
    auto sink = std::make_shared<RecordingSink>();
    LocalProcessOptions options = short_options();
    options.containment = Containment::Off;  // uid 65534 may not write the cgroup: a second record, not this test's
    exhaust_threads(tasks);
    std::unique_ptr<LocalProcessBackend> backend;
    std::string thrown;
    try {
      backend = std::make_unique<LocalProcessBackend>(token, sink, options);
    } catch (const std::exception& error) {
      thrown = std::string("threw ") + error.what();
    } catch (...) {
      thrown = "threw a non-std exception";
    }
    restore_nproc_soft_limit();
    HOST_ASSERT(thrown.empty()) << "the LocalProcessBackend constructor " << thrown
                                << " when no thread could be started";
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto spawned = backend->spawn_instance(child_config("starved", {"say", "hi", "sleep", "30"}));
      HOST_CHECK(!spawned) << "a backend whose threads never started spawned an instance";
      if (!spawned) {
        HOST_CHECK(spawned.error().code == std::errc::resource_unavailable_try_again) << spawned.error();
      }
    }
    HOST_CHECK(children_of_self().empty()) << "a refused spawn left a child";
    std::size_t library_records = 0;
    for (const auto& record : sink->records()) library_records += record.stream == LogStream::Library ? 1 : 0;
    HOST_NOTE() << "library records: " << sink->library_dump();
    HOST_CHECK(library_records == 1) << "the backend whose threads could not start must say so once in a library "
                                     << "record; there are " << library_records << ": " << sink->library_dump();
    auto start = Clock::now();
    backend.reset();
    double took = seconds_since(start);
    HOST_CHECK(took <= shutdown_bound_s(options)) << "the destructor took " << took << " s";
    HOST_CHECK(wait_host_threads_back(Ms(2000))) << "threads left: " << thread_count();
  });
}

// 10. With RLIMIT_NPROC a few tasks above what uid 65534 has, spawn_instance
// runs out of threads (or processes) at every step in turn. Every failed
// The host runs as uid 65534, which may not reach the build tree (a clone
// under a 0700 mktemp directory, as CI makes): run the system's shell.
OopModuleConfig shell_config(const std::string& module, const std::string& script) {
  OopModuleConfig config(module, BackendKind::LocalProcess);
  config.binary = "/bin/sh";
  config.args = {"-c", script};
  return config;
}

// spawn must leave nothing: no listed instance, no child (alive or zombie)
// once it returns, and no on_exit for an id it never returned.
TEST(RegressionGhostInstance, ReaderThreadFailureLeavesNoListedInstanceNoOnExitNoChild) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (to run as uid 65534, for which RLIMIT_NPROC applies)";
  RUN_IN_HOST(Ms(60000), [] {
    become_nobody_and_count_tasks();
    LocalProcessOptions options = short_options();
    // Threads are counted exactly between steps: no reader is kept idle (a
    // step whose second reader could not start leaves its first one idle).
    options.idle_readers = 0;
    ExitRecorder exits;
    options.on_exit = exits.callback();
    auto sink = std::make_shared<RecordingSink>();
    CancellationToken token;
    auto backend = create_backend(token, sink, options);  // its own threads start unhindered

    std::set<std::string> returned;
    {
      // Warm up, so that the loop below starts from a settled host.
      auto warm = backend->spawn_instance(shell_config("warm", "echo warm"));
      HOST_ASSERT(warm) << warm.error();
      returned.insert(warm->instance_id);
      HOST_ASSERT(exits.wait_for(warm->instance_id, Ms(5000))) << "the warm-up instance never exited";
      HOST_ASSERT(backend->stop_instance(*warm));
    }
    HostSnapshot baseline = quiescent_snapshot();

    int failures = 0;
    for (int headroom = 0; headroom <= 4; ++headroom) {
      HOST_CHECK(wait_for_thread_count(baseline.threads, Ms(3000)))
          << "headroom " << headroom << ": threads did not settle: " << thread_count() << " vs " << baseline.threads;
      HOST_CHECK(wait_no_children(Ms(3000))) << "headroom " << headroom << ": children left from the step before";
      int tasks = tasks_of_real_uid(kNobody);
      HOST_ASSERT(set_nproc_soft_limit(static_cast<rlim_t>(tasks + headroom))) << std::strerror(errno);
      auto handle = backend->spawn_instance(shell_config("ghost", "echo up; exec sleep 30"));
      // Looked at right after the call returned: first the listing (memory
      // only), then the children (a walk over /proc).
      auto listed = backend->list_instances("ghost");
      std::vector<ProcInfo> children = children_of_self();
      restore_nproc_soft_limit();
      if (handle) {
        returned.insert(handle->instance_id);
        auto stopped = backend->stop_instance(*handle);
        HOST_CHECK(stopped) << "headroom " << headroom << ": stop failed: " << stopped.error();
        continue;
      }
      ++failures;
      HOST_NOTE() << "headroom " << headroom << " (limit " << tasks + headroom << "): " << handle.error();
      HOST_CHECK(handle.error().code == std::errc::resource_unavailable_try_again)
          << "headroom " << headroom << ": " << handle.error();
      std::string left;
      for (const auto& child : children) left += std::to_string(child.pid) + "(" + child.state + ") ";
      HOST_CHECK(children.empty()) << "headroom " << headroom
                                   << ": spawn_instance failed, but its child was still there when it returned: "
                                   << left;
      HOST_CHECK(listed && listed->empty())
          << "headroom " << headroom << ": spawn_instance failed, but list_instances shows "
          << (listed ? listed->size() : 0) << " instance(s)";
    }
    HOST_CHECK(failures > 0) << "no spawn failed: RLIMIT_NPROC did not take effect";

    // Anything the failed spawns left would be reported by now (the graces
    // and drain are 0.5 s).
    std::this_thread::sleep_for(Ms(2000));
    for (const auto& id : exits.ids()) {
      HOST_CHECK(returned.count(id) == 1)
          << "on_exit fired for instance " << id << ", an id spawn_instance never returned (a ghost of a failed spawn)";
    }
    HOST_CHECK(wait_no_children(Ms(2000))) << "a child (or zombie) is left";
    auto start = Clock::now();
    backend.reset();
    double took = seconds_since(start);
    HOST_CHECK(took <= shutdown_bound_s(options)) << "the destructor took " << took << " s";
  });
}

#endif  // !_WIN32
