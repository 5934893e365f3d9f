// BM_Scale/1000: start 1000 sleeping instances and report, from
// /proc/self/status, the host's RSS and thread count per instance (measured
// from a running backend with no instance, so the backend's own two threads
// are not charged to instances). RLIMIT_NOFILE's soft limit is raised to the
// hard limit first (each instance holds about 4 descriptors).
#include <thread>

#include "bench_common.hpp"

namespace modkit_bench {
namespace {

using Clock = std::chrono::steady_clock;

void BM_Scale(benchmark::State& state) {
  const auto count = static_cast<long>(state.range(0));
  const long fd_limit = raise_fd_limit();
  for (auto _ : state) {
    Signal signal;
    auto sink = std::make_shared<CountingSink>(signal);
    modkit::CancellationToken token;
    auto backend = std::make_unique<modkit::LocalProcessBackend>(token, sink);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const long rss_before = proc_status_kib("VmRSS:");
    const long threads_before = proc_thread_count();

    const auto config = child_config("idle", {"sleep"});
    auto start = Clock::now();
    for (long i = 0; i < count; ++i) {
      auto handle = backend->spawn_instance(config);
      if (!handle) {
        state.SkipWithError(handle.error().message.c_str());
        return;
      }
    }
    const double spawn_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    // Let every reader thread reach its poll() and the host settle.
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const long rss_after = proc_status_kib("VmRSS:");
    const long threads_after = proc_thread_count();
    auto listed = backend->list_instances("idle");
    const auto live = listed ? static_cast<long>(listed->size()) : 0L;

    start = Clock::now();
    backend.reset();  // stops and reaps all of them
    const double stop_seconds = std::chrono::duration<double>(Clock::now() - start).count();

    state.counters["instances"] = static_cast<double>(live);
    state.counters["rss_kib_per_instance"] = static_cast<double>(rss_after - rss_before) / static_cast<double>(count);
    state.counters["threads_per_instance"] =
        static_cast<double>(threads_after - threads_before) / static_cast<double>(count);
    state.counters["host_rss_mib"] = static_cast<double>(rss_after) / 1024.0;
    state.counters["host_threads"] = static_cast<double>(threads_after);
    state.counters["spawn_all_s"] = spawn_seconds;
    state.counters["stop_all_s"] = stop_seconds;
    state.counters["fd_limit"] = static_cast<double>(fd_limit);
    if (live != count) state.SkipWithError("not every instance is running");
  }
}

BENCHMARK(BM_Scale)->Arg(1000)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace
}  // namespace modkit_bench

MODKIT_BENCH_MAIN()
