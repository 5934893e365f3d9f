// The helper child of the benchmarks. Kept tiny (no iostream, no allocation;
// linked statically when the toolchain can) so that process start-up is as
// cheap as /bin/true and the spawn benchmarks measure the spawner.
//
//   exit                 exit 0 at once
//   sleep                sleep until killed (SIGTERM's default action ends it)
//   term                 print "ready", exit 0 on SIGTERM (a cooperative module)
//   stubborn             ignore SIGTERM, print "ready", sleep until SIGKILL
//   spew <bytes> <lines> write <lines> lines of <bytes> bytes (newline
//                        included) to stdout as fast as possible, then exit 0
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace {

void write_all(const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t count = write(1, data, size);
    if (count <= 0) _exit(3);
    data += count;
    size -= static_cast<std::size_t>(count);
  }
}

void on_term(int) { _exit(0); }

[[noreturn]] void sleep_forever() {
  for (;;) pause();
}

// Fills `buffer` with as many whole lines of `line_bytes` as fit. Each line
// looks like a plain-text log line whose second token is a level, so the
// level detector takes its usual path: "0000001 INFO xxxxxx...\n".
std::size_t fill_lines(char* buffer, std::size_t capacity, std::size_t line_bytes) {
  static const char kPrefix[] = " INFO ";
  std::size_t lines = capacity / line_bytes;
  for (std::size_t i = 0; i < lines; ++i) {
    char* line = buffer + i * line_bytes;
    std::memset(line, 'x', line_bytes - 1);
    std::size_t number = i;
    for (int digit = 6; digit >= 0; --digit) {
      if (static_cast<std::size_t>(digit) < line_bytes - 1) line[digit] = static_cast<char>('0' + number % 10);
      number /= 10;
    }
    for (std::size_t k = 0; k + 1 < sizeof kPrefix && 7 + k < line_bytes - 1; ++k) line[7 + k] = kPrefix[k];
    line[line_bytes - 1] = '\n';
  }
  return lines;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "exit") == 0) return 0;
  if (std::strcmp(argv[1], "sleep") == 0) sleep_forever();
  if (std::strcmp(argv[1], "term") == 0) {
    struct sigaction action {};
    action.sa_handler = on_term;
    sigaction(SIGTERM, &action, nullptr);
    write_all("ready\n", 6);
    sleep_forever();
  }
  if (std::strcmp(argv[1], "stubborn") == 0) {
    signal(SIGTERM, SIG_IGN);
    write_all("ready\n", 6);
    sleep_forever();
  }
  if (std::strcmp(argv[1], "spew") == 0 && argc >= 4) {
    std::size_t line_bytes = std::strtoul(argv[2], nullptr, 10);
    unsigned long long total = std::strtoull(argv[3], nullptr, 10);
    if (line_bytes < 2 || line_bytes > 65536) return 2;
    static char buffer[256 * 1024];
    std::size_t per_buffer = fill_lines(buffer, sizeof buffer, line_bytes);
    while (total > 0) {
      std::size_t lines = total < per_buffer ? static_cast<std::size_t>(total) : per_buffer;
      write_all(buffer, lines * line_bytes);
      total -= lines;
    }
    return 0;
  }
  return 2;
}
