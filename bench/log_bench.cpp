// BM_LogThroughput/<line_bytes>: the helper child writes 64 MiB of lines of
// <line_bytes> bytes (newline included) as fast as it can; modkit's reader
// thread splits them and hands each to a counting sink. Timed from
// spawn_instance until every line was counted and the exit observed.
// BM_LogThroughputRaw/<line_bytes>: the floor, the same child started with raw
// posix_spawn, its stdout read() in 64 KiB chunks and split with memchr.
//
// BM_LogToJson/<line_bytes>: the same child writes 16 MiB of lines; modkit's
// JsonLogSink writes them to a regular temporary file (truncated before each
// run). BM_LogToJsonRaw/<line_bytes>: the floor, a hand-written loop over the
// raw child's stdout that splits the lines, finds the level (second token),
// formats the same JSON object per line (one timestamp text per chunk, the
// line escaped, no UTF-8 repair: the lines are ASCII) and writes each
// chunk's objects with one write() to a file of its own, truncated alike.
//
// All report items_per_second = lines/s and bytes_per_second (line bytes,
// terminators included), over wall-clock time.
#include <errno.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
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

constexpr std::uint64_t kJsonBytesPerRun = std::uint64_t{16} << 20;

// A regular file in $TMPDIR (or /tmp), removed at once: only the descriptor
// names it.
int temp_file() {
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string(dir && *dir ? dir : "/tmp") + "/modkit_log_bench_XXXXXX";
  int fd = mkstemp(path.data());
  if (fd >= 0) unlink(path.c_str());
  return fd;
}

bool truncate_file(int fd) { return ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0; }

// Forwards to a JsonLogSink and counts the stdout lines it wrote.
class CountingJsonSink final : public modkit::LogSink {
 public:
  CountingJsonSink(Signal& signal, int fd) : signal_(signal), json_(fd) {}
  void write(const modkit::LogRecord& record) override {
    json_.write(record);
    if (record.stream == modkit::LogStream::Stdout) counted(1);
  }
  void write_batch(const modkit::LogRecord* records, std::size_t count) override {
    json_.write_batch(records, count);
    if (count > 0 && records[0].stream == modkit::LogStream::Stdout) counted(count);
  }
  void reset(std::uint64_t target) {
    lines_ = 0;
    target_ = target;
  }
  std::uint64_t lines() const { return lines_.load(std::memory_order_relaxed); }

 private:
  void counted(std::uint64_t count) {
    std::uint64_t before = lines_.load(std::memory_order_relaxed);
    lines_.store(before + count, std::memory_order_relaxed);
    if (before < target_ && before + count >= target_) signal_.notify();
  }
  Signal& signal_;
  modkit::JsonLogSink json_;
  std::atomic<std::uint64_t> lines_{0};
  std::uint64_t target_ = 0;
};

void BM_LogToJson(benchmark::State& state) {
  const std::uint64_t lines = kJsonBytesPerRun / static_cast<std::uint64_t>(state.range(0));
  const int fd = temp_file();
  if (fd < 0) {
    state.SkipWithError("no temporary file");
    return;
  }
  Signal signal;
  std::atomic<std::uint64_t> exits{0};
  auto sink = std::make_shared<CountingJsonSink>(signal, fd);
  modkit::LocalProcessOptions options;
  options.on_exit = [&](const modkit::InstanceHandle&, const modkit::ExitStatus&) {
    exits.fetch_add(1, std::memory_order_release);
    signal.notify();
  };
  modkit::CancellationToken token;
  std::uint64_t total_lines = 0, expected_exits = 0;
  Clock::duration elapsed{};
  {
    modkit::LocalProcessBackend backend(token, sink, options);
    const auto config = child_config("log", {"spew", std::to_string(state.range(0)), std::to_string(lines)});
    for (auto _ : state) {
      state.PauseTiming();
      if (!truncate_file(fd)) state.SkipWithError("truncate failed");
      sink->reset(lines);
      state.ResumeTiming();
      auto start = Clock::now();
      auto handle = backend.spawn_instance(config);
      if (!handle) {
        state.SkipWithError(handle.error().message.c_str());
        break;
      }
      ++expected_exits;
      if (!signal.wait([&] { return sink->lines() >= lines && exits.load() >= expected_exits; })) {
        state.SkipWithError("lines not delivered within 60 s");
        break;
      }
      elapsed += Clock::now() - start;
      total_lines += sink->lines();
    }
  }
  close(fd);
  if (total_lines != lines * state.iterations()) state.SkipWithError("line count mismatch");
  report(state, total_lines, total_lines * static_cast<std::uint64_t>(state.range(0)), elapsed);
}

// "2026-11-27T17:34:10.123Z", as JsonLogSink writes it.
void append_utc(std::string& out, std::chrono::system_clock::time_point when) {
  using namespace std::chrono;
  const auto ms = duration_cast<milliseconds>(when.time_since_epoch()).count();
  const time_t seconds = static_cast<time_t>(ms / 1000);
  struct tm utc;
  gmtime_r(&seconds, &utc);
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(ms % 1000));
  out += text;
}

const char* level_of(const char* line, std::size_t size) {
  const void* blank = std::memchr(line, ' ', size);
  if (blank == nullptr) return "info";
  const char* word = static_cast<const char*>(blank) + 1;
  const std::size_t left = size - static_cast<std::size_t>(word - line);
  auto is = [&](const char* name, std::size_t length) {
    return left >= length && std::memcmp(word, name, length) == 0 && (left == length || word[length] == ' ');
  };
  if (is("INFO", 4)) return "info";
  if (is("WARN", 4)) return "warn";
  if (is("ERROR", 5)) return "error";
  if (is("DEBUG", 5)) return "debug";
  if (is("TRACE", 5)) return "trace";
  return "info";
}

void append_json_line(std::string& out, const char* line, std::size_t size) {
  static const char kHex[] = "0123456789abcdef";
  const char* run = line;
  const char* end = line + size;
  for (const char* p = line; p < end; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7F) continue;
    out.append(run, static_cast<std::size_t>(p - run));
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
    run = p + 1;
  }
  out.append(run, static_cast<std::size_t>(end - run));
}

void BM_LogToJsonRaw(benchmark::State& state) {
  const std::uint64_t lines = kJsonBytesPerRun / static_cast<std::uint64_t>(state.range(0));
  const std::vector<std::string> args = {"spew", std::to_string(state.range(0)), std::to_string(lines)};
  const int fd = temp_file();
  if (fd < 0) {
    state.SkipWithError("no temporary file");
    return;
  }
  constexpr std::size_t kChunk = 64 * 1024;
  std::unique_ptr<char[]> buffer(new char[kChunk]);
  const std::string id = modkit::new_uuid_v7();
  std::string out, carry, stamp;
  std::uint64_t total_lines = 0, total_bytes = 0;
  Clock::duration elapsed{};
  auto append = [&](const char* line, std::size_t size) {
    if (size > 0 && line[size - 1] == '\r') --size;
    out += "{\"timestamp\":\"";
    out += stamp;
    out += "\",\"level\":\"";
    out += level_of(line, size);
    out += "\",\"module\":\"log\",\"instance_id\":\"";
    out += id;
    out += "\",\"stream\":\"stdout\",\"continuation\":false,\"line\":\"";
    append_json_line(out, line, size);
    out += "\"}\n";
  };
  for (auto _ : state) {
    state.PauseTiming();
    if (!truncate_file(fd)) state.SkipWithError("truncate failed");
    state.ResumeTiming();
    auto start = Clock::now();
    RawChild child = raw_spawn(args);
    for (;;) {
      ssize_t got = read(child.out, buffer.get(), kChunk);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      stamp.clear();
      append_utc(stamp, std::chrono::system_clock::now());
      out.clear();
      const char* at = buffer.get();
      const char* end = at + got;
      while (const void* found = std::memchr(at, '\n', static_cast<std::size_t>(end - at))) {
        const char* newline = static_cast<const char*>(found);
        if (carry.empty()) {
          append(at, static_cast<std::size_t>(newline - at));
        } else {
          carry.append(at, static_cast<std::size_t>(newline - at));
          append(carry.data(), carry.size());
          carry.clear();
        }
        total_bytes += static_cast<std::size_t>(newline - at) + 1;
        ++total_lines;
        at = newline + 1;
      }
      carry.append(at, static_cast<std::size_t>(end - at));
      for (std::size_t done = 0; done < out.size();) {
        ssize_t wrote = ::write(fd, out.data() + done, out.size() - done);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote <= 0) break;
        done += static_cast<std::size_t>(wrote);
      }
    }
    raw_drain_and_reap(child);
    elapsed += Clock::now() - start;
  }
  close(fd);
  if (total_lines != lines * state.iterations()) state.SkipWithError("line count mismatch");
  report(state, total_lines, lines * state.iterations() * static_cast<std::uint64_t>(state.range(0)), elapsed);
}

BENCHMARK(BM_LogThroughput)->Arg(32)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond)
    ->MinTime(0.3)->Repetitions(3);
BENCHMARK(BM_LogThroughputRaw)->Arg(32)->Arg(256)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond)
    ->MinTime(0.3)->Repetitions(3);
BENCHMARK(BM_LogToJson)->Arg(32)->Arg(256)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3)
    ->Repetitions(3);
BENCHMARK(BM_LogToJsonRaw)->Arg(32)->Arg(256)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3)
    ->Repetitions(3);

}  // namespace
}  // namespace modkit_bench

MODKIT_BENCH_MAIN()
