#include "bench_common.hpp"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace modkit_bench {

modkit::OopModuleConfig child_config(std::string module, std::vector<std::string> args) {
  modkit::OopModuleConfig config(std::move(module), modkit::BackendKind::LocalProcess);
  config.binary = child_path();
  config.args = std::move(args);
  return config;
}

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bench: %s: %s\n", what, std::strerror(errno));
  std::abort();
}

}  // namespace

namespace {
std::atomic<std::uint64_t> g_library_threads{0};
}  // namespace

std::uint64_t library_threads_started() { return g_library_threads.load(); }

RawChild raw_spawn(const std::vector<std::string>& args) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) die("pipe2");

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);

  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attributes, &empty);
  posix_spawnattr_setsigdefault(&attributes, &all);
  posix_spawnattr_setpgroup(&attributes, 0);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(child_path()));
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);

  pid_t pid = -1;
  int error = posix_spawn(&pid, child_path(), &actions, &attributes, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  close(out[1]);
  close(err[1]);
  if (error != 0) {
    errno = error;
    die("posix_spawn");
  }
  return RawChild{pid, out[0], err[0]};
}

int raw_drain_and_reap(RawChild& child) {
  char buffer[4096];
  pollfd fds[2] = {{child.out, POLLIN, 0}, {child.err, POLLIN, 0}};
  int open_count = 2;
  while (open_count > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    for (auto& entry : fds) {
      if (entry.fd < 0 || entry.revents == 0) continue;
      ssize_t got = read(entry.fd, buffer, sizeof buffer);
      if (got > 0 || (got < 0 && errno == EINTR)) continue;
      close(entry.fd);
      entry.fd = -1;
      --open_count;
    }
  }
  child.out = child.err = -1;
  int status = 0;
  while (waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

bool raw_read_ready(int fd) {
  char line[16];
  std::size_t used = 0;
  while (used < sizeof line) {
    ssize_t got = read(fd, line + used, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    if (line[used] == '\n') return used == 5 && std::memcmp(line, "ready", 5) == 0;
    ++used;
  }
  return false;
}

long proc_status_kib(const char* field) {
  std::FILE* file = std::fopen("/proc/self/status", "r");
  if (!file) return -1;
  char line[256];
  long value = -1;
  std::size_t length = std::strlen(field);
  while (std::fgets(line, sizeof line, file)) {
    if (std::strncmp(line, field, length) == 0) {
      value = std::strtol(line + length, nullptr, 10);
      break;
    }
  }
  std::fclose(file);
  return value;
}

long proc_thread_count() { return proc_status_kib("Threads:"); }

long raise_fd_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return static_cast<long>(limit.rlim_cur);
}

namespace {

// Drops the configuration suffixes from every run's name before the real
// reporter prints it.
template <typename Base>
class StableNames final : public Base {
 public:
  using Base::Base;
  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    std::vector<benchmark::BenchmarkReporter::Run> renamed = runs;
    for (auto& run : renamed) {
      run.run_name.min_time.clear();
      run.run_name.min_warmup_time.clear();
      run.run_name.iterations.clear();
      run.run_name.repetitions.clear();
      run.run_name.time_type.clear();
      run.run_name.threads.clear();  // BM_SpawnConcurrent/8/... says it in its name
    }
    Base::ReportRuns(renamed);
  }
};

// --benchmark_format as Google Benchmark reads it: the BENCHMARK_FORMAT
// environment variable, overridden by the last flag on the command line.
std::string output_format(int argc, char** argv) {
  const char* from_environment = std::getenv("BENCHMARK_FORMAT");
  std::string format = from_environment ? from_environment : "console";
  static const char kFlag[] = "--benchmark_format=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], kFlag, sizeof kFlag - 1) == 0) format = argv[i] + sizeof kFlag - 1;
  }
  return format;
}

}  // namespace

int run_benchmarks(int argc, char** argv) {
  raise_fd_limit();
  bool file_output = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--benchmark_out=", 16) == 0) file_output = true;
  }
  std::string format = output_format(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  auto options = benchmark::ConsoleReporter::OO_Tabular;
  if (isatty(1)) options = static_cast<benchmark::ConsoleReporter::OutputOptions>(options | benchmark::ConsoleReporter::OO_Color);
  // Our tabular console for people; the library's own JSON or CSV reporter
  // (names still stable) when stdout was asked for in that format.
  StableNames<benchmark::ConsoleReporter> console(options);
  StableNames<benchmark::JSONReporter> json;
  // Deprecated upstream but still what --benchmark_format=csv gives.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  StableNames<benchmark::CSVReporter> csv;
#pragma GCC diagnostic pop
  benchmark::BenchmarkReporter* display = nullptr;
  if (format == "console") {
    display = &console;
  } else if (format == "json") {
    display = &json;
  } else if (format == "csv") {
    display = &csv;
  } else {
    std::fprintf(stderr, "bench: unknown --benchmark_format '%s' (console, json or csv)\n", format.c_str());
    return 1;
  }
  StableNames<benchmark::JSONReporter> file;
  benchmark::RunSpecifiedBenchmarks(display, file_output ? &file : nullptr);
  benchmark::Shutdown();
  return 0;
}

}  // namespace modkit_bench

extern "C" int __real_pthread_create(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
extern "C" int __wrap_pthread_create(pthread_t* thread, const pthread_attr_t* attributes, void* (*start)(void*),
                                     void* argument) {
  modkit_bench::g_library_threads.fetch_add(1);
  return __real_pthread_create(thread, attributes, start, argument);
}
