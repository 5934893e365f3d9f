#include "sample_modules.hpp"

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#ifdef _WIN32
#include <windows.h>
#else
#include <unistd.h>
#endif

namespace modkit_run {
namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

void pause_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// Readiness::Mode::Notify from the module's side: one line on the
// descriptor (POSIX) or handle (Windows) named in MODKIT_NOTIFY_FD.
void notify(const std::string& line) {
  const char* value = std::getenv("MODKIT_NOTIFY_FD");
  if (!value) return;
  std::string text = line + "\n";
#ifdef _WIN32
  HANDLE handle = reinterpret_cast<HANDLE>(static_cast<std::intptr_t>(std::strtoll(value, nullptr, 10)));
  DWORD written = 0;
  WriteFile(handle, text.data(), static_cast<DWORD>(text.size()), &written, nullptr);
#else
  (void)!write(static_cast<int>(std::strtol(value, nullptr, 10)), text.data(), text.size());
#endif
}

// A JSON-logging service: says when it is ready on its notification
// descriptor, and shuts down cleanly on SIGTERM.
int api() {
  std::signal(SIGTERM, on_term);
  notify("STATUS=loading routes");
  pause_ms(300);
  std::printf("{\"level\":\"info\",\"msg\":\"api listening\",\"port\":8080}\n");
  std::fflush(stdout);
  notify("READY=1");
  for (int request = 1; !g_stop; ++request) {
    std::printf("{\"level\":\"debug\",\"msg\":\"handled request\",\"id\":%d}\n", request);
    if (request % 4 == 0) std::printf("{\"level\":\"warn\",\"msg\":\"slow request\",\"id\":%d}\n", request);
    std::fflush(stdout);
    pause_ms(400);
  }
  std::printf("{\"level\":\"info\",\"msg\":\"api stopped cleanly\"}\n");
  return 0;
}

// A tracing-style worker, ready once it prints "worker: ready".
int worker() {
  std::signal(SIGTERM, on_term);
  pause_ms(200);
  std::printf("2026-01-01T00:00:00Z  INFO worker: ready\n");
  std::fflush(stdout);
  for (int job = 1; !g_stop; ++job) {
    std::printf("2026-01-01T00:00:00Z  INFO worker: finished job %d\n", job);
    if (job % 3 == 0) std::fprintf(stderr, "2026-01-01T00:00:00Z ERROR worker: job %d retried\n", job);
    std::fflush(stdout);
    pause_ms(600);
  }
  std::printf("2026-01-01T00:00:00Z  INFO worker: drained queue, bye\n");
  return 0;
}

// Fails at once, every time: a crash loop for the supervisor to back off
// from and give up on.
int flaky() {
  std::fprintf(stderr, "2026-01-01T00:00:00Z ERROR flaky: cannot open /nonexistent/config\n");
  std::fflush(stderr);
  return 3;
}

// Takes memory 8 MiB at a time, touching every page, up to 4 GiB. Under an
// address-space limit `new` throws std::bad_alloc; nothing catches it, so
// the runtime prints "terminate called after throwing an instance of
// 'std::bad_alloc'" and aborts (SIGABRT).
int hog() {
  constexpr int kStepMib = 8;
  constexpr std::size_t kStep = std::size_t(kStepMib) << 20;
  std::vector<char*> held;  // kept, so the allocations cannot be optimised away
  for (int mib = kStepMib; mib <= 4096; mib += kStepMib) {
    char* block = new char[kStep];
    for (std::size_t at = 0; at < kStep; at += 4096) block[at] = static_cast<char>(at >> 12);
    held.push_back(block);
    std::printf("holding %d MiB\n", mib);
    std::fflush(stdout);
    pause_ms(20);
  }
  std::printf("held 4 GiB, no limit stopped me\n");
  for (char* block : held) delete[] block;
  return 0;
}

}  // namespace

int run_sample_module(std::string_view kind) {
  if (kind == "api") return api();
  if (kind == "worker") return worker();
  if (kind == "flaky") return flaky();
  if (kind == "hog") return hog();
  return -1;
}

}  // namespace modkit_run
