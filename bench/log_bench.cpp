// BM_LogThroughput/<line_bytes>: the helper child writes 64 MiB of lines of
// <line_bytes> bytes (newline included) as fast as it can; modkit's reader
// thread splits them and hands each to a counting sink. Timed from
// spawn_instance until every line was counted and the exit observed.
// BM_LogThroughputRaw/<line_bytes>: the floor, the same child started with raw
// posix_spawn, its stdout read() in 64 KiB chunks and split with memchr.
//
// Both report items_per_second = lines/s and bytes_per_second (line bytes,
// terminators included), over wall-clock time.
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include "bench_common.hpp"

namespace modkit_bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kBytesPerRun = std::uint64_t{64} << 20;

std::uint64_t lines_per_run(benchmark::State& state) {
  return kBytesPerRun / static_cast<std::uint64_t>(state.range(0));
}

void report(benchmark::State& state, std::uint64_t lines, std::uint64_t bytes, Clock::duration elapsed) {
  double seconds = std::chrono::duration<double>(elapsed).count();
  state.counters["items_per_second"] = static_cast<double>(lines) / seconds;
  state.counters["bytes_per_second"] = static_cast<double>(bytes) / seconds;
}

void BM_LogThroughput(benchmark::State& state) {
  const std::uint64_t lines = lines_per_run(state);
  Signal signal;
  std::atomic<std::uint64_t> exits{0};
  auto sink = std::make_shared<CountingSink>(signal);
  modkit::LocalProcessOptions options;
  options.on_exit = [&](const modkit::InstanceHandle&, const modkit::ExitStatus&) {
    exits.fetch_add(1, std::memory_order_release);
    signal.notify();
  };
  modkit::CancellationToken token;
  modkit::LocalProcessBackend backend(token, sink, options);
  const auto config = child_config("log", {"spew", std::to_string(state.range(0)), std::to_string(lines)});
  std::uint64_t total_lines = 0, total_bytes = 0, expected_exits = 0;
  Clock::duration elapsed{};
  for (auto _ : state) {
    sink->reset(lines);
    auto start = Clock::now();
    auto handle = backend.spawn_instance(config);
    if (!handle) {
      state.SkipWithError(handle.error().message.c_str());
      return;
    }
    ++expected_exits;
    if (!signal.wait([&] { return sink->lines() >= lines && exits.load() >= expected_exits; })) {
      state.SkipWithError("lines not delivered within 60 s");
      return;
    }
    elapsed += Clock::now() - start;
    total_lines += sink->lines();
    total_bytes += sink->bytes();
  }
  if (total_lines != lines * state.iterations()) state.SkipWithError("line count mismatch");
  report(state, total_lines, total_bytes, elapsed);
}

void BM_LogThroughputRaw(benchmark::State& state) {
  const std::uint64_t lines = lines_per_run(state);
  const std::vector<std::string> args = {"spew", std::to_string(state.range(0)), std::to_string(lines)};
  constexpr std::size_t kChunk = 64 * 1024;
  std::unique_ptr<char[]> buffer(new char[kChunk]);
  std::uint64_t total_lines = 0, total_bytes = 0;
  Clock::duration elapsed{};
  for (auto _ : state) {
    auto start = Clock::now();
    RawChild child = raw_spawn(args);
    std::size_t partial = 0;  // bytes of a line cut at a chunk boundary
    for (;;) {
      ssize_t got = read(child.out, buffer.get(), kChunk);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      const char* at = buffer.get();
      const char* end = at + got;
      while (const void* found = std::memchr(at, '\n', static_cast<std::size_t>(end - at))) {
        const char* newline = static_cast<const char*>(found);
        std::size_t length = partial + static_cast<std::size_t>(newline - at);
        benchmark::DoNotOptimize(length);
        total_bytes += length + 1;
        ++total_lines;
        partial = 0;
        at = newline + 1;
      }
      partial += static_cast<std::size_t>(end - at);
    }
    raw_drain_and_reap(child);
    elapsed += Clock::now() - start;
  }
  if (total_lines != lines * state.iterations()) state.SkipWithError("line count mismatch");
  report(state, total_lines, total_bytes, elapsed);
}

BENCHMARK(BM_LogThroughput)->Arg(32)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond)
    ->MinTime(0.3)->Repetitions(3);
BENCHMARK(BM_LogThroughputRaw)->Arg(32)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond)
    ->MinTime(0.3)->Repetitions(3);

}  // namespace
}  // namespace modkit_bench

MODKIT_BENCH_MAIN()
