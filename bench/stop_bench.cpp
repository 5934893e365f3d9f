// BM_StopCooperative: stop_instance on a child that exits on SIGTERM, timed
// from the call to its return (the child reaped and its output drained).
// BM_StopCooperativeRaw: the floor, kill(-pgid, SIGTERM) + waitpid on a child
// started with raw posix_spawn.
// BM_ShutdownStubborn/100: cancel the token with 100 children that ignore
// SIGTERM and a 1 s shutdown grace; timed until wait_for_shutdown returns.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>

#include "bench_common.hpp"

namespace modkit_bench {
namespace {

using Clock = std::chrono::steady_clock;

void stop_cooperative(benchmark::State& state, modkit::Containment containment) {
  Signal signal;
  auto sink = std::make_shared<CountingSink>(signal);
  modkit::CancellationToken token;
  modkit::LocalProcessOptions options;
  options.containment = containment;
  modkit::LocalProcessBackend backend(token, sink, options);
  const auto config = child_config("stop", {"term"});
  for (auto _ : state) {
    state.PauseTiming();
    std::uint64_t ready_before = sink->ready();
    auto handle = backend.spawn_instance(config);
    if (!handle) {
      state.SkipWithError(handle.error().message.c_str());
      break;
    }
    if (!signal.wait([&] { return sink->ready() > ready_before; })) {
      state.SkipWithError("child not ready within 60 s");
      break;
    }
    state.ResumeTiming();
    auto status = backend.stop_instance(*handle);
    if (!status || !*status || !(*status)->success() || (*status)->forced) {
      state.SkipWithError("child did not exit cleanly on SIGTERM");
      break;
    }
  }
}

void BM_StopCooperative(benchmark::State& state) { stop_cooperative(state, modkit::Containment::Automatic); }
// The same without the instance's cgroup, to price it (its graceful step
// also signals the cgroup's members, read from cgroup.procs).
void BM_StopCooperativeUncontained(benchmark::State& state) { stop_cooperative(state, modkit::Containment::Off); }

void BM_StopCooperativeRaw(benchmark::State& state) {
  for (auto _ : state) {
    state.PauseTiming();
    RawChild child = raw_spawn({"term"});
    if (!raw_read_ready(child.out)) {
      state.SkipWithError("child not ready");
      break;
    }
    state.ResumeTiming();
    kill(-child.pid, SIGTERM);
    int status = 0;
    while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
    }
    state.PauseTiming();
    close(child.out);
    close(child.err);
    state.ResumeTiming();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      state.SkipWithError("child did not exit cleanly on SIGTERM");
      break;
    }
  }
}

void BM_ShutdownStubborn(benchmark::State& state) {
  const auto children = static_cast<int>(state.range(0));
  const std::chrono::milliseconds grace(1000);
  Clock::duration timed{};
  std::int64_t forced = 0;
  for (auto _ : state) {
    state.PauseTiming();
    Signal signal;
    auto sink = std::make_shared<CountingSink>(signal);
    std::atomic<int> forced_now{0};
    modkit::LocalProcessOptions options;
    options.shutdown_grace = grace;
    options.on_exit = [&](const modkit::InstanceHandle&, const modkit::ExitStatus& status) {
      if (status.forced) forced_now.fetch_add(1);
    };
    modkit::CancellationToken token;
    auto backend = std::make_unique<modkit::LocalProcessBackend>(token, sink, options);
    const auto config = child_config("stubborn", {"stubborn"});
    for (int i = 0; i < children; ++i) {
      auto handle = backend->spawn_instance(config);
      if (!handle) {
        state.SkipWithError(handle.error().message.c_str());
        return;
      }
    }
    if (!signal.wait([&] { return sink->ready() >= static_cast<std::uint64_t>(children); })) {
      state.SkipWithError("children not ready within 60 s");
      return;
    }
    state.ResumeTiming();
    auto start = Clock::now();
    token.cancel();
    backend->wait_for_shutdown();
    timed += Clock::now() - start;
    state.PauseTiming();
    backend.reset();  // joins everything; on_exit has run for every child
    forced += forced_now.load();
    state.ResumeTiming();
  }
  double per_iteration = std::chrono::duration<double>(timed).count() / static_cast<double>(state.iterations());
  state.counters["grace_s"] = std::chrono::duration<double>(grace).count();
  state.counters["total_over_grace"] = per_iteration / std::chrono::duration<double>(grace).count();
  state.counters["forced_per_iteration"] = static_cast<double>(forced) / static_cast<double>(state.iterations());
}

BENCHMARK(BM_StopCooperative)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5)->Repetitions(5);
BENCHMARK(BM_StopCooperativeUncontained)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5)->Repetitions(5);
BENCHMARK(BM_StopCooperativeRaw)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5)->Repetitions(5);
BENCHMARK(BM_ShutdownStubborn)->Arg(100)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
}  // namespace modkit_bench

MODKIT_BENCH_MAIN()
