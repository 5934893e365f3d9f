// modkit-run: a small supervisor built on modkit. Runs the modules it is
// given, forwards their logs, restarts them by their policy, stops them all
// on Ctrl-C / SIGTERM (or after --seconds). With --example it runs four
// built-in sample modules.
//
// Each module runs under a Supervisor with its own restart policy, readiness
// and backoff (see usage() and the README's "modkit-run").
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
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
               "usage: modkit-run [GLOBAL...] --example\n"
               "       modkit-run [GLOBAL...] --file FILE\n"
               "       modkit-run [GLOBAL...] MODULE [--- MODULE]...\n"
               "GLOBAL: --json  --seconds N  --grace MS  --strategy one-for-one|one-for-all|rest-for-one\n"
               "MODULE: [--restart=never|on-failure|always] [--ready=notify|line:PREFIX] [--ready-timeout=MS]\n"
               "        [--watchdog=MS] [--backoff=INITIAL_MS,MULTIPLIER,MAX_MS] [--jitter=F] [--reset-after=MS]\n"
               "        [--give-up-after=N] [--max-restarts=N/PERIOD_MS] [--success-codes=A,B] [--prevent-codes=A,B]\n"
               "        [LIMIT...] [PRIVILEGE...] NAME=PROGRAM [ARG...]\n"
               "LIMIT: [--memory-max=BYTES] [--memory-high=BYTES] [--cpu-percent=N] [--max-processes=N]\n"
               "       [--address-space=BYTES] [--data-size=BYTES] [--cpu-time=SECONDS] [--open-files=N]\n"
               "       [--file-size=BYTES] [--core-size=BYTES] [--user-processes=N] [--limits=required|best-effort]\n"
               "       BYTES: a number, or with K, M or G (KiB, MiB, GiB): --address-space=256M\n"
               "PRIVILEGE: [--user=UID --group=GID] [--groups=GID,GID...] (empty: none) [--no-new-privileges]\n"
               "           [--umask=OCTAL] [--die-with-host]\n"
               "FILE: one MODULE per line; '#' starts a comment; \"double quotes\" keep spaces in a word.\n"
               "Exit code: 0, or 3 when a module gave up, 1 when one could not start, 2 for usage errors.\n");
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

// --- Module specs: "--key=value ... NAME=PROGRAM ARG..." ------------------

// Whole numbers only, within [minimum, maximum]: strtoll saturates out of
// range (ERANGE), and a count must fit the int it goes to.
bool parse_int(const std::string& text, long long& value, long long minimum = LLONG_MIN, long long maximum = LLONG_MAX) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  value = std::strtoll(text.c_str(), &end, 10);
  return errno != ERANGE && end && *end == '\0' && value >= minimum && value <= maximum;
}

bool parse_count(const std::string& text, int& value) {
  long long number = 0;
  if (!parse_int(text, number, 0, INT_MAX)) return false;
  value = static_cast<int>(number);
  return true;
}

// Durations above a year are refused here already (the library refuses what
// it cannot honour; this keeps the message a usage error).
bool parse_ms(const std::string& text, std::chrono::milliseconds& value) {
  constexpr long long kYearMs = 366LL * 24 * 3600 * 1000;
  long long number = 0;
  if (!parse_int(text, number, 0, kYearMs)) return false;
  value = std::chrono::milliseconds(number);
  return true;
}

bool parse_double(const std::string& text, double& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end && *end == '\0' && std::isfinite(value);
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (;;) {
    std::size_t end = text.find(separator, begin);
    parts.push_back(text.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    if (end == std::string::npos) return parts;
    begin = end + 1;
  }
}

// A plain number of bytes, or one with a K, M or G suffix (KiB, MiB, GiB).
bool parse_bytes(const std::string& text, std::uint64_t& value) {
  if (text.empty()) return false;
  std::string digits = text;
  long long unit = 1;
  switch (digits.back()) {
    case 'K': case 'k': unit = 1LL << 10; break;
    case 'M': case 'm': unit = 1LL << 20; break;
    case 'G': case 'g': unit = 1LL << 30; break;
    default: break;
  }
  if (unit != 1) digits.pop_back();
  long long number = 0;
  if (!parse_int(digits, number, 0, LLONG_MAX / unit)) return false;
  value = static_cast<std::uint64_t>(number * unit);
  return true;
}

// Into an optional limit field, within [minimum, maximum] (the library's
// own bounds, so that a bad value is a usage error here, not a failed start).
template <typename T>
bool parse_limit(const std::string& text, std::optional<T>& field, long long minimum, long long maximum) {
  long long number = 0;
  if (!parse_int(text, number, minimum, maximum)) return false;
  field = static_cast<T>(number);
  return true;
}

bool parse_byte_limit(const std::string& text, std::optional<std::uint64_t>& field, std::uint64_t minimum) {
  std::uint64_t bytes = 0;
  if (!parse_bytes(text, bytes) || bytes < minimum || bytes > (std::uint64_t(1) << 62)) return false;
  field = bytes;
  return true;
}

// A user or group id; (uid_t)-1 means "no change" to the kernel.
bool parse_id(const std::string& text, std::optional<std::uint32_t>& field) {
  return parse_limit(text, field, 0, 0xFFFFFFFELL);
}

bool parse_flag(const std::string& text, bool& value) {
  if (text != "1" && text != "0") return false;
  value = text == "1";
  return true;
}

// Module options that may stand without a value (then they mean =1).
bool is_module_flag(const std::string& word) { return word == "--no-new-privileges" || word == "--die-with-host"; }

bool parse_codes(const std::string& text, std::vector<int>& codes) {
  codes.clear();
  for (const auto& part : split(text, ',')) {
    long long code = 0;
    if (!parse_int(part, code, INT_MIN, INT_MAX)) return false;
    codes.push_back(static_cast<int>(code));
  }
  return true;
}

// A ResourceLimits or Privileges option; false when `key` is none of them.
// `ok` says whether its value was good.
bool apply_limit_option(const std::string& key, const std::string& value, modkit::OopModuleConfig& config, bool& ok) {
  constexpr std::uint64_t kMiB = 1 << 20;
  modkit::ResourceLimits& limits = config.limits;
  modkit::Privileges& privileges = config.privileges;
  if (key == "--memory-max") {
    ok = parse_byte_limit(value, limits.memory_max, kMiB);
  } else if (key == "--memory-high") {
    ok = parse_byte_limit(value, limits.memory_high, kMiB);
  } else if (key == "--cpu-percent") {
    ok = parse_limit(value, limits.cpu_percent, 1, 100000);
  } else if (key == "--max-processes") {
    ok = parse_limit(value, limits.max_processes, 1, 4194304);  // PID_MAX_LIMIT
  } else if (key == "--address-space") {
    ok = parse_byte_limit(value, limits.address_space, 16 * kMiB);  // the library's floors
  } else if (key == "--data-size") {
    ok = parse_byte_limit(value, limits.data_size, 16 * kMiB);
  } else if (key == "--cpu-time") {
    std::optional<long long> seconds;
    ok = parse_limit(value, seconds, 1, 100LL * 365 * 24 * 3600);
    if (ok) limits.cpu_time = std::chrono::seconds(*seconds);
  } else if (key == "--open-files") {
    ok = parse_limit(value, limits.open_files, 8, 1LL << 30);
  } else if (key == "--file-size") {
    ok = parse_byte_limit(value, limits.file_size, 0);
  } else if (key == "--core-size") {
    ok = parse_byte_limit(value, limits.core_size, 0);
  } else if (key == "--user-processes") {
    ok = parse_limit(value, limits.user_processes, 1, 1LL << 62);
  } else if (key == "--limits") {
    if (value == "required") limits.enforcement = modkit::ResourceLimits::Enforcement::Required;
    else if (value == "best-effort") limits.enforcement = modkit::ResourceLimits::Enforcement::BestEffort;
    else ok = false;
  } else if (key == "--user") {
    ok = parse_id(value, privileges.user);
  } else if (key == "--group") {
    ok = parse_id(value, privileges.group);
  } else if (key == "--groups") {
    privileges.supplementary_groups.emplace();
    if (!value.empty()) {
      for (const auto& part : split(value, ',')) {
        std::optional<std::uint32_t> group;
        ok = ok && parse_id(part, group);
        if (ok) privileges.supplementary_groups->push_back(*group);
      }
    }
  } else if (key == "--no-new-privileges") {
    ok = parse_flag(value, privileges.no_new_privileges);
  } else if (key == "--umask") {
    // Octal digits only (strtol would take a sign, spaces, or 8 and 9 as the end).
    ok = !value.empty() && value.size() <= 4 && value.find_first_not_of("01234567") == std::string::npos;
    long mask = ok ? std::strtol(value.c_str(), nullptr, 8) : -1;
    ok = ok && mask <= 0777;
    if (ok) privileges.umask = static_cast<std::uint32_t>(mask);
  } else if (key == "--die-with-host") {
    ok = parse_flag(value, privileges.die_with_host);
  } else {
    return false;
  }
  return true;
}

// One module option; false (with a message) when it is not understood.
bool apply_option(const std::string& key, const std::string& value, modkit::ChildSpec& spec, std::string& error) {
  modkit::Readiness& ready = spec.config.readiness;
  bool ok = true;
  if (key == "--restart") {
    if (value == "never") spec.restart = modkit::RestartPolicy::Never;
    else if (value == "on-failure") spec.restart = modkit::RestartPolicy::OnFailure;
    else if (value == "always") spec.restart = modkit::RestartPolicy::Always;
    else ok = false;
  } else if (key == "--ready") {
    if (value == "notify") {
      ready.mode = modkit::Readiness::Mode::Notify;
    } else if (value.rfind("line:", 0) == 0 && value.size() > 5) {
      ready.mode = modkit::Readiness::Mode::StdoutLine;
      ready.line_prefix = value.substr(5);
    } else {
      ok = false;
    }
  } else if (key == "--ready-timeout") {
    ok = parse_ms(value, ready.timeout);
  } else if (key == "--watchdog") {
    ok = parse_ms(value, ready.watchdog);
  } else if (key == "--backoff") {
    auto parts = split(value, ',');
    ok = parts.size() == 3 && parse_ms(parts[0], spec.backoff.initial) && parse_ms(parts[2], spec.backoff.maximum) &&
         parse_double(parts[1], spec.backoff.multiplier);
  } else if (key == "--jitter") {
    ok = parse_double(value, spec.backoff.jitter);
  } else if (key == "--reset-after") {
    ok = parse_ms(value, spec.reset_after);
  } else if (key == "--give-up-after") {
    ok = parse_count(value, spec.give_up.max_consecutive_failures);
  } else if (key == "--max-restarts") {
    auto parts = split(value, '/');
    ok = parts.size() == 2 && parse_count(parts[0], spec.give_up.max_restarts) && parse_ms(parts[1], spec.give_up.period);
  } else if (key == "--success-codes") {
    ok = parse_codes(value, spec.success_exit_codes);
  } else if (key == "--prevent-codes") {
    ok = parse_codes(value, spec.prevent_restart_exit_codes);
  } else if (!apply_limit_option(key, value, spec.config, ok)) {
    error = "unknown module option '" + key + "'";
    return false;
  }
  if (!ok) error = "bad value '" + value + "' for " + key;
  return ok;
}

// Parses words[index...] up to "---" (or the end) into one module.
bool parse_module(const std::vector<std::string>& words, std::size_t& index, modkit::ChildSpec& spec,
                  std::string& error) {
  spec.config.backend = modkit::BackendKind::LocalProcess;
  for (; index < words.size() && words[index].rfind("--", 0) == 0; ++index) {
    std::size_t equals = words[index].find('=');
    if (equals == std::string::npos && is_module_flag(words[index])) {
      if (!apply_option(words[index], "1", spec, error)) return false;
      continue;
    }
    if (equals == std::string::npos) {
      error = "module option '" + words[index] + "' needs a value (--key=value)";
      return false;
    }
    if (!apply_option(words[index].substr(0, equals), words[index].substr(equals + 1), spec, error)) return false;
  }
  // The library refuses this too, but only when the module starts.
  if (spec.config.privileges.user && !spec.config.privileges.group) {
    error = "--user needs --group too (a module never keeps the host's group by accident)";
    return false;
  }
  if (index >= words.size()) {
    error = "a module needs NAME=PROGRAM";
    return false;
  }
  const std::string& head = words[index++];
  std::size_t equals = head.find('=');
  if (equals == std::string::npos || equals == 0 || equals + 1 == head.size()) {
    error = "expected NAME=PROGRAM, got '" + head + "'";
    return false;
  }
  spec.id = head.substr(0, equals);
  spec.config.name = spec.id;
  spec.config.binary = head.substr(equals + 1);
  while (index < words.size() && words[index] != "---") spec.config.args.push_back(words[index++]);
  if (index < words.size()) ++index;  // the "---"
  return true;
}

// A line of a module file, split into words ("double quotes" keep spaces).
std::vector<std::string> words_of(const std::string& line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false, quoted = false;
  for (char c : line) {
    if (quoted) {
      if (c == '"') {
        quoted = false;
      } else {
        word += c;
      }
    } else if (c == '"') {
      quoted = in_word = true;
    } else if (c == '#' && !in_word) {
      break;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      if (in_word) words.push_back(word);
      word.clear();
      in_word = false;
    } else {
      word += c;
      in_word = true;
    }
  }
  if (in_word) words.push_back(word);
  return words;
}

bool read_module_file(const char* path, std::vector<modkit::ChildSpec>& specs, std::string& error) {
  std::FILE* file = std::fopen(path, "r");
  if (!file) {
    error = std::string("cannot open '") + path + "'";
    return false;
  }
  char buffer[8192];
  int line_number = 0;
  bool ok = true;
  while (ok && std::fgets(buffer, sizeof buffer, file)) {
    ++line_number;
    std::string line(buffer);
    if (!line.empty() && line.back() == '\n') line.pop_back();
    auto words = words_of(line);
    if (words.empty()) continue;
    std::size_t index = 0;
    modkit::ChildSpec spec;
    ok = parse_module(words, index, spec, error) && index == words.size();
    if (!ok) {
      if (error.empty()) error = "'---' is not used in a file (one module per line)";
      error = std::string(path) + ":" + std::to_string(line_number) + ": " + error;
    }
    specs.push_back(std::move(spec));
  }
  std::fclose(file);
  return ok;
}

// The built-in example: a service ready by notification, a worker ready by a
// stdout line, a module that fails at once, backs off and gives up, and one
// that takes memory until its address-space limit ends it.
std::vector<modkit::ChildSpec> example_specs(const std::string& self) {
  std::vector<modkit::ChildSpec> specs;
  for (const char* kind : {"api", "worker", "flaky", "hog"}) {
    modkit::ChildSpec spec;
    spec.id = kind;
    spec.config = modkit::OopModuleConfig(kind, modkit::BackendKind::LocalProcess);
    spec.config.binary = self;
    spec.config.args = {"--sample-module", kind};
    specs.push_back(std::move(spec));
  }
  specs[0].restart = modkit::RestartPolicy::Always;
  specs[0].config.readiness.mode = modkit::Readiness::Mode::Notify;
  specs[0].config.readiness.timeout = std::chrono::milliseconds(3000);
  specs[1].config.readiness.mode = modkit::Readiness::Mode::StdoutLine;
  specs[1].config.readiness.line_prefix = "2026-01-01T00:00:00Z  INFO worker: ready";
  specs[2].backoff.initial = std::chrono::milliseconds(100);
  specs[2].backoff.multiplier = 2.0;
  specs[2].give_up.max_consecutive_failures = 4;
  // Never restarted: "flaky" stays the one that gives up (exit code 3).
  specs[3].restart = modkit::RestartPolicy::Never;
  specs[3].config.limits.address_space = 256u << 20;
  // Its abort would otherwise leave a core of up to 256 MiB where the host allows cores.
  specs[3].config.limits.core_size = 0;
  return specs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--sample-module") == 0) {
    int code = modkit_run::run_sample_module(argv[2]);
    return code < 0 ? usage() : code;
  }
  bool json = false;
  double seconds = 0;
  long long grace_ms = 5000;
  modkit::Strategy strategy = modkit::Strategy::OneForOne;
  std::vector<modkit::ChildSpec> specs;
  std::vector<std::string> words(argv + 1, argv + argc);
  std::size_t i = 0;
  std::string error;
  bool modules_given = false;
  // Global options until the first module's: "--key=value", or a module flag.
  for (; i < words.size() && words[i].rfind("--", 0) == 0 && words[i].find('=') == std::string::npos &&
         !is_module_flag(words[i]);
       ++i) {
    const std::string& word = words[i];
    bool has_value = i + 1 < words.size();
    if (word == "--json") {
      json = true;
    } else if (word == "--seconds" && has_value) {
      if (!parse_double(words[++i], seconds) || seconds < 0) return usage();
      // A year at most: beyond, the conversion to the clock's nanoseconds overflows.
      seconds = std::min(seconds, 366.0 * 24 * 3600);
    } else if (word == "--grace" && has_value) {
      if (!parse_int(words[++i], grace_ms, 0, 24LL * 3600 * 1000)) return usage();
    } else if (word == "--strategy" && has_value) {
      const std::string& name = words[++i];
      if (name == "one-for-one") strategy = modkit::Strategy::OneForOne;
      else if (name == "one-for-all") strategy = modkit::Strategy::OneForAll;
      else if (name == "rest-for-one") strategy = modkit::Strategy::RestForOne;
      else return usage();
    } else if (word == "--example") {
      auto example = example_specs(own_path(argv[0]));
      specs.insert(specs.end(), example.begin(), example.end());
      modules_given = true;
    } else if (word == "--file" && has_value) {
      if (!read_module_file(words[++i].c_str(), specs, error)) {
        std::fprintf(stderr, "modkit-run: %s\n", error.c_str());
        return 2;
      }
      modules_given = true;
    } else {
      return usage();
    }
  }
  while (i < words.size()) {
    modkit::ChildSpec spec;
    if (!parse_module(words, i, spec, error)) {
      std::fprintf(stderr, "modkit-run: %s\n", error.c_str());
      return usage();
    }
    specs.push_back(std::move(spec));
    modules_given = true;
  }
  if (!modules_given || specs.empty()) return usage();

  modkit::CancellationToken token;
  std::shared_ptr<modkit::LogSink> sink;
  if (json) {
    sink = std::make_shared<modkit::JsonLogSink>(stdout);
  } else {
    sink = std::make_shared<modkit::TextLogSink>(stdout);
  }
  modkit::LocalProcessOptions options;
  options.shutdown_grace = std::chrono::milliseconds(grace_ms);
  options.stop_grace = std::chrono::milliseconds(grace_ms);
  auto backend = modkit::LocalProcessBackend::create(token, sink, options);
  if (!backend) {
    std::fprintf(stderr, "modkit-run: %s\n", backend.error().message.c_str());
    return 1;
  }
  modkit::SupervisorOptions supervision;
  supervision.strategy = strategy;
  auto supervisor = modkit::Supervisor::create(std::move(*backend), token, sink, supervision);
  if (!supervisor) {
    std::fprintf(stderr, "modkit-run: %s\n", supervisor.error().message.c_str());
    return 1;
  }
  cancel_on_signals(token);

  // In order, each once the one before is ready (Supervisor::start waits).
  int failures = 0;
  for (auto& spec : specs) {
    if (token.is_cancelled()) break;
    auto started = (*supervisor)->start(std::move(spec));
    if (!started) {
      std::fprintf(stderr, "modkit-run: %s\n", started.error().message.c_str());
      if (token.is_cancelled()) break;  // interrupted by the shutdown, not refused
      ++failures;
    }
  }

  if (failures < static_cast<int>(specs.size())) {
    if (seconds > 0) {
      token.wait_for(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(seconds)));
    } else {
      token.wait();
    }
  }
  token.cancel();
  (*supervisor)->wait_for_shutdown();
  bool gave_up = (*supervisor)->any_gave_up();
  supervisor->reset();
  if (gave_up) return 3;
  return failures == 0 ? 0 : 1;
}
