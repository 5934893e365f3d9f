// BM_ListInstances/1000: list_instances of a module with 1000 live (sleeping)
// instances, while another thread keeps spawning and stopping instances of a
// second module (so the map's lock is contended). The 1000 instances are
// started once per process and shared by every run of the benchmark.
#include <memory>
#include <thread>

#include "bench_common.hpp"

namespace modkit_bench {
namespace {

struct Fleet {
  Signal signal;
  std::shared_ptr<CountingSink> sink = std::make_shared<CountingSink>(signal);
  modkit::CancellationToken token;
  std::unique_ptr<modkit::LocalProcessBackend> backend;
  std::string error;

  explicit Fleet(int count) {
    backend = std::make_unique<modkit::LocalProcessBackend>(token, sink);
    const auto config = child_config("listed", {"sleep"});
    for (int i = 0; i < count; ++i) {
      auto handle = backend->spawn_instance(config);
      if (!handle) {
        error = handle.error().message;
        return;
      }
    }
  }
};

Fleet& fleet(int count) {
  static Fleet instance(count);  // stopped by the backend's destructor at exit
  return instance;
}

void BM_ListInstances(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  Fleet& listed = fleet(static_cast<int>(count));
  if (!listed.error.empty()) {
    state.SkipWithError(listed.error.c_str());
    return;
  }
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> churn_cycles{0};
  std::thread churn([&] {
    const auto config = child_config("churn", {"sleep"});
    while (!stop.load()) {
      auto handle = listed.backend->spawn_instance(config);
      if (!handle) break;
      (void)listed.backend->stop_instance(*handle);
      churn_cycles.fetch_add(1);
    }
  });
  bool wrong_size = false;
  for (auto _ : state) {
    auto list = listed.backend->list_instances("listed");
    benchmark::DoNotOptimize(list);
    if (!list || list->size() != count) wrong_size = true;
  }
  stop = true;
  churn.join();
  if (wrong_size) state.SkipWithError("list_instances did not return every live instance");
  state.counters["churn_cycles"] = static_cast<double>(churn_cycles.load());
}

BENCHMARK(BM_ListInstances)->Arg(1000)->UseRealTime()->Unit(benchmark::kMicrosecond)->MinTime(0.5)->Repetitions(3);

}  // namespace
}  // namespace modkit_bench

MODKIT_BENCH_MAIN()
