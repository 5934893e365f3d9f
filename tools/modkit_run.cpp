// modkit-run: a small supervisor built on modkit. Runs the modules it is
// given, forwards their logs, stops them all on Ctrl-C / SIGTERM (or after
// --seconds). With --example it runs three built-in sample modules.
//
//   modkit-run [--json] [--seconds N] --example
//   modkit-run [--json] [--seconds N] NAME=PROGRAM [ARG...] [--- NAME=PROGRAM [ARG...]]...
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#endif

#include "modkit/modkit.hpp"
#include "sample_modules.hpp"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: modkit-run [--json] [--seconds N] --example\n"
               "       modkit-run [--json] [--seconds N] NAME=PROGRAM [ARG...] [--- NAME=PROGRAM [ARG...]]...\n");
  return 2;
}

std::string own_path(const char* argv0) {
#ifdef _WIN32
  char buffer[MAX_PATH];
  DWORD length = GetModuleFileNameA(nullptr, buffer, MAX_PATH);
  return length > 0 ? std::string(buffer, length) : std::string(argv0);
#else
  char buffer[4096];
  ssize_t length = readlink("/proc/self/exe", buffer, sizeof buffer);
  return length > 0 ? std::string(buffer, static_cast<std::size_t>(length)) : std::string(argv0);
#endif
}

// Cancels the token on Ctrl-C or SIGTERM.
#ifdef _WIN32
modkit::CancellationToken* g_token = nullptr;
BOOL WINAPI on_console_event(DWORD) {
  if (g_token) g_token->cancel();
  return TRUE;
}
void cancel_on_signals(modkit::CancellationToken& token) {
  g_token = &token;
  SetConsoleCtrlHandler(on_console_event, TRUE);
}
#else
// The handler only calls the async-signal-safe cancel_from_signal(); the
// token's relay thread does the rest (enable_signal_cancel, before it).
modkit::CancellationToken* g_token = nullptr;
extern "C" void on_signal(int) { g_token->cancel_from_signal(); }
void cancel_on_signals(modkit::CancellationToken& token) {
  g_token = &token;
  if (auto enabled = token.enable_signal_cancel(); !enabled) {
    std::fprintf(stderr, "modkit-run: %s\n", enabled.error().message.c_str());
    return;
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--sample-module") == 0) {
    int code = modkit_run::run_sample_module(argv[2]);
    return code < 0 ? usage() : code;
  }
  bool json = false;
  double seconds = 0;
  std::vector<modkit::OopModuleConfig> modules;
  int i = 1;
  for (; i < argc && argv[i][0] == '-' && std::strcmp(argv[i], "---") != 0; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--example") == 0) {
      for (const char* kind : {"api", "worker", "flaky"}) {
        modkit::OopModuleConfig config(kind, modkit::BackendKind::LocalProcess);
        config.binary = own_path(argv[0]);
        config.args = {"--sample-module", kind};
        modules.push_back(std::move(config));
      }
    } else {
      return usage();
    }
  }
  while (i < argc) {  // NAME=PROGRAM ARG... up to the next "---"
    std::string spec = argv[i++];
    std::size_t equals = spec.find('=');
    if (equals == std::string::npos || equals == 0) return usage();
    modkit::OopModuleConfig config(spec.substr(0, equals), modkit::BackendKind::LocalProcess);
    config.binary = spec.substr(equals + 1);
    while (i < argc && std::strcmp(argv[i], "---") != 0) config.args.push_back(argv[i++]);
    if (i < argc) ++i;
    modules.push_back(std::move(config));
  }
  if (modules.empty()) return usage();

  modkit::CancellationToken token;
  std::shared_ptr<modkit::LogSink> sink;
  if (json) {
    sink = std::make_shared<modkit::JsonLogSink>(stdout);
  } else {
    sink = std::make_shared<modkit::TextLogSink>(stdout);
  }
  auto created = modkit::LocalProcessBackend::create(token, sink);
  if (!created) {
    std::fprintf(stderr, "modkit-run: %s\n", created.error().message.c_str());
    return 1;
  }
  modkit::LocalProcessBackend& backend = **created;
  cancel_on_signals(token);

  int failures = 0;
  for (const auto& config : modules) {
    auto handle = backend.spawn_instance(config);
    if (!handle) {
      std::fprintf(stderr, "modkit-run: %s\n", handle.error().message.c_str());
      ++failures;
    }
  }
  if (failures == static_cast<int>(modules.size())) return 1;

  if (seconds > 0) {
    token.wait_for(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(seconds)));
  } else {
    token.wait();
  }
  token.cancel();
  backend.wait_for_shutdown();
  return failures == 0 ? 0 : 1;
}
