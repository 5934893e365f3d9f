// BM_Spawn/<impl> and BM_SpawnLargeParent/<impl>: start the helper child in
// "exit" mode with stdout and stderr piped, read both to EOF, reap. For modkit
// this is spawn_instance until on_exit reports the exit. "modkit" runs with
// the default options, so each instance gets a cgroup of its own wherever the
// automatic containment finds a writable one (counter "contained");
// "modkit_uncontained" turns containment off, to price it in the same run.
//
// The large-parent variants first make the host hold 1 GiB of touched memory
// in 4 KiB pages (MADV_NOHUGEPAGE, as a fragmented heap would be), where a
// plain fork() has to copy a page table entry per page.
#include <sys/mman.h>

#include <cstring>

#include "bench_common.hpp"
#include "peers/peers.hpp"

namespace modkit_bench {
namespace {

// The 1 GiB block, mapped while a large-parent benchmark runs and unmapped
// before a small-parent one (benchmarks may run interleaved).
class LargeParent {
 public:
  static constexpr std::size_t kBytes = std::size_t{1} << 30;
  static void hold(bool wanted) {
    if (wanted && !memory_) {
      void* memory = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (memory == MAP_FAILED) return;
      madvise(memory, kBytes, MADV_NOHUGEPAGE);
      std::memset(memory, 0x5a, kBytes);  // touch every page
      memory_ = memory;
    } else if (!wanted && memory_) {
      munmap(memory_, kBytes);
      memory_ = nullptr;
    }
  }
  static bool held() { return memory_ != nullptr; }

 private:
  static inline void* memory_ = nullptr;
};

bool prepare(benchmark::State& state, bool large_parent) {
  LargeParent::hold(large_parent);
  if (large_parent && !LargeParent::held()) {
    state.SkipWithError("cannot map 1 GiB for the large-parent variant");
    return false;
  }
  state.counters["host_rss_mib"] = static_cast<double>(proc_status_kib("VmRSS:")) / 1024.0;
  return true;
}

void spawn_modkit(benchmark::State& state, bool large_parent, modkit::Containment containment) {
  if (!prepare(state, large_parent)) return;
  Signal signal;
  std::atomic<std::uint64_t> exits{0};
  auto sink = std::make_shared<CountingSink>(signal);
  modkit::LocalProcessOptions options;
  options.containment = containment;
  options.on_exit = [&](const modkit::InstanceHandle&, const modkit::ExitStatus&) {
    exits.fetch_add(1, std::memory_order_release);
    signal.notify();
  };
  modkit::CancellationToken token;
  modkit::LocalProcessBackend backend(token, sink, options);
  const auto config = child_config("spawn", {"exit"});
  {
    // Contained when the listing can count the instance's processes.
    auto probe = backend.spawn_instance(child_config("probe", {"sleep"}));
    auto listed = backend.list_instances("probe");
    state.counters["contained"] = listed && !listed->empty() && listed->front().processes ? 1 : 0;
    if (probe) {
      (void)backend.stop_instance(*probe);
      signal.wait([&] { return exits.load(std::memory_order_acquire) >= 1; });
    }
  }
  std::uint64_t expected = exits.load(std::memory_order_acquire);
  const std::uint64_t threads_before = library_threads_started();
  for (auto _ : state) {
    auto handle = backend.spawn_instance(config);
    if (!handle) {
      state.SkipWithError(handle.error().message.c_str());
      break;
    }
    ++expected;
    if (!signal.wait([&] { return exits.load(std::memory_order_acquire) >= expected; })) {
      state.SkipWithError("exit not observed within 60 s");
      break;
    }
  }
  // Counted, not timed: reader threads come from the backend's pool.
  state.counters["threads_per_spawn"] =
      state.iterations() ? static_cast<double>(library_threads_started() - threads_before) /
                               static_cast<double>(state.iterations())
                         : 0.0;
}

// BM_SpawnConcurrent/8/<impl>: eight threads each spawning a child and
// waiting for its exit, on one shared backend for modkit.
struct SharedBackend {
  Signal signal;
  std::shared_ptr<CountingSink> sink = std::make_shared<CountingSink>(signal);
  modkit::CancellationToken token;
  std::unique_ptr<modkit::LocalProcessBackend> backend;
};

SharedBackend& shared_backend() {
  static SharedBackend* shared = [] {
    auto* made = new SharedBackend;  // lives until the program ends
    made->backend = std::make_unique<modkit::LocalProcessBackend>(made->token, made->sink);
    return made;
  }();
  return *shared;
}

void spawn_concurrent_modkit(benchmark::State& state) {
  SharedBackend& shared = shared_backend();
  const auto config = child_config("concurrent", {"exit"});
  struct Done {
    std::mutex mutex;
    std::condition_variable cv;
    bool exited = false;
  };
  auto done = std::make_shared<Done>();
  modkit::InstanceEvents events;
  events.on_exit = [done](const modkit::InstanceHandle&, const modkit::ExitStatus&) {
    std::lock_guard<std::mutex> lock(done->mutex);
    done->exited = true;
    done->cv.notify_all();
  };
  for (auto _ : state) {
    {
      std::lock_guard<std::mutex> lock(done->mutex);
      done->exited = false;
    }
    auto handle = shared.backend->start_instance(config, events);
    if (!handle) {
      state.SkipWithError(handle.error().message.c_str());
      break;
    }
    std::unique_lock<std::mutex> lock(done->mutex);
    if (!done->cv.wait_for(lock, std::chrono::seconds(60), [&] { return done->exited; })) {
      state.SkipWithError("exit not observed within 60 s");
      break;
    }
  }
}

void spawn_concurrent_posix(benchmark::State& state) {
  for (auto _ : state) {
    RawChild child = raw_spawn({"exit"});
    raw_drain_and_reap(child);
  }
}

void spawn_posix(benchmark::State& state, bool large_parent) {
  if (!prepare(state, large_parent)) return;
  for (auto _ : state) {
    RawChild child = raw_spawn({"exit"});
    raw_drain_and_reap(child);
  }
}

[[maybe_unused]] void spawn_peer(benchmark::State& state, bool large_parent, std::function<void()> (*make)()) {
  if (!prepare(state, large_parent)) return;
  auto spawn_once = make();
  for (auto _ : state) spawn_once();
}

void register_all() {
  struct Impl {
    const char* name;
    std::function<void(benchmark::State&, bool)> run;
  };
  std::vector<Impl> impls = {
      {"modkit", [](benchmark::State& state, bool large) { spawn_modkit(state, large, modkit::Containment::Automatic); }},
      {"modkit_uncontained",
       [](benchmark::State& state, bool large) { spawn_modkit(state, large, modkit::Containment::Off); }},
      {"posix_spawn", spawn_posix},
#ifdef MODKIT_BENCH_HAVE_LIBUV
      {"libuv", [](benchmark::State& state, bool large) { spawn_peer(state, large, make_libuv_spawner); }},
#endif
#ifdef MODKIT_BENCH_HAVE_BOOST_PROCESS_V2
      {"boost_process_v2",
       [](benchmark::State& state, bool large) { spawn_peer(state, large, make_boost_process_v2_spawner); }},
#endif
  };
  for (bool large : {false, true}) {
    for (const auto& impl : impls) {
      std::string name = std::string(large ? "BM_SpawnLargeParent/" : "BM_Spawn/") + impl.name;
      auto run = impl.run;
      benchmark::RegisterBenchmark(name.c_str(), [run, large](benchmark::State& state) { run(state, large); })
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond)
          ->MinTime(0.4)
          ->Repetitions(5);
    }
  }
}

void register_concurrent() {
  for (auto [name, run] : {std::pair{"BM_SpawnConcurrent/8/modkit", spawn_concurrent_modkit},
                           std::pair{"BM_SpawnConcurrent/8/posix_spawn", spawn_concurrent_posix}}) {
    benchmark::RegisterBenchmark(name, run)
        ->Threads(8)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(0.4)
        ->Repetitions(5);
  }
}

const bool registered = (register_all(), register_concurrent(), true);

}  // namespace
}  // namespace modkit_bench

MODKIT_BENCH_MAIN()
