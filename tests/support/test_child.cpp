// The program the tests spawn. Its arguments are a script of commands run in
// order, e.g. `test_child lines 3 stderr-lines 2 exit 4`. Output is written
// with unbuffered write() so that nothing is lost when a signal ends it.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <chrono>

#ifdef _WIN32
#include <io.h>
#include <process.h>
#include <windows.h>
#define write _write
#else
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace {

void out(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    auto count = write(fd, text.data() + done, static_cast<unsigned>(text.size() - done));
    if (count <= 0) return;
    done += static_cast<std::size_t>(count);
  }
}

long number(int argc, char** argv, int index) {
  if (index >= argc) {
    out(2, "test_child: missing number\n");
    std::exit(99);
  }
  return std::strtol(argv[index], nullptr, 10);
}

void sleep_seconds(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

std::string hex(const std::string& text) {
  static const char digits[] = "0123456789abcdef";
  std::string result;
  for (unsigned char c : text) {
    result.push_back(digits[c >> 4]);
    result.push_back(digits[c & 15]);
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string command = argv[i];
    if (command == "lines") {  // lines N: "line 1" .. "line N" on stdout
      long count = number(argc, argv, ++i);
      for (long n = 1; n <= count; ++n) out(1, "line " + std::to_string(n) + "\n");
    } else if (command == "stderr-lines") {
      long count = number(argc, argv, ++i);
      for (long n = 1; n <= count; ++n) out(2, "err " + std::to_string(n) + "\n");
    } else if (command == "say") {  // say TEXT: TEXT and a newline on stdout
      out(1, std::string(argv[++i]) + "\n");
    } else if (command == "say-raw") {  // say-raw TEXT: no newline
      out(1, argv[++i]);
    } else if (command == "invalid-utf8") {
      out(1, std::string("bad \xff\xfe bytes \xc3\x28 end\n"));
    } else if (command == "huge") {  // huge N: one line of N 'x' bytes
      long count = number(argc, argv, ++i);
      std::string chunk(65536, 'x');
      for (long left = count; left > 0; left -= 65536) out(1, chunk.substr(0, static_cast<std::size_t>(left < 65536 ? left : 65536)));
      out(1, "\n");
    } else if (command == "flood") {  // flood N LEN: N lines of LEN bytes
      long count = number(argc, argv, ++i);
      long length = number(argc, argv, ++i);
      std::string line(static_cast<std::size_t>(length > 0 ? length - 1 : 0), 'y');
      line.push_back('\n');
      std::string batch;
      for (long n = 0; n < count; ++n) {
        batch += line;
        if (batch.size() >= 65536) {
          out(1, batch);
          batch.clear();
        }
      }
      out(1, batch);
    } else if (command == "sleep") {
      sleep_seconds(std::strtod(argv[++i], nullptr));
    } else if (command == "exit") {
      return static_cast<int>(number(argc, argv, ++i));
    } else if (command == "argv") {  // every argument after it, hex-encoded, one per line
      for (int k = i + 1; k < argc; ++k) out(1, "arg " + hex(argv[k]) + "\n");
      return 0;
    } else if (command == "cwd") {
#ifdef _WIN32
      char buffer[4096];
      GetCurrentDirectoryA(sizeof buffer, buffer);
#else
      char buffer[4096];
      if (getcwd(buffer, sizeof buffer) == nullptr) buffer[0] = 0;
#endif
      out(1, std::string("cwd ") + buffer + "\n");
    } else if (command == "env") {  // env NAME: "env NAME=value" or "env NAME unset"
      const char* name = argv[++i];
      const char* value = std::getenv(name);
      out(1, value ? "env " + std::string(name) + "=" + value + "\n" : "env " + std::string(name) + " unset\n");
#ifndef _WIN32
    } else if (command == "env-count") {
      long count = 0;
      for (char** entry = environ; *entry; ++entry) ++count;
      out(1, "env-count " + std::to_string(count) + "\n");
    } else if (command == "ignore-term") {
      std::signal(SIGTERM, SIG_IGN);
      out(1, "ignoring SIGTERM\n");
    } else if (command == "raise") {  // raise SIGNUM
      std::raise(static_cast<int>(number(argc, argv, ++i)));
    } else if (command == "fds") {  // the open descriptors, from /proc/self/fd
      std::string list = "fds";
      DIR* dir = opendir("/proc/self/fd");
      int own = dir ? dirfd(dir) : -1;
      while (dir) {
        dirent* entry = readdir(dir);
        if (!entry) break;
        if (entry->d_name[0] == '.' || std::atoi(entry->d_name) == own) continue;
        list += " ";
        list += entry->d_name;
      }
      if (dir) closedir(dir);
      out(1, list + "\n");
    } else if (command == "sigstate") {  // SigBlk and SigIgn from /proc/self/status
      FILE* status = std::fopen("/proc/self/status", "r");
      char line[256];
      while (status && std::fgets(line, sizeof line, status)) {
        if (std::strncmp(line, "SigBlk:", 7) == 0 || std::strncmp(line, "SigIgn:", 7) == 0) out(1, line);
      }
      if (status) std::fclose(status);
    } else if (command == "pgid") {
      out(1, "pgid " + std::to_string(getpgrp()) + " pid " + std::to_string(getpid()) + "\n");
    } else if (command == "grandchild") {  // grandchild SECONDS: a child that ignores SIGTERM and sleeps
      double seconds = std::strtod(argv[++i], nullptr);
      pid_t pid = fork();
      if (pid == 0) {
        std::signal(SIGTERM, SIG_IGN);
        sleep_seconds(seconds);
        _exit(0);
      }
      out(1, "grandchild " + std::to_string(pid) + "\n");
    } else if (command == "daemon") {  // daemon SECONDS: a grandchild in its own session, holding the pipes
      double seconds = std::strtod(argv[++i], nullptr);
      pid_t pid = fork();
      if (pid == 0) {
        setsid();
        sleep_seconds(seconds);
        _exit(0);
      }
      out(1, "daemon " + std::to_string(pid) + "\n");
    } else if (command == "close-stdout") {
      close(1);
#endif
    } else if (command == "read-stdin") {  // read stdin to EOF, then go on
      char buffer[256];
      long total = 0;
      for (;;) {
#ifdef _WIN32
        int count = _read(0, buffer, sizeof buffer);
#else
        auto count = read(0, buffer, sizeof buffer);
#endif
        if (count <= 0) break;
        total += static_cast<long>(count);
      }
      out(1, "stdin eof after " + std::to_string(total) + " bytes\n");
    } else {
      out(2, "test_child: unknown command " + command + "\n");
      return 98;
    }
  }
  return 0;
}
