#include "sample_modules.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace modkit_run {
namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

void pause_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// A JSON-logging service that shuts down cleanly on SIGTERM.
int api() {
  std::signal(SIGTERM, on_term);
  std::printf("{\"level\":\"info\",\"msg\":\"api listening\",\"port\":8080}\n");
  for (int request = 1; !g_stop; ++request) {
    std::printf("{\"level\":\"debug\",\"msg\":\"handled request\",\"id\":%d}\n", request);
    if (request % 4 == 0) std::printf("{\"level\":\"warn\",\"msg\":\"slow request\",\"id\":%d}\n", request);
    std::fflush(stdout);
    pause_ms(400);
  }
  std::printf("{\"level\":\"info\",\"msg\":\"api stopped cleanly\"}\n");
  return 0;
}

// A tracing-style worker that writes progress to stdout and trouble to stderr.
int worker() {
  std::signal(SIGTERM, on_term);
  for (int job = 1; !g_stop; ++job) {
    std::printf("2026-01-01T00:00:00Z  INFO worker: finished job %d\n", job);
    if (job % 3 == 0) std::fprintf(stderr, "2026-01-01T00:00:00Z ERROR worker: job %d retried\n", job);
    std::fflush(stdout);
    pause_ms(600);
  }
  std::printf("2026-01-01T00:00:00Z  INFO worker: drained queue, bye\n");
  return 0;
}

// Crashes after a short while, to show crash reporting.
int flaky() {
  std::printf("2026-01-01T00:00:00Z DEBUG flaky: warming up\n");
  std::fflush(stdout);
  pause_ms(1500);
  std::fprintf(stderr, "2026-01-01T00:00:00Z ERROR flaky: about to crash\n");
  std::fflush(stderr);
  std::abort();
}

}  // namespace

int run_sample_module(std::string_view kind) {
  if (kind == "api") return api();
  if (kind == "worker") return worker();
  if (kind == "flaky") return flaky();
  return -1;
}

}  // namespace modkit_run
